"""`POST /v1/chat/completions` (vLLM's `serving_chat.py`): a chat body to the engine's request, and a choice
as a chat answer and as chat chunks (a role chunk first, then content, then the finish reason)."""

from __future__ import annotations

from pydantic import BaseModel

from .. import protocol as p
from ..types import ChoiceDelta, GenerationRequest, TokenLogprob
from .serving import (
    ChoiceAccumulator,
    DeltaChoices,
    GenerationServing,
    blend_target,
    sampling_params,
    template_messages,
)


class ServingChat(GenerationServing[p.ChatCompletionRequest]):
    id_prefix = "chatcmpl"
    response_type = p.ChatCompletion
    chunk_type = p.ChatCompletionChunk

    def engine_request(self, body: p.ChatCompletionRequest, request_id: str) -> GenerationRequest:
        sampling = sampling_params(body, body.token_limit(), bool(body.logprobs), body.top_logprobs or 0)
        return GenerationRequest(
            request_id=request_id,
            model=body.model,
            sampling=sampling,
            messages=template_messages(body.messages),
            n=body.n or 1,
            blend=blend_target(body, self.engine.served_model_name),
            structured=p.structured_output(body.response_format),
        )

    def choice(self, body: p.ChatCompletionRequest, index: int, acc: ChoiceAccumulator) -> p.ChatChoice:
        return p.ChatChoice(
            index=index,
            message=p.AssistantMessage(content=acc.text),
            logprobs=chat_logprobs(acc.logprobs) if body.logprobs else None,
            finish_reason=acc.finish_reason or "stop",
        )

    def delta_choices(self, body: p.ChatCompletionRequest) -> DeltaChoices:
        started: set[int] = set()

        def choices(event: ChoiceDelta) -> list[BaseModel]:
            out: list[BaseModel] = []
            if event.index not in started:
                started.add(event.index)
                out.append(p.ChunkChoice(index=event.index, delta=p.Delta(role="assistant", content="")))
            if event.text or event.logprobs:
                logprobs = chat_logprobs(event.logprobs) if event.logprobs else None
                out.append(
                    p.ChunkChoice(index=event.index, delta=p.Delta(content=event.text), logprobs=logprobs)
                )
            if event.finish_reason:
                out.append(
                    p.ChunkChoice(index=event.index, delta=p.Delta(), finish_reason=event.finish_reason)
                )
            return out

        return choices


def chat_logprobs(items: list[TokenLogprob]) -> p.ChoiceLogprobs:
    def top(t: TokenLogprob) -> list[p.TopLogprob]:
        return [
            p.TopLogprob(token=a.token, logprob=p.finite(a.logprob), bytes=a.bytes) for a in t.top_logprobs
        ]

    return p.ChoiceLogprobs(
        content=[
            p.TokenLogprob(token=t.token, logprob=p.finite(t.logprob), bytes=t.bytes, top_logprobs=top(t))
            for t in items
        ]
    )
