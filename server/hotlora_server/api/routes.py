"""Thin OpenAI routes: validate, hand the request to the engine, return or stream the result."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sse_starlette import EventSourceResponse

from .. import protocol as p
from ..errors import HotloraError, NotFoundError, ServiceUnavailableError
from ..logs import request_id
from ..metrics import Metrics
from ..types import ChoiceDelta, EngineClient, GenerationEvent, GenerationRequest, ModelInfo, Usage
from . import convert as c
from .disconnect import cancelled_on_disconnect
from .errors import error_body
from .openapi import streamed

log = logging.getLogger(__name__)
ChunkBuilder = Callable[[GenerationEvent], list[dict]]


def _card(info: ModelInfo, base: str) -> p.ModelCard:
    return p.ModelCard(
        id=info.id,
        created=info.created,
        root=base,
        parent=info.parent,
        quantization=info.quantization,
        max_model_len=info.context_length,
        kernel=info.kernel,
        batch_invariant=info.batch_invariant,
    )


async def _start(
    engine: EngineClient, metrics: Metrics, request: GenerationRequest
) -> tuple[GenerationEvent, AsyncIterator[GenerationEvent]]:
    """Wait for the first event, so that a bad request fails with its status before any byte is streamed."""
    events = metrics.timed(engine.generate(request))
    try:
        first = await anext(events)
    except BaseException:
        await events.aclose()
        raise
    return first, events


async def _all(first: GenerationEvent, events: AsyncIterator[GenerationEvent]) -> AsyncIterator[GenerationEvent]:
    yield first
    async for event in events:
        yield event


def _sse(first: GenerationEvent, events: AsyncIterator[GenerationEvent], build: ChunkBuilder) -> EventSourceResponse:
    """Stream chunks as Server-Sent Events ending with `[DONE]`; a mid-stream failure becomes an error frame."""

    async def frames() -> AsyncIterator[dict[str, str]]:
        try:
            async for event in _all(first, events):
                for chunk in build(event):
                    yield {"data": json.dumps(chunk, ensure_ascii=False)}
        except HotloraError as exc:
            yield {"data": json.dumps(error_body(exc.message, exc.type, exc.param, exc.code))}
        except Exception:  # headers are sent: report in-band, and still end the stream properly
            log.exception("stream failed")
            yield {"data": json.dumps(error_body("internal server error", "server_error"))}
        finally:
            await events.aclose()  # a vanished client cancels generation at the next step
        yield {"data": "[DONE]"}

    return EventSourceResponse(frames(), ping=15)


def build_router(engine: EngineClient, metrics: Metrics) -> APIRouter:
    router = APIRouter(prefix="/v1")  # in the route paths: metrics label requests by them

    @router.get("/models")
    async def list_models() -> p.ModelList:
        base = engine.served_model_name
        return p.ModelList(data=[_card(m, base) for m in await engine.list_models()])

    @router.get("/models/{model_id:path}")
    async def get_model(model_id: str) -> p.ModelCard:
        models = await engine.list_models()
        for info in models:
            if info.id == model_id:
                return _card(info, engine.served_model_name)
        known = ", ".join(m.id for m in models)
        raise NotFoundError(f"The model '{model_id}' does not exist. Available models: {known}", param="model")

    @router.post("/chat/completions", response_model=None, responses=streamed(p.ChatCompletion))
    @cancelled_on_disconnect
    async def chat_completions(body: p.ChatCompletionRequest, request: Request) -> JSONResponse | EventSourceResponse:
        rid, created = f"chatcmpl-{request_id.get()}", c.now()
        first, events = await _start(engine, metrics, c.chat_request(body, request_id.get(), engine.served_model_name))
        if body.stream:
            return _sse(first, events, _chat_chunks(rid, created, body.model, body.include_usage()))
        choices, usage = await _collect(first, events)
        result = p.ChatCompletion(
            id=rid,
            created=created,
            model=body.model,
            choices=[
                p.ChatChoice(
                    index=i,
                    message=p.AssistantMessage(content=acc.text),
                    logprobs=c.chat_logprobs(acc.logprobs) if body.logprobs else None,
                    finish_reason=acc.finish_reason or "stop",
                )
                for i, acc in sorted(choices.items())
            ],
            usage=c.usage(usage),
        )
        return JSONResponse(result.model_dump())

    @router.post("/completions", response_model=None, responses=streamed(p.Completion))
    @cancelled_on_disconnect
    async def completions(body: p.CompletionRequest, request: Request) -> JSONResponse | EventSourceResponse:
        rid, created = f"cmpl-{request_id.get()}", c.now()
        first, events = await _start(engine, metrics, c.completion_request(body, request_id.get(), engine.served_model_name))
        if body.stream:
            builder = _completion_chunks(rid, created, body.model, body.logprobs is not None, body.include_usage())
            return _sse(first, events, builder)
        choices, usage = await _collect(first, events)
        result = p.Completion(
            id=rid,
            created=created,
            model=body.model,
            choices=[
                p.CompletionChoice(
                    index=i,
                    text=acc.text,
                    logprobs=c.completion_logprobs(acc.logprobs, 0) if body.logprobs is not None else None,
                    finish_reason=acc.finish_reason or "stop",  # type: ignore[arg-type]
                )
                for i, acc in sorted(choices.items())
            ],
            usage=c.usage(usage),
        )
        return JSONResponse(result.model_dump())

    return router


async def _collect(
    first: GenerationEvent, events: AsyncIterator[GenerationEvent]
) -> tuple[dict[int, c.ChoiceAccumulator], Usage]:
    """Gather a whole response: every choice's text and logprobs, then the usage the engine ends with."""
    choices: dict[int, c.ChoiceAccumulator] = {}
    usage: Usage | None = None
    async for event in _all(first, events):
        if isinstance(event, ChoiceDelta):
            choices.setdefault(event.index, c.ChoiceAccumulator()).add(event)
        else:
            usage = event
    if usage is None:  # the engine ends every finished request with its usage
        raise ServiceUnavailableError("generation ended without a result; retry", retry_after=1)
    return choices, usage


def _chat_chunks(rid: str, created: int, model: str, include_usage: bool) -> ChunkBuilder:
    started: set[int] = set()

    def chunk(choices: list[p.ChunkChoice], usage: p.Usage | None = None) -> dict:
        obj = p.ChatCompletionChunk(id=rid, created=created, model=model, choices=choices, usage=usage)
        data = obj.model_dump()
        if not include_usage:
            data.pop("usage")
        return data

    def build(event: GenerationEvent) -> list[dict]:
        if isinstance(event, Usage):
            return [chunk([], c.usage(event))] if include_usage else []
        out = []
        if event.index not in started:
            started.add(event.index)
            out.append(chunk([p.ChunkChoice(index=event.index, delta=p.Delta(role="assistant", content=""))]))
        if event.text or event.logprobs:
            logprobs = c.chat_logprobs(event.logprobs) if event.logprobs else None
            out.append(chunk([p.ChunkChoice(index=event.index, delta=p.Delta(content=event.text), logprobs=logprobs)]))
        if event.finish_reason:
            out.append(chunk([p.ChunkChoice(index=event.index, delta=p.Delta(), finish_reason=event.finish_reason)]))
        return out

    return build


def _completion_chunks(rid: str, created: int, model: str, logprobs: bool, include_usage: bool) -> ChunkBuilder:
    offsets: dict[int, int] = {}

    def build(event: GenerationEvent) -> list[dict]:
        if isinstance(event, Usage):
            if not include_usage:
                return []
            return [p.Completion(id=rid, created=created, model=model, choices=[], usage=c.usage(event)).model_dump()]
        offset = offsets.get(event.index, 0)
        offsets[event.index] = offset + len(event.text)
        choice = p.CompletionChoice(
            index=event.index,
            text=event.text,
            logprobs=c.completion_logprobs(event.logprobs, offset) if logprobs else None,
            finish_reason=event.finish_reason,
        )
        data = p.Completion(id=rid, created=created, model=model, choices=[choice]).model_dump()
        if not include_usage:
            data.pop("usage")
        return [data]

    return build
