"""`POST /v1/chat/completions` (vLLM's `serving_chat.py`): a chat body to the engine's request, and a choice
as a chat answer and as chat chunks (a role chunk first, then content and tool calls, then the finish
reason). What tools change is in `chat_tools.py`."""

from __future__ import annotations

from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sse_starlette import EventSourceResponse

from .. import protocol as p
from ..errors import UnsupportedSchemaError
from ..metrics import Metrics
from ..tools import DEFAULT_TOOL_PARSER, CallStream, ContentText, Item, get_tool_parser, read_all
from ..types import ChoiceDelta, EngineClient, GenerationRequest, TokenLogprob
from . import chat_tools
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

    def __init__(
        self, engine: EngineClient, metrics: Metrics, tool_call_parser: str = DEFAULT_TOOL_PARSER
    ) -> None:
        super().__init__(engine, metrics)
        self._parser = get_tool_parser(tool_call_parser)

    async def serve(self, body: p.ChatCompletionRequest) -> JSONResponse | EventSourceResponse:
        """A forced call's schema comes from `tools`: the engine's refusal of it names them, not
        `response_format`."""
        try:
            return await super().serve(body)
        except UnsupportedSchemaError as exc:
            if chat_tools.forced_output(body) is None:
                raise
            raise UnsupportedSchemaError(exc.message, param="tools") from None

    def engine_request(self, body: p.ChatCompletionRequest, request_id: str) -> GenerationRequest:
        sampling = sampling_params(body, body.token_limit(), bool(body.logprobs), body.top_logprobs or 0)
        return GenerationRequest(
            request_id=request_id,
            model=body.model,
            sampling=sampling,
            messages=template_messages(body.messages),
            tools=chat_tools.template_tools(body.offered_tools()),
            n=body.n or 1,
            blend=blend_target(body, self.engine.served_model_name),
            # a forced tool call's schema, else `response_format`'s
            structured=chat_tools.forced_output(body) or p.structured_output(body.response_format),
        )

    def call_reader(self, body: p.ChatCompletionRequest) -> chat_tools.CallReader | None:
        """How a choice's text is read for tool calls, with this server's `--tool-call-parser`."""
        return chat_tools.call_reader(body, self._parser)

    def choice(self, body: p.ChatCompletionRequest, index: int, acc: ChoiceAccumulator) -> p.ChatChoice:
        reader = self.call_reader(body)
        content, calls = read_all(reader(), acc.text) if reader is not None else (acc.text, [])
        return p.ChatChoice(
            index=index,
            message=chat_tools.message(content, calls),
            logprobs=chat_logprobs(acc.logprobs) if body.logprobs else None,
            finish_reason=chat_tools.finish_reason(acc.finish_reason, bool(calls)),
        )

    def delta_choices(self, body: p.ChatCompletionRequest) -> DeltaChoices:
        reader = self.call_reader(body)
        started: set[int] = set()
        readers: dict[int, CallStream] = {}  # each choice's, from its first delta
        called: set[int] = set()  # choices that made a call

        def items(event: ChoiceDelta) -> list[Item]:
            if reader is None:
                return [ContentText(event.text)] if event.text else []
            if event.index not in readers:
                readers[event.index] = reader()
            stream = readers[event.index]
            return stream.feed(event.text) + (stream.finish() if event.finish_reason else [])

        def choices(event: ChoiceDelta) -> list[BaseModel]:
            out: list[BaseModel] = []
            if event.index not in started:
                started.add(event.index)
                out.append(p.ChunkChoice(index=event.index, delta=p.Delta(role="assistant", content="")))
            deltas = [chat_tools.delta(item) for item in items(event)]
            logprobs = chat_logprobs(event.logprobs) if event.logprobs else None
            if logprobs is not None and not deltas:  # their text is held back (a split character, a call)
                deltas = [p.Delta(content="")]
            for delta in deltas:
                if delta.tool_calls:
                    called.add(event.index)
                out.append(p.ChunkChoice(index=event.index, delta=delta, logprobs=logprobs))
                logprobs = None  # on the first chunk of the event only
            if event.finish_reason:
                reason = chat_tools.finish_reason(event.finish_reason, event.index in called)
                out.append(p.ChunkChoice(index=event.index, delta=p.Delta(), finish_reason=reason))
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
