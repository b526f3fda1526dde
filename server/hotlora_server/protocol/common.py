"""What every body and answer shares: the base models (strict on known fields, lenient on unknown ones),
text that must be characters, messages, model ids, usage and errors."""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Iterator
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator, with_config
from typing_extensions import TypedDict

from hotlora_adapters import validate_adapter_name

log = logging.getLogger(__name__)

MAX_MESSAGES = 2048  # the limit Azure OpenAI enforces
MAX_CONTENT_PARTS = 256
MAX_MODEL_LENGTH = 4096  # characters: a base served under its path fits (PATH_MAX), a blend of 8 needs ~700
MAX_LOGGED_FIELDS = 8


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="ignore")


class _Open(BaseModel):
    """Unknown fields are accepted and ignored, as vLLM does (OpenAI's API refuses them with a 400)."""

    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="allow")

    def unknown_fields(self) -> Iterator[str]:
        """The names of the fields this server ignores, nested ones with their path."""
        return iter(self.model_extra or ())


class _Lenient(_Open):
    """A request body: its ignored fields are logged in one line, however many there are."""

    @model_validator(mode="after")
    def _log_unknown(self) -> _Lenient:
        names = list(itertools.islice(self.unknown_fields(), MAX_LOGGED_FIELDS + 1))
        if names:
            more = ", ..." if len(names) > MAX_LOGGED_FIELDS else ""
            log.info("ignoring unsupported fields: %s%s", ", ".join(names[:MAX_LOGGED_FIELDS]), more)
        return self


def _characters_only(value: str) -> str:
    """JSON's `"\\ud800"` decodes to a lone surrogate: not a character, and tokenizers and UTF-8 fail on it."""
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError as exc:
            raise ValueError(
                f"contains an unpaired surrogate at position {exc.start}, which is not a character"
            ) from None
    return value


Text = Annotated[str, AfterValidator(_characters_only)]  # free text that reaches the model or the logs


@with_config(ConfigDict(strict=True, extra="ignore"))
class TextPart(TypedDict):
    """A text part of a message's content: a typed dict, as a message may carry hundreds and a model
    instance costs several times more to validate (on the event loop) than a dict."""

    type: Literal["text"]
    text: Text


# Lists a client sends are capped, and validation stops at their first invalid item (`fail_fast`): a body of
# a million wrong items costs one error, not a million errors built and formatted on the event loop.
ContentParts = Annotated[list[TextPart], Field(max_length=MAX_CONTENT_PARTS, fail_fast=True)]


MAX_TOOL_CALLS = 128  # calls in one assistant message, as tools in a request (OpenAI's limit)
FUNCTION_NAME = r"^[A-Za-z0-9_-]{1,64}$"  # OpenAI's rule for a function's name
FunctionName = Annotated[str, Field(pattern=FUNCTION_NAME)]


class FunctionCall(_Strict):
    name: FunctionName
    arguments: Text  # JSON text, as the model wrote it


class ToolCall(_Strict):
    """A call an assistant made: in an answer, and in the conversation a client sends back."""

    id: Annotated[Text, Field(min_length=1)]
    type: Literal["function"] = "function"
    function: FunctionCall


ToolCalls = Annotated[list[ToolCall], Field(max_length=MAX_TOOL_CALLS, fail_fast=True)]


class ChatMessage(_Open):
    """One message; its ignored fields are logged with the request's (`messages[].name`).

    An assistant message may carry `tool_calls` (its `content` may then be null); a `tool` message is the
    result of one of them, named by `tool_call_id`.
    """

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Text | ContentParts | None = None
    name: Text | None = None
    tool_calls: ToolCalls | None = None
    tool_call_id: Annotated[Text, Field(min_length=1)] | None = None

    @model_validator(mode="after")
    def _check_role(self) -> ChatMessage:
        if self.tool_calls and self.role != "assistant":
            raise ValueError(f"only assistant messages carry `tool_calls`, not {self.role} messages")
        if (self.role == "tool") != (self.tool_call_id is not None):
            raise ValueError(
                "a tool message needs `tool_call_id` (the id of the call it answers)"
                if self.role == "tool"
                else f"only tool messages carry `tool_call_id`, not {self.role} messages"
            )
        if self.content is None and not self.tool_calls:
            either = " or `tool_calls`" if self.role == "assistant" else ""
            raise ValueError(f"a {self.role} message needs `content`{either}")
        return self

    def text(self) -> str:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        return "".join(part["text"] for part in self.content)

    def template_role(self) -> str:
        """OpenAI's `developer` role is the system prompt for chat templates that predate it."""
        return "system" if self.role == "developer" else self.role


def _check_tool_results(messages: list[ChatMessage]) -> list[ChatMessage]:
    """A tool message answers a call of an earlier assistant message (OpenAI refuses one that does not)."""
    calls: set[str] = set()
    for i, message in enumerate(messages):
        calls.update(call.id for call in message.tool_calls or ())
        if message.tool_call_id is not None and message.tool_call_id not in calls:
            raise ValueError(
                f"message {i} answers tool call '{message.tool_call_id[:64]}', which no earlier assistant "
                "message made (a tool message follows the assistant message whose `tool_calls` it answers)"
            )
    return messages


Messages = Annotated[
    list[ChatMessage],
    Field(min_length=1, max_length=MAX_MESSAGES, fail_fast=True),
    AfterValidator(_check_tool_results),
]
ModelId = Annotated[str, Field(min_length=1, max_length=MAX_MODEL_LENGTH)]
PositiveInt = Annotated[int, Field(ge=1)]
# a name that may become a folder in the store: refused with the naming rule before anything looks it up
AdapterName = Annotated[str, AfterValidator(validate_adapter_name)]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class _Response(BaseModel):
    """Fields every completion object and chunk shares."""

    id: str
    created: int
    model: str
    system_fingerprint: str | None = None


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


def finite(value: float) -> float:
    """JSON has no NaN/inf: map a -inf logprob to the most negative finite float, as OpenAI does."""
    return value if math.isfinite(value) else -9999.0
