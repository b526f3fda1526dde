"""The answer of `POST /v1/responses`: the response object, its output items (messages and function calls)
and the events it streams as, in OpenAI's shapes (`openai.types.responses`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

from .responses_items import FunctionChoice, FunctionTool

# -- the response ------------------------------------------------------------------------------------------


class OutputText(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[dict[str, Any]] = []
    logprobs: list[dict[str, Any]] = []


ItemStatus = Literal["in_progress", "completed", "incomplete"]


class OutputMessage(BaseModel):
    type: Literal["message"] = "message"
    id: str
    role: Literal["assistant"] = "assistant"
    status: ItemStatus
    content: list[OutputText]


class FunctionToolCall(BaseModel):
    """A call the answer made: run `name` with `arguments` and send the result back as a
    `function_call_output` naming `call_id`."""

    type: Literal["function_call"] = "function_call"
    id: str
    call_id: str
    name: str
    arguments: str  # JSON text, as the model wrote it
    status: ItemStatus


OutputItem = OutputMessage | FunctionToolCall


class InputTokensDetails(BaseModel):
    cached_tokens: int = 0  # prompt tokens served from the prefix cache are not counted apart


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails = InputTokensDetails()
    output_tokens: int
    output_tokens_details: OutputTokensDetails = OutputTokensDetails()
    total_tokens: int


class IncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens"]


class ResponseError(BaseModel):
    code: str
    message: str


class TextSettings(BaseModel):
    format: dict[str, Any] = {"type": "text"}


class ResponsesResponse(BaseModel):
    id: str
    object: Literal["response"] = "response"
    created_at: int
    completed_at: int | None = None
    status: Literal["in_progress", "completed", "incomplete", "failed"]
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    model: str
    output: list[OutputItem]
    instructions: str | None = None
    max_output_tokens: int | None = None
    metadata: dict[str, str] = {}
    parallel_tool_calls: bool = True
    temperature: float | None = None
    top_p: float | None = None
    tool_choice: Literal["auto", "none", "required"] | FunctionChoice = "auto"
    tools: list[FunctionTool] = []
    text: TextSettings = TextSettings()
    truncation: Literal["disabled"] = "disabled"
    store: Literal[False] = False
    background: Literal[False] = False
    previous_response_id: None = None
    user: str | None = None
    usage: ResponseUsage | None = None


# -- streamed events (each an SSE `event:` of its `type`) ---------------------------------------------------


class _Event(BaseModel):
    sequence_number: int = 0  # numbered as it is sent


class _ItemEvent(_Event):
    """An event of one output item, named by its id and its place in `output`."""

    item_id: str
    output_index: int


class _TextEvent(_ItemEvent):
    """An event of a message's text: its one text part."""

    content_index: int = 0


class ResponseEvent(_Event):
    """The response as a whole: at the start, and once it ends."""

    type: Literal[
        "response.created",
        "response.in_progress",
        "response.completed",
        "response.incomplete",
        "response.failed",
    ]
    response: ResponsesResponse


class OutputItemEvent(_Event):
    type: Literal["response.output_item.added", "response.output_item.done"]
    output_index: int
    item: OutputItem


class ContentPartEvent(_TextEvent):
    type: Literal["response.content_part.added", "response.content_part.done"]
    part: OutputText


class TextDeltaEvent(_TextEvent):
    type: Literal["response.output_text.delta"] = "response.output_text.delta"
    delta: str
    logprobs: list[dict[str, Any]] = []


class TextDoneEvent(_TextEvent):
    type: Literal["response.output_text.done"] = "response.output_text.done"
    text: str
    logprobs: list[dict[str, Any]] = []


class ArgumentsDeltaEvent(_ItemEvent):
    type: Literal["response.function_call_arguments.delta"] = "response.function_call_arguments.delta"
    delta: str


class ArgumentsDoneEvent(_ItemEvent):
    type: Literal["response.function_call_arguments.done"] = "response.function_call_arguments.done"
    arguments: str


class ErrorEvent(_Event):
    """A failure after the stream began (then `response.failed`)."""

    type: Literal["error"] = "error"
    code: str | None
    message: str
    param: str | None
