"""`POST /v1/completions` (vLLM's `serving_completion.py`): a prompt body to the engine's request, and a
choice as a text completion, whole or one chunk per delta, with the legacy logprobs shape."""

from __future__ import annotations

from pydantic import BaseModel

from .. import protocol as p
from ..types import ChoiceDelta, GenerationRequest, TokenLogprob
from .serving import ChoiceAccumulator, DeltaChoices, GenerationServing, blend_target, sampling_params


class ServingCompletions(GenerationServing[p.CompletionRequest]):
    id_prefix = "cmpl"
    response_type = p.Completion
    chunk_type = p.Completion

    def engine_request(self, body: p.CompletionRequest, request_id: str) -> GenerationRequest:
        sampling = sampling_params(body, body.max_tokens, body.logprobs is not None, body.logprobs or 0)
        return GenerationRequest(
            request_id=request_id,
            model=body.model,
            sampling=sampling,
            prompt=body.prompt_text(),
            n=body.n or 1,
            blend=blend_target(body, self.engine.served_model_name),
            structured=p.structured_output(body.response_format),
        )

    def choice(self, body: p.CompletionRequest, index: int, acc: ChoiceAccumulator) -> p.CompletionChoice:
        return p.CompletionChoice(
            index=index,
            text=acc.text,
            logprobs=completion_logprobs(acc.logprobs, 0) if body.logprobs is not None else None,
            finish_reason=acc.finish_reason or "stop",
        )

    def delta_choices(self, body: p.CompletionRequest) -> DeltaChoices:
        offsets: dict[int, int] = {}  # where each choice's next text starts, for `text_offset`

        def choices(event: ChoiceDelta) -> list[BaseModel]:
            offset = offsets.get(event.index, 0)
            offsets[event.index] = offset + len(event.text)
            logprobs = completion_logprobs(event.logprobs, offset) if body.logprobs is not None else None
            choice = p.CompletionChoice(
                index=event.index, text=event.text, logprobs=logprobs, finish_reason=event.finish_reason
            )
            return [choice]

        return choices


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
