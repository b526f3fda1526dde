"""`POST /v1/chat/completions`: the request, the answer and its streamed chunks."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Literal

from pydantic import BaseModel, Field, model_validator

from .common import FunctionName, Messages, PositiveInt, ToolCall, Usage, _Response
from .sampling import _SamplingFields
from .tools import _ToolFields

MAX_TOP_LOGPROBS = 20


class ChatCompletionRequest(_SamplingFields, _ToolFields):
    messages: Messages
    max_tokens: PositiveInt | None = None
    max_completion_tokens: PositiveInt | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS)] | None = None

    @model_validator(mode="after")
    def _check_chat(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("`top_logprobs` requires `logprobs` to be true")
        self.check_min_tokens(self.token_limit())
        return self

    def token_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def unknown_fields(self) -> Iterator[str]:
        yield from super().unknown_fields()
        seen: set[str] = set()
        for message in self.messages:
            for name in message.unknown_fields():
                if name not in seen:  # each once: two thousand messages may all carry the same field
                    seen.add(name)
                    yield f"messages[].{name}"


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None


ChatFinishReason = Literal["stop", "length", "tool_calls"]  # the engine's, and the calls a reply made


def _absent(value: object) -> bool:
    return value is None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None  # null when the reply is only tool calls
    tool_calls: list[ToolCall] | None = Field(
        default=None, exclude_if=_absent
    )  # left out without calls, as OpenAI


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: ChatFinishReason


class ChatCompletion(_Response):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[ChatChoice]
    usage: Usage


class DeltaFunctionCall(BaseModel):
    name: FunctionName | None = Field(default=None, exclude_if=_absent)
    arguments: str | None = Field(default=None, exclude_if=_absent)


class DeltaToolCall(BaseModel):
    """A piece of a streamed call: its first carries the id, type and name (arguments ""), the rest
    fragments of the arguments; what a piece does not carry is left out, as OpenAI sends them."""

    index: int
    id: str | None = Field(default=None, exclude_if=_absent)
    type: Literal["function"] | None = Field(default=None, exclude_if=_absent)
    function: DeltaFunctionCall


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[DeltaToolCall] | None = Field(default=None, exclude_if=_absent)


class ChunkChoice(BaseModel):
    index: int
    delta: Delta
    logprobs: ChoiceLogprobs | None = None
    finish_reason: ChatFinishReason | None = None


class ChatCompletionChunk(_Response):
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    choices: list[ChunkChoice]
    usage: Usage | None = None
