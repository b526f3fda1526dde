"""`POST /v1/responses` (vLLM's `serving_responses.py`): the body runs as the chat request it maps to
(`ResponsesRequest.chat`, through chat's own `engine_request`), and the one choice comes back as a
Responses object: whole, or as OpenAI's sequence of named, numbered events."""

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
from ..logs import request_id
from ..types import ChoiceDelta, FinishReason, GenerationEvent, Usage
from .serving import ChoiceAccumulator, Frame, collect, sse
from .serving_chat import ServingChat

Status = Literal["completed", "incomplete"]


class ServingResponses:
    """`serve(body)` is the whole of the route; the engine request is chat's, so whatever chat learns to
    run (structured outputs, tools) the mapping in `protocol/responses.py` can hand it."""

    def __init__(self, chat: ServingChat) -> None:
        self.chat = chat

    async def serve(self, body: p.ResponsesRequest) -> JSONResponse | EventSourceResponse:
        answer = Answer(body, request_id.get(), int(time.time()))
        first, events = await self.chat.start(self.chat.engine_request(body.chat, answer.rid))
        if body.stream:
            return sse(first, events, ResponseEvents(answer))
        choices, totals = await collect(first, events)
        choice = choices.get(0, ChoiceAccumulator())
        return JSONResponse(answer.finished(choice.text, choice.finish_reason, totals).model_dump())


@dataclass(frozen=True)
class Answer:
    """One response's fixed parts: its ids, when it was created, and what it echoes of the request."""

    body: p.ResponsesRequest
    rid: str
    created_at: int

    @property
    def id(self) -> str:
        return f"resp_{self.rid}"

    @property
    def item_id(self) -> str:
        return f"msg_{self.rid}"

    def message(
        self, text: str, status: Literal["in_progress", "completed", "incomplete"]
    ) -> p.OutputMessage:
        content = [p.OutputText(text=text)] if status != "in_progress" else []
        return p.OutputMessage(id=self.item_id, status=status, content=content)

    def response(
        self,
        status: Literal["in_progress", "completed", "incomplete", "failed"],
        output: list[p.OutputMessage],
        **fields: Any,  # further fields of ResponsesResponse, checked by pydantic
    ) -> p.ResponsesResponse:
        body = self.body
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
            tool_choice="none" if body.tool_choice == "none" else "auto",
            user=body.user,
            **fields,
        )

    def finished(self, text: str, finish_reason: FinishReason | None, totals: Usage) -> p.ResponsesResponse:
        """The whole answer: `incomplete` when it ran into its token limit, else `completed`."""
        status: Status = "incomplete" if finish_reason == "length" else "completed"
        return self.response(
            status,
            [self.message(text, status)],
            completed_at=int(time.time()) if status == "completed" else None,
            incomplete_details=p.IncompleteDetails(reason="max_output_tokens")
            if status == "incomplete"
            else None,
            usage=p.ResponseUsage(
                input_tokens=totals.prompt_tokens,
                output_tokens=totals.completion_tokens,
                total_tokens=totals.total_tokens,
            ),
        )


class ResponseEvents:
    """A response as OpenAI streams it: created, in progress, its message and text part added, the text in
    deltas, then the text, part and message done and the response completed (or incomplete). Each event is
    an SSE `event:` named by its type and numbered by `sequence_number`; no `[DONE]` follows."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.numbers = itertools.count()
        self.text = ""
        self.finish_reason: FinishReason | None = None
        self.opened = False

    def frames(self, event: GenerationEvent) -> list[Frame]:
        events = [] if self.opened else self._opening()
        if isinstance(event, ChoiceDelta):  # choice 0: a Responses request has no `n`
            self.finish_reason = event.finish_reason or self.finish_reason
            if event.text:
                self.text += event.text
                events.append(p.TextDeltaEvent(item_id=self.answer.item_id, delta=event.text))
        else:  # the usage, which ends every generation
            events.extend(self._closing(event))
        return [self._frame(e) for e in events]

    def failed(self, error: p.ErrorDetail) -> list[Frame]:
        failure = p.ResponseError(code="server_error", message=error.message)
        response = self.answer.response(
            "failed", [self.answer.message(self.text, "incomplete")], error=failure
        )
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
            p.OutputItemEvent(type="response.output_item.added", item=self.answer.message("", "in_progress")),
            p.ContentPartEvent(
                type="response.content_part.added", item_id=self.answer.item_id, part=p.OutputText(text="")
            ),
        ]

    def _closing(self, totals: Usage) -> list[BaseModel]:
        whole = self.answer.finished(self.text, self.finish_reason, totals)
        item = whole.output[0]
        return [
            p.TextDoneEvent(item_id=item.id, text=self.text),
            p.ContentPartEvent(type="response.content_part.done", item_id=item.id, part=item.content[0]),
            p.OutputItemEvent(type="response.output_item.done", item=item),
            p.ResponseEvent(
                type="response.completed" if whole.status == "completed" else "response.incomplete",
                response=whole,
            ),
        ]

    def _frame(self, event: BaseModel) -> Frame:
        data = {**event.model_dump(), "sequence_number": next(self.numbers)}
        return {"event": data["type"], "data": json.dumps(data, ensure_ascii=False)}
