"""Protocol requests to engine requests, and engine events to OpenAI response objects."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from .. import protocol as p
from ..errors import InvalidRequestError
from ..types import BlendSpec, ChoiceDelta, GenerationRequest, SamplingParams, TokenizeRequest, TokenLogprob
from ..types import Usage as EngineUsage


def _sampling(req: p.ChatCompletionRequest | p.CompletionRequest, max_tokens: int | None, logprobs: bool, top_logprobs: int) -> SamplingParams:
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=req.temperature,  # None: the model's default (the engine applies it)
        top_p=req.top_p,
        top_k=req.top_k,
        min_p=req.min_p,
        repetition_penalty=req.repetition_penalty,
        seed=req.seed,
        stop=req.stop_sequences(),
        presence_penalty=req.presence_penalty or 0.0,
        frequency_penalty=req.frequency_penalty or 0.0,
        logprobs=logprobs,
        top_logprobs=top_logprobs,
        logit_bias=req.token_bias(),
        min_tokens=req.min_tokens or 0,
        ignore_eos=bool(req.ignore_eos),
    )


def _blend(req: p.ChatCompletionRequest | p.CompletionRequest | p.TokenizeRequest | p.DetokenizeRequest, base_id: str) -> BlendSpec | None:
    if req.model is None:
        return None
    if req.adapters and req.model != base_id:
        raise InvalidRequestError(
            f"`adapters` blends adapters on the base model: set `model` to '{base_id}' (or use a model "
            "string such as 'a*0.7+b*0.3' instead)",
            param="model",
        )
    return req.blend


def chat_request(req: p.ChatCompletionRequest, request_id: str, base_id: str) -> GenerationRequest:
    messages = tuple({"role": m.template_role(), "content": m.text()} for m in req.messages)
    sampling = _sampling(req, req.token_limit(), bool(req.logprobs), req.top_logprobs or 0)
    return GenerationRequest(
        request_id=request_id, model=req.model, sampling=sampling, messages=messages, n=req.n or 1,
        blend=_blend(req, base_id),
    )  # fmt: skip


def completion_request(req: p.CompletionRequest, request_id: str, base_id: str) -> GenerationRequest:
    wants_logprobs = req.logprobs is not None
    sampling = _sampling(req, req.max_tokens, wants_logprobs, req.logprobs or 0)
    return GenerationRequest(
        request_id=request_id, model=req.model, sampling=sampling, prompt=req.prompt_text(), n=req.n or 1,
        blend=_blend(req, base_id),
    )  # fmt: skip


def tokenize_request(req: p.TokenizeRequest, base_id: str) -> TokenizeRequest:
    messages = tuple({"role": m.template_role(), "content": m.text()} for m in req.messages) if req.messages else None
    return TokenizeRequest(
        model=req.model or base_id, messages=messages, prompt=req.prompt, add_generation_prompt=req.add_generation_prompt,
        add_special_tokens=req.special_tokens(), blend=_blend(req, base_id),
    )  # fmt: skip


def detokenize_target(req: p.DetokenizeRequest, base_id: str) -> tuple[str, BlendSpec | None]:
    return req.model or base_id, _blend(req, base_id)


def usage(u: EngineUsage) -> p.Usage:
    return p.Usage(prompt_tokens=u.prompt_tokens, completion_tokens=u.completion_tokens, total_tokens=u.total_tokens)


def chat_logprobs(items: list[TokenLogprob]) -> p.ChoiceLogprobs:
    return p.ChoiceLogprobs(
        content=[
            p.TokenLogprob(
                token=t.token,
                logprob=p.finite(t.logprob),
                bytes=t.bytes,
                top_logprobs=[p.TopLogprob(token=a.token, logprob=p.finite(a.logprob), bytes=a.bytes) for a in t.top_logprobs],
            )
            for t in items
        ]
    )


def completion_logprobs(items: list[TokenLogprob], offset: int) -> p.CompletionLogprobs:
    """The legacy completions shape; `offset` is where these tokens' text starts in the choice."""
    offsets: list[int] = []
    for t in items:
        offsets.append(offset)
        offset += len(t.token)
    return p.CompletionLogprobs(
        tokens=[t.token for t in items],
        token_logprobs=[p.finite(t.logprob) for t in items],
        top_logprobs=[{a.token: p.finite(a.logprob) for a in t.top_logprobs} for t in items],
        text_offset=offsets,
    )


@dataclass
class ChoiceAccumulator:
    """Collects one choice's deltas for a non-streaming response."""

    text: str = ""
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None

    def add(self, delta: ChoiceDelta) -> None:
        self.text += delta.text
        self.logprobs.extend(delta.logprobs)
        self.finish_reason = delta.finish_reason or self.finish_reason


def now() -> int:
    return int(time.time())
