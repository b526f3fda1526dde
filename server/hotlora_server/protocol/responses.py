"""`POST /v1/responses` (OpenAI's Responses API, stateless): the request, the response object and its
streamed events.

A Responses request is a chat request in another shape, so its validator turns it into one
(`ResponsesRequest.chat`): the serving layer runs that through chat's path to the engine and only writes
the answer as a Responses object. Mapping `text.format` onto `response_format` and `tools` onto chat's
`tools` belongs in `_chat_request`, the one place where the two shapes meet; until then both are refused.
Anything that needs a stored response (`store`, `previous_response_id`, `conversation`, `background`) is
refused: hotlora keeps none.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
    with_config,
)
from typing_extensions import TypedDict

from ..blend_methods import BlendMethod
from .blends import BlendComponents, Density
from .chat import ChatCompletionRequest
from .common import MAX_CONTENT_PARTS, MAX_MESSAGES, ChatMessage, ModelId, PositiveInt, Text, _Lenient, _Open
from .sampling import Temperature, TopP
from .tools import MAX_TOOLS

MAX_METADATA = 16  # OpenAI's limits for `metadata`: pairs, key and value lengths
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512
_STATELESS = "hotlora keeps no responses: send the whole conversation in `input` every time"


@with_config(ConfigDict(strict=True, extra="ignore"))
class InputText(TypedDict):
    """A text part of an input message: `input_text`, or an `output_text` part of an answer sent back (its
    `annotations` and `logprobs` are ignored)."""

    type: Literal["input_text", "output_text"]
    text: Text


InputParts = Annotated[list[InputText], Field(max_length=MAX_CONTENT_PARTS, fail_fast=True)]


class InputMessage(_Open):
    """One item of `input`: a message (OpenAI's `EasyInputMessage`, or an output message sent back, whose
    `id` and `status` mean nothing here). Other items (tool calls and their outputs, references to stored
    items) are refused by their type."""

    type: Literal["message"] | None = None
    role: Literal["system", "developer", "user", "assistant"]
    content: Text | InputParts
    id: str | None = None
    status: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _only_messages(cls, data: Any) -> Any:
        kind = data.get("type") if isinstance(data, dict) else None
        if kind not in (None, "message"):
            raise ValueError(f"input items of type `{str(kind)[:40]}` are not supported yet (only messages)")
        return data

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part["text"] for part in self.content)


InputItems = Annotated[list[InputMessage], Field(min_length=1, max_length=MAX_MESSAGES, fail_fast=True)]
Metadata = Annotated[
    dict[
        Annotated[str, Field(max_length=MAX_METADATA_KEY)],
        Annotated[Text, Field(max_length=MAX_METADATA_VALUE)],
    ],
    Field(max_length=MAX_METADATA),
]


class TextConfig(_Open):
    """`text`: only the plain-text format for now (`json_schema` and `json_object` come with structured
    outputs on chat)."""

    format: dict[str, Any] | None = None


class ResponsesRequest(_Lenient):
    model: ModelId
    input: Text | InputItems
    instructions: Text | None = None
    max_output_tokens: PositiveInt | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    stream: bool | None = None
    metadata: Metadata | None = None
    user: Text | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    tools: Annotated[list[dict[str, Any]], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: Literal["auto", "none", "required"] | dict[str, Any] | None = None
    store: bool | None = None
    background: bool | None = None
    previous_response_id: str | None = None
    conversation: str | dict[str, Any] | None = None
    # hotlora's blend extension, as on chat (`extra_body` in the `openai` SDK)
    adapters: BlendComponents | None = None
    blend_method: BlendMethod | None = None
    density: Density | None = None
    _chat: ChatCompletionRequest = PrivateAttr()

    @field_validator("store", "background")
    @classmethod
    def _no_stored_responses(cls, value: bool | None) -> bool | None:
        if value:
            raise ValueError(f"{_STATELESS} (leave it out or set it to false)")
        return value

    @field_validator("previous_response_id", "conversation")
    @classmethod
    def _no_previous_responses(cls, value: object) -> object:
        if value is not None:
            raise ValueError(_STATELESS)
        return value

    @field_validator("text")
    @classmethod
    def _plain_text_only(cls, value: TextConfig | None) -> TextConfig | None:
        kind = (value.format or {}).get("type") if value is not None else None
        if kind not in (None, "text"):
            raise ValueError(
                f"`text.format` `{str(kind)[:40]}` is not supported yet: only {{'type': 'text'}}"
            )
        return value

    @field_validator("tools")
    @classmethod
    def _no_tools_yet(cls, value: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        if value:
            raise ValueError("tools are not supported yet on /v1/responses")
        return value

    @field_validator("tool_choice")
    @classmethod
    def _no_forced_tools(cls, value: object) -> object:
        if value not in (None, "auto", "none"):
            raise ValueError(
                "forcing a tool call is not supported yet (tools are not): only 'auto' and 'none'"
            )
        return value

    @model_validator(mode="after")
    def _check_responses(self) -> ResponsesRequest:
        if isinstance(self.input, list) and len(self.input) + (self.instructions is not None) > MAX_MESSAGES:
            raise ValueError(f"`instructions` and `input` make more than {MAX_MESSAGES} messages")
        self._chat = _chat_request(self)
        return self

    @property
    def chat(self) -> ChatCompletionRequest:
        """This request as the chat request it runs as (built by the validator)."""
        return self._chat

    def unknown_fields(self) -> Iterator[str]:
        yield from super().unknown_fields()
        if isinstance(self.input, list):
            seen: set[str] = set()
            for item in self.input:
                for name in item.unknown_fields():
                    if name not in seen:
                        seen.add(name)
                        yield f"input[].{name}"


def _chat_request(body: ResponsesRequest) -> ChatCompletionRequest:
    """The one place where a Responses request becomes a chat request: `instructions` a system message
    first, a string `input` one user message, `max_output_tokens` the completion's limit."""
    messages = (
        [ChatMessage(role="system", content=body.instructions)] if body.instructions is not None else []
    )
    if isinstance(body.input, str):
        messages.append(ChatMessage(role="user", content=body.input))
    else:
        messages.extend(ChatMessage(role=item.role, content=item.text()) for item in body.input)
    try:
        return ChatCompletionRequest(
            model=body.model,
            messages=messages,
            max_completion_tokens=body.max_output_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            user=body.user,
            adapters=body.adapters,
            blend_method=body.blend_method,
            density=body.density,
        )
    except ValidationError as exc:  # a blend string that does not parse, say: the problem, not chat's wrapper
        error = exc.errors()[0]
        raise ValueError(str(error["msg"]).removeprefix("Value error, ")) from None


# -- the response ------------------------------------------------------------------------------------------


class OutputText(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[dict[str, Any]] = []
    logprobs: list[dict[str, Any]] = []


class OutputMessage(BaseModel):
    type: Literal["message"] = "message"
    id: str
    role: Literal["assistant"] = "assistant"
    status: Literal["in_progress", "completed", "incomplete"]
    content: list[OutputText]


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


class TextFormat(BaseModel):
    type: Literal["text"] = "text"


class TextSettings(BaseModel):
    format: TextFormat = TextFormat()


class ResponsesResponse(BaseModel):
    id: str
    object: Literal["response"] = "response"
    created_at: int
    completed_at: int | None = None
    status: Literal["in_progress", "completed", "incomplete", "failed"]
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    model: str
    output: list[OutputMessage]
    instructions: str | None = None
    max_output_tokens: int | None = None
    metadata: dict[str, str] = {}
    parallel_tool_calls: bool = True
    temperature: float | None = None
    top_p: float | None = None
    tool_choice: Literal["auto", "none"] = "auto"
    tools: list[dict[str, Any]] = []
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


class _TextEvent(_Event):
    """An event of the answer's text: the one message's one text part."""

    item_id: str
    output_index: int = 0
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
    output_index: int = 0
    item: OutputMessage


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


class ErrorEvent(_Event):
    """A failure after the stream began (then `response.failed`)."""

    type: Literal["error"] = "error"
    code: str | None
    message: str
    param: str | None
