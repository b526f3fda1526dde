"""`POST /v1/responses` (vLLM's `serving_responses.py`): the body runs as the chat request it maps to
(`ResponsesRequest.chat`, through chat's own `engine_request`), and the one choice comes back as a
Responses object, its text read into messages and function calls (`response_items`): whole, or as
OpenAI's sequence of named, numbered events."""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass
from typing import Any, Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sse_starlette import EventSourceResponse

from .. import protocol as p
from ..errors import UnsupportedSchemaError
from ..logs import request_id
from ..types import ChoiceDelta, FinishReason, GenerationEvent, Usage
from . import chat_tools
from .chat_tools import CallReader
from .response_items import OutputItems
from .serving import ChoiceAccumulator, Frame, collect, sse
from .serving_chat import ServingChat

Status = Literal["completed", "incomplete"]


class ServingResponses:
    """`serve(body)` is the whole of the route; the engine request is chat's, so whatever chat learns to
    run the mapping in `protocol/responses.py` can hand it."""

    def __init__(self, chat: ServingChat) -> None:
        self.chat = chat

    async def serve(self, body: p.ResponsesRequest) -> JSONResponse | EventSourceResponse:
        answer = Answer(body, request_id.get(), int(time.time()))
        reader = self.chat.call_reader(body.chat)
        try:
            first, events = await self.chat.start(self.chat.engine_request(body.chat, answer.rid))
        except UnsupportedSchemaError as exc:  # the schema is a forced call's (from `tools`) or `text.format`
            forced = chat_tools.forced_output(body.chat) is not None
            raise UnsupportedSchemaError(exc.message, param="tools" if forced else "text.format") from None
        if body.stream:
            return sse(first, events, ResponseEvents(answer, reader))
        choices, totals = await collect(first, events)
        choice = choices.get(0, ChoiceAccumulator())
        done = status(choice.finish_reason)
        output = OutputItems(answer.rid, reader)
        output.feed(choice.text)
        output.close(done)
        return JSONResponse(answer.finished(output.output(), done, totals).model_dump())


def status(finish_reason: FinishReason | None) -> Status:
    """`incomplete` when the answer ran into its token limit, else `completed`."""
    return "incomplete" if finish_reason == "length" else "completed"


@dataclass(frozen=True)
class Answer:
    """One response's fixed parts: its ids, when it was created, and what it echoes of the request."""

    body: p.ResponsesRequest
    rid: str
    created_at: int

    @property
    def id(self) -> str:
        return f"resp_{self.rid}"

    def response(
        self,
        status: Literal["in_progress", "completed", "incomplete", "failed"],
        output: list[p.OutputItem],
        **fields: Any,  # further fields of ResponsesResponse, checked by pydantic
    ) -> p.ResponsesResponse:
        body = self.body
        text = body.text.format if body.text is not None else None
        return p.ResponsesResponse(
            id=self.id,
            created_at=self.created_at,
            status=status,
            model=body.model,
            output=output,
            instructions=body.instructions,
            max_output_tokens=body.max_output_tokens,
            metadata=body.metadata or {},
            parallel_tool_calls=body.parallel_tool_calls is not False,
            temperature=body.temperature,
            top_p=body.top_p,
            tool_choice=body.tool_choice or "auto",
            tools=body.tools or [],
            text=p.TextSettings(format=text.model_dump(by_alias=True, exclude_none=True))
            if text is not None
            else p.TextSettings(),
            user=body.user,
            **fields,
        )

    def finished(self, output: list[p.OutputItem], done: Status, totals: Usage) -> p.ResponsesResponse:
        """The whole answer, `incomplete` when it ran into its token limit."""
        return self.response(
            done,
            output,
            completed_at=int(time.time()) if done == "completed" else None,
            incomplete_details=p.IncompleteDetails(reason="max_output_tokens")
            if done == "incomplete"
            else None,
            usage=p.ResponseUsage(
                input_tokens=totals.prompt_tokens,
                output_tokens=totals.completion_tokens,
                total_tokens=totals.total_tokens,
            ),
        )


class ResponseEvents:
    """A response as OpenAI streams it: created and in progress, then each output item added, written
    (text or arguments in deltas) and done, then the response completed (or incomplete). Each event is an
    SSE `event:` named by its type and numbered by `sequence_number`; no `[DONE]` follows."""

    def __init__(self, answer: Answer, reader: CallReader | None) -> None:
        self.answer = answer
        self.numbers = itertools.count()
        self.output = OutputItems(answer.rid, reader)
        self.finish_reason: FinishReason | None = None
        self.opened = False

    def frames(self, event: GenerationEvent) -> list[Frame]:
        events = [] if self.opened else self._opening()
        if isinstance(event, ChoiceDelta):  # choice 0: a Responses request has no `n`
            self.finish_reason = event.finish_reason or self.finish_reason
            events += self.output.feed(event.text)
        else:  # the usage, which ends every generation
            done = status(self.finish_reason)
            events += self.output.close(done)
            whole = self.answer.finished(self.output.output(), done, event)
            events.append(
                p.ResponseEvent(
                    type="response.completed" if done == "completed" else "response.incomplete",
                    response=whole,
                )
            )
        return [self._frame(e) for e in events]

    def failed(self, error: p.ErrorDetail) -> list[Frame]:
        """An `error` event and the response failed, with its output so far (the last item incomplete)."""
        self.output.close("incomplete")
        failure = p.ResponseError(code="server_error", message=error.message)
        response = self.answer.response("failed", self.output.output(), error=failure)
        events = [
            p.ErrorEvent(code=error.code or error.type, message=error.message, param=error.param),
            p.ResponseEvent(type="response.failed", response=response),
        ]
        return [self._frame(e) for e in events]

    def closing(self) -> list[Frame]:
        return []

    def _opening(self) -> list[BaseModel]:
        self.opened = True
        started = self.answer.response("in_progress", [])
        return [
            p.ResponseEvent(type="response.created", response=started),
            p.ResponseEvent(type="response.in_progress", response=started),
        ]

    def _frame(self, event: BaseModel) -> Frame:
        data = {**event.model_dump(), "sequence_number": next(self.numbers)}
        return {"event": data["type"], "data": json.dumps(data, ensure_ascii=False)}
