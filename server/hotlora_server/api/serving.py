"""What the generation endpoints share (vLLM's `serving_engine.py`): a body to the engine's request, and the
engine's events to one JSON answer or a stream of chunks, for every endpoint in one place.

An endpoint (`serving_chat.py`, `serving_completions.py`) is a `GenerationServing` that says only what is
its own: how its body becomes a `GenerationRequest`, how a finished choice looks, and which choices a delta
streams as. Ids, timestamps, the first-event wait, usage, `stream_options`, the SSE framing and mid-stream
errors are written once, here. `serving_responses.py` answers in another shape, so it reuses the parts
(`start`, `collect`, `sse` with its own `EventWriter`) rather than the whole.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sse_starlette import EventSourceResponse

from .. import protocol as p
from ..errors import HotloraError, InvalidRequestError, ServiceUnavailableError
from ..logs import request_id
from ..metrics import Metrics
from ..types import (
    BlendSpec,
    ChoiceDelta,
    EngineClient,
    FinishReason,
    GenerationEvent,
    GenerationRequest,
    SamplingParams,
    TemplateMessage,
    TokenLogprob,
    Usage,
)

log = logging.getLogger(__name__)

GenerationBody = p.ChatCompletionRequest | p.CompletionRequest
Body = TypeVar("Body", p.ChatCompletionRequest, p.CompletionRequest)
DeltaChoices = Callable[[ChoiceDelta], list[BaseModel]]
"""A stream's choices for one delta, each sent as its own chunk; keeps what it needs between deltas."""
Frame = dict[str, str]
"""One Server-Sent Event: its `data`, and its `event` name where the stream names its events."""


class EventWriter(Protocol):
    """How an endpoint writes its stream: the frames of each engine event, of a failure once the stream has
    begun, and the frames that close it (after a failure too)."""

    def frames(self, event: GenerationEvent) -> list[Frame]: ...

    def failed(self, error: p.ErrorDetail) -> list[Frame]: ...

    def closing(self) -> list[Frame]: ...


# -- request -> engine request ----------------------------------------------------------------------------


def sampling_params(
    body: GenerationBody, max_tokens: int | None, logprobs: bool, top_logprobs: int
) -> SamplingParams:
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=body.temperature,  # None: the model's default (the engine applies it)
        top_p=body.top_p,
        top_k=body.top_k,
        min_p=body.min_p,
        repetition_penalty=body.repetition_penalty,
        seed=body.seed,
        stop=body.stop_sequences(),
        presence_penalty=body.presence_penalty or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0,
        logprobs=logprobs,
        top_logprobs=top_logprobs,
        logit_bias=body.token_bias(),
        min_tokens=body.min_tokens or 0,
        ignore_eos=bool(body.ignore_eos),
    )


def blend_target(
    body: GenerationBody | p.TokenizeRequest | p.DetokenizeRequest, base_id: str
) -> BlendSpec | None:
    """The blend the body asks for (its validator parsed it); `adapters` blend on the base model only."""
    if body.model is None:
        return None
    if body.adapters and body.model != base_id:
        raise InvalidRequestError(
            f"`adapters` blends adapters on the base model: set `model` to '{base_id}' (or use a model "
            "string such as 'a*0.7+b*0.3' instead)",
            param="model",
        )
    return body.blend


def template_messages(messages: Iterable[p.ChatMessage]) -> tuple[TemplateMessage, ...]:
    """Messages as the chat template takes them: a role it knows, the text of the content, and the tool
    calls they made or answer."""
    return tuple(_template_message(m) for m in messages)


def _template_message(message: p.ChatMessage) -> TemplateMessage:
    out: TemplateMessage = {"role": message.template_role(), "content": message.text()}
    if message.tool_calls:
        out["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.function.name, "arguments": _arguments(call.function.arguments)},
            }
            for call in message.tool_calls
        ]
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    return out


def _arguments(text: str) -> object:
    """A call's arguments as templates read them, an object (as vLLM hands them); text that is not a JSON
    object stays text."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return text
    return value if isinstance(value, dict) else text


# -- engine events -> answer ------------------------------------------------------------------------------


def usage(u: Usage) -> p.Usage:
    return p.Usage(
        prompt_tokens=u.prompt_tokens, completion_tokens=u.completion_tokens, total_tokens=u.total_tokens
    )


@dataclass
class ChoiceAccumulator:
    """Collects one choice's deltas for a non-streaming response."""

    text: str = ""
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: FinishReason | None = None

    def add(self, delta: ChoiceDelta) -> None:
        self.text += delta.text
        self.logprobs.extend(delta.logprobs)
        self.finish_reason = delta.finish_reason or self.finish_reason


@dataclass(frozen=True)
class Reply:
    """What every object of one answer repeats: its id, when it was created and the model the client named."""

    id: str
    created: int
    model: str


class GenerationServing(Generic[Body]):
    """One generation endpoint over the engine: `serve(body)` is the whole of its route."""

    id_prefix: ClassVar[str]  # OpenAI's: `chatcmpl`, `cmpl`
    response_type: ClassVar[type[BaseModel]]  # the whole answer
    chunk_type: ClassVar[type[BaseModel]]  # one streamed chunk (and the usage chunk)

    def __init__(self, engine: EngineClient, metrics: Metrics) -> None:
        self.engine = engine
        self.metrics = metrics

    # what each endpoint says

    def engine_request(self, body: Body, request_id: str) -> GenerationRequest:
        raise NotImplementedError

    def choice(self, body: Body, index: int, acc: ChoiceAccumulator) -> BaseModel:
        """A finished choice of the whole answer."""
        raise NotImplementedError

    def delta_choices(self, body: Body) -> DeltaChoices:
        """A new stream's builder of chunk choices from deltas."""
        raise NotImplementedError

    # the rest is the same for every endpoint

    async def serve(self, body: Body) -> JSONResponse | EventSourceResponse:
        rid = request_id.get()
        reply = Reply(id=f"{self.id_prefix}-{rid}", created=int(time.time()), model=body.model)
        first, events = await self.start(self.engine_request(body, rid))
        if body.stream:
            return sse(first, events, ChunkWriter(self._chunks(body, reply)))
        choices, totals = await collect(first, events)
        answer = self.response_type(
            id=reply.id,
            created=reply.created,
            model=reply.model,
            choices=[self.choice(body, i, acc) for i, acc in sorted(choices.items())],
            usage=usage(totals),
        )
        return JSONResponse(answer.model_dump())

    async def start(
        self, request: GenerationRequest
    ) -> tuple[GenerationEvent, AsyncGenerator[GenerationEvent, None]]:
        """Wait for the first event, so that a bad request fails with its status before any byte is streamed."""
        events = self.metrics.timed(self.engine.generate(request))
        try:
            first = await anext(events)
        except BaseException:
            await events.aclose()
            raise
        return first, events

    def _chunks(self, body: Body, reply: Reply) -> Callable[[GenerationEvent], list[dict[str, Any]]]:
        """The stream's chunks for each event: a delta's choices one chunk each, then the usage chunk when
        `stream_options.include_usage` asks for it (and only then a `usage` key in every chunk)."""
        include_usage = body.include_usage()
        choices_of = self.delta_choices(body)

        def chunk(choices: list[BaseModel], totals: p.Usage | None = None) -> dict[str, Any]:
            obj = self.chunk_type(
                id=reply.id, created=reply.created, model=reply.model, choices=choices, usage=totals
            )
            data = obj.model_dump()
            if not include_usage:
                data.pop("usage")
            return data

        def build(event: GenerationEvent) -> list[dict[str, Any]]:
            if isinstance(event, Usage):
                return [chunk([], usage(event))] if include_usage else []
            return [chunk([choice]) for choice in choices_of(event)]

        return build


async def _all(
    first: GenerationEvent, events: AsyncIterator[GenerationEvent]
) -> AsyncIterator[GenerationEvent]:
    yield first
    async for event in events:
        yield event


async def collect(
    first: GenerationEvent, events: AsyncIterator[GenerationEvent]
) -> tuple[dict[int, ChoiceAccumulator], Usage]:
    """Gather a whole response: every choice's text and logprobs, then the usage the engine ends with."""
    choices: dict[int, ChoiceAccumulator] = {}
    totals: Usage | None = None
    async for event in _all(first, events):
        if isinstance(event, ChoiceDelta):
            choices.setdefault(event.index, ChoiceAccumulator()).add(event)
        else:
            totals = event
    if totals is None:  # the engine ends every finished request with its usage
        raise ServiceUnavailableError("generation ended without a result; retry", retry_after=1)
    return choices, totals


@dataclass(frozen=True)
class ChunkWriter:
    """OpenAI's chunk streams (chat, completions): one `data:` chunk each, an error body if generation fails
    midway, and `[DONE]` last."""

    chunks: Callable[[GenerationEvent], list[dict[str, Any]]]

    def frames(self, event: GenerationEvent) -> list[Frame]:
        return [{"data": json.dumps(chunk, ensure_ascii=False)} for chunk in self.chunks(event)]

    def failed(self, error: p.ErrorDetail) -> list[Frame]:
        return [{"data": json.dumps(p.ErrorResponse(error=error).model_dump())}]

    def closing(self) -> list[Frame]:
        return [{"data": "[DONE]"}]


def sse(
    first: GenerationEvent, events: AsyncGenerator[GenerationEvent, None], writer: EventWriter
) -> EventSourceResponse:
    """Stream the writer's frames as Server-Sent Events; a mid-stream failure is reported in-band."""

    async def frames() -> AsyncIterator[Frame]:
        try:
            async for event in _all(first, events):
                for frame in writer.frames(event):
                    yield frame
        except HotloraError as exc:
            for frame in writer.failed(
                p.ErrorDetail(message=exc.message, type=exc.type, param=exc.param, code=exc.code)
            ):
                yield frame
        except Exception:  # headers are sent: report in-band, and still end the stream properly
            log.exception("stream failed")
            for frame in writer.failed(p.ErrorDetail(message="internal server error", type="server_error")):
                yield frame
        finally:
            await events.aclose()  # a vanished client cancels generation at the next step
        for frame in writer.closing():
            yield frame

    return EventSourceResponse(frames(), ping=15)
