"""`POST /v1/responses` (OpenAI's Responses API, stateless): the request, and the chat request it runs as.

A Responses request is a chat request in another shape, so its validator turns it into one
(`ResponsesRequest.chat`): the serving layer runs that through chat's path to the engine and only writes
the answer as a Responses object (`responses_output`). `_chat_request` is the one place where the two
shapes meet: function tools, `tool_choice` and the function calls and outputs of `input` become chat's
tools, assistant `tool_calls` and tool messages, and `text.format` chat's `response_format`. Anything that needs a stored response (`store`,
`previous_response_id`, `conversation`, `background`) is refused: hotlora keeps none.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Annotated, Any, Literal

from pydantic import Field, PrivateAttr, ValidationError, ValidationInfo, field_validator, model_validator

from ..blend_methods import BlendMethod
from .blends import BlendComponents, Density
from .chat import ChatCompletionRequest
from .common import (
    MAX_MESSAGES,
    ChatMessage,
    FunctionCall,
    ModelId,
    PositiveInt,
    Text,
    ToolCall,
    _Lenient,
    _Open,
)
from .responses_items import (
    FunctionCallItem,
    FunctionCallOutputItem,
    FunctionChoice,
    FunctionTool,
    FunctionTools,
    InputItem,
    InputItems,
    ToolChoice,
)
from .sampling import Temperature, TopP
from .structured import (
    JsonSchema,
    ResponseFormat,
    ResponseFormatJsonObject,
    ResponseFormatJsonSchema,
    ResponseFormatText,
)
from .tools import check_choice, check_unique_names

MAX_METADATA = 16  # OpenAI's limits for `metadata`: pairs, key and value lengths
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512
_STATELESS = "hotlora keeps no responses: send the whole conversation in `input` every time"

Metadata = Annotated[
    dict[
        Annotated[str, Field(max_length=MAX_METADATA_KEY)],
        Annotated[Text, Field(max_length=MAX_METADATA_VALUE)],
    ],
    Field(max_length=MAX_METADATA),
]


class TextJsonSchema(JsonSchema):
    """`text.format` for a JSON schema: chat's `json_schema`, flattened beside `type`."""

    type: Literal["json_schema"]

    @model_validator(mode="before")
    @classmethod
    def _flattened(cls, data: Any) -> Any:
        if isinstance(data, dict) and "json_schema" in data:
            raise ValueError(
                "`text.format` carries `name` and `schema` beside `type` (the Responses shape), not in a "
                "`json_schema` object as chat's `response_format` does"
            )
        return data

    def chat_format(self) -> ResponseFormatJsonSchema:
        schema = JsonSchema.model_validate(self.model_dump(by_alias=True, exclude={"type"}))
        return ResponseFormatJsonSchema(type="json_schema", json_schema=schema)


TextFormat = Annotated[
    ResponseFormatText | ResponseFormatJsonObject | TextJsonSchema, Field(discriminator="type")
]


class TextConfig(_Open):
    """`text`: its `format` is chat's `response_format` (structured outputs) in the Responses shape."""

    format: TextFormat | None = None

    def chat_format(self) -> ResponseFormat | None:
        return self.format.chat_format() if isinstance(self.format, TextJsonSchema) else self.format


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
    text: TextConfig | None = None
    tools: FunctionTools | None = None
    tool_choice: ToolChoice | None = None  # default: "auto" (with tools)
    parallel_tool_calls: bool | None = None  # default true; false: at most one call
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

    @field_validator("tools")
    @classmethod
    def _unique_names(cls, tools: list[FunctionTool] | None) -> list[FunctionTool] | None:
        check_unique_names(tool.name for tool in tools or ())
        return tools

    @field_validator("tool_choice")
    @classmethod
    def _choice_fits_tools(cls, choice: object, info: ValidationInfo) -> object:
        if "tools" in info.data:  # else `tools` itself is invalid: that is the error to report
            named = choice.name if isinstance(choice, FunctionChoice) else None
            tools = info.data["tools"] or ()
            check_choice(choice == "required" or named is not None, named, (tool.name for tool in tools))
        return choice

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
        if self.text is not None:
            yield from (f"text.{name}" for name in self.text.unknown_fields())
        if isinstance(self.input, list):
            seen: set[str] = set()
            for item in self.input:
                for name in item.unknown_fields():
                    if name not in seen:
                        seen.add(name)
                        yield f"input[].{name}"


def _chat_request(body: ResponsesRequest) -> ChatCompletionRequest:
    """The one place where a Responses request becomes a chat request: `instructions` a system message
    first, a string `input` one user message, `max_output_tokens` the completion's limit, the function
    tools chat's tools, `text.format` its `response_format`."""
    turns: list[dict[str, Any]] = []
    if body.instructions is not None:
        turns.append({"role": "system", "content": body.instructions})
    if isinstance(body.input, str):
        turns.append({"role": "user", "content": body.input})
    else:
        turns.extend(_chat_turns(body.input))
    choice = body.tool_choice
    try:
        return ChatCompletionRequest(
            model=body.model,
            messages=[ChatMessage(**turn) for turn in turns],
            max_completion_tokens=body.max_output_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            user=body.user,
            tools=[tool.chat_tool() for tool in body.tools] if body.tools is not None else None,
            tool_choice=choice.chat_choice() if isinstance(choice, FunctionChoice) else choice,
            parallel_tool_calls=body.parallel_tool_calls,
            response_format=body.text.chat_format() if body.text is not None else None,
            adapters=body.adapters,
            blend_method=body.blend_method,
            density=body.density,
        )
    except ValidationError as exc:  # a blend string that does not parse, say: the problem, not chat's wrapper
        error = exc.errors()[0]
        raise ValueError(str(error["msg"]).removeprefix("Value error, ")) from None


def _chat_turns(items: Sequence[InputItem]) -> list[dict[str, Any]]:
    """Input items as the fields of chat messages: a `function_call` joins the assistant turn just before
    it (the text and the calls of one answer are one chat message), a `function_call_output` is a tool
    message."""
    turns: list[dict[str, Any]] = []
    for item in items:
        if isinstance(item, FunctionCallItem):
            if not turns or turns[-1]["role"] != "assistant":
                turns.append({"role": "assistant", "content": None})
            call = ToolCall(id=item.call_id, function=FunctionCall(name=item.name, arguments=item.arguments))
            turns[-1].setdefault("tool_calls", []).append(call)
        elif isinstance(item, FunctionCallOutputItem):
            turns.append({"role": "tool", "tool_call_id": item.call_id, "content": item.text()})
        else:
            turns.append({"role": item.role, "content": item.text()})
    return turns
