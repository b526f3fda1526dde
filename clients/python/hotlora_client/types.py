"""Typed models of what a hotlora server answers (OpenAI's shapes plus hotlora's), and the call options.

The models accept fields they do not know, so a newer server does not break an older client.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Generic, Literal, TypedDict, TypeVar

from pydantic import BaseModel, ConfigDict

__all__ = [
    "Adapter",
    "AdapterDeleted",
    "AssistantMessage",
    "Blend",
    "BlendMethod",
    "ChatChoice",
    "ChatCompletion",
    "ChatCompletionChunk",
    "ChatParams",
    "ChoiceLogprobs",
    "ChunkChoice",
    "Completion",
    "CompletionChoice",
    "CompletionLogprobs",
    "CompletionParams",
    "Delta",
    "DetokenizeResponse",
    "ErrorDetail",
    "FunctionCall",
    "FunctionCallDelta",
    "GenerationParams",
    "Health",
    "Message",
    "Messages",
    "Model",
    "ParseParams",
    "ParsedChatCompletion",
    "ResponseFormat",
    "TokenLogprob",
    "TokenizeResponse",
    "Tool",
    "ToolCall",
    "ToolCallDelta",
    "ToolChoice",
    "TopLogprob",
    "Usage",
]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


# -- generation --------------------------------------------------------------------------------------


class Usage(_Wire):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class TopLogprob(_Wire):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = []


class ChoiceLogprobs(_Wire):
    content: list[TokenLogprob] | None = None


class FunctionCall(_Wire):
    name: str
    arguments: str  # JSON text, as the model wrote it

    def parsed_arguments(self) -> Any:
        """The arguments as Python values (`json.JSONDecodeError` if the model wrote no valid JSON)."""
        return json.loads(self.arguments)


class ToolCall(_Wire):
    """A call the assistant made: answer it with a `{"role": "tool", "tool_call_id": id, "content": ...}`
    message after the assistant's message in the conversation."""

    id: str
    type: str = "function"
    function: FunctionCall


class AssistantMessage(_Wire):
    role: str = "assistant"
    content: str | None = None  # None when the reply is only tool calls
    tool_calls: list[ToolCall] | None = None


class ChatChoice(_Wire):
    index: int
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str | None = None  # "stop", "length" or "tool_calls"


class ChatCompletion(_Wire):
    """`POST /v1/chat/completions`. `.text` is the first choice's reply."""

    id: str
    object: str = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None

    @property
    def text(self) -> str:
        return (self.choices[0].message.content or "") if self.choices else ""

    @property
    def tool_calls(self) -> list[ToolCall]:
        """The first choice's tool calls (none: an empty list)."""
        return (self.choices[0].message.tool_calls or []) if self.choices else []


class FunctionCallDelta(_Wire):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(_Wire):
    """A piece of a streamed call: the first of a call has its `id`, `type` and name, the rest pieces of
    its `arguments` (`Stream.tool_calls` puts them together)."""

    index: int
    id: str | None = None
    type: str | None = None
    function: FunctionCallDelta | None = None


ModelT = TypeVar("ModelT", bound=BaseModel)  # the model class of a `parse` call


class ParsedChatCompletion(ChatCompletion, Generic[ModelT]):
    """`parse`'s answer: the chat completion, and each choice's reply as an instance of the model class
    given as `response_format` (`parsed_choices`, in choice order; `.parsed` is the first)."""

    parsed_choices: list[ModelT]

    @property
    def parsed(self) -> ModelT:
        return self.parsed_choices[0]


class Delta(_Wire):
    role: str | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChunkChoice(_Wire):
    index: int
    delta: Delta
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(_Wire):
    """One streamed piece of a chat completion; the last one carries `usage` (with `include_usage`)."""

    id: str
    object: str = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None

    @property
    def text(self) -> str:
        """The new text of the first choice in this chunk ("" when it has none)."""
        return next((c.delta.content or "" for c in self.choices if c.index == 0), "")


class CompletionLogprobs(_Wire):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]] | None = None
    text_offset: list[int]


class CompletionChoice(_Wire):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None


class Completion(_Wire):
    """`POST /v1/completions`, and each streamed piece of one. `.text` is the first choice's text."""

    id: str
    object: str = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None

    @property
    def text(self) -> str:
        return next((c.text for c in self.choices if c.index == 0), "")


# -- tokens ----------------------------------------------------------------------------------------------


class TokenizeResponse(_Wire):
    """`POST /tokenize` (vLLM's): the token ids, how many, the context they count against, and with
    `return_token_strs` each token's string."""

    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeResponse(_Wire):
    """`POST /detokenize` (vLLM's): the text is vLLM's `prompt` field, `.text` here too."""

    prompt: str

    @property
    def text(self) -> str:
        return self.prompt


# -- models and adapters ------------------------------------------------------------------------------


class Model(_Wire):
    """An entry of `/v1/models`: the base model (`parent` None) or an adapter on it (`parent` = base id)."""

    id: str
    object: str = "model"
    created: int
    owned_by: str = "hotlora"
    root: str | None = None
    parent: str | None = None
    quantization: str | None = None
    max_model_len: int | None = None

    @property
    def is_adapter(self) -> bool:
        return self.parent is not None


class Adapter(_Wire):
    """An adapter in the server's store. `status`: resident (in memory), available (servable, loaded on
    first use), disabled (unloaded; `adapters.load` enables it again) or invalid (`error` says why)."""

    id: str
    object: str = "adapter"
    status: str
    created: int
    size_bytes: int
    version: str
    manifest: dict[str, Any] | None = None
    error: str | None = None
    rank: int | None = None  # from its PEFT config: the largest rank
    target_modules: list[str] | str | None = None  # as its PEFT config says (names, or one regex)

    @property
    def name(self) -> str:
        return self.id

    @property
    def ready(self) -> bool:
        """Whether a chat request may use it now."""
        return self.status in ("resident", "available")


class AdapterDeleted(_Wire):
    """The answer to `adapters.unload`: `deleted` when purged from the store, else only disabled."""

    id: str
    object: str = "adapter"
    deleted: bool
    status: str


class Health(_Wire):
    status: str
    model: str | None = None


class ErrorDetail(_Wire):
    message: str
    type: str | None = None
    param: str | None = None
    code: str | None = None


# -- call options --------------------------------------------------------------------------------------

BlendMethod = Literal["cat", "linear", "svd", "ties", "dare_linear", "dare_ties", "magnitude_prune"]
Blend = Mapping[str, float] | Sequence[tuple[str, float]]
"""Adapter weights: `{"piglatin": 0.7, "yoda": 0.3}` or `[("piglatin", 0.7), ("yoda", 0.3)]`."""
Message = Mapping[str, Any]
"""A chat message: `{"role": "user", "content": "..."}` (role system, developer, user or assistant), an
assistant's with its `tool_calls`, or a tool result `{"role": "tool", "tool_call_id": ..., "content": ...}`."""
Messages = str | Sequence[Message]
"""A conversation, or one text sent as a single user message."""
ResponseFormat = Mapping[str, Any] | type[BaseModel]
"""OpenAI's `{"type": "json_object"}` or `{"type": "json_schema", "json_schema": {...}}`, or a pydantic
model class (sent as a strict JSON schema named after it)."""
Tool = Mapping[str, Any]
"""A function the model may call, as OpenAI's: `{"type": "function", "function": {"name": "get_weather",
"description": "...", "parameters": <JSON schema of the arguments object>}}`."""
ToolChoice = Literal["none", "auto", "required"] | Mapping[str, Any]
"""`auto` (the model decides), `none`, `required` (at least one call), or one function:
`{"type": "function", "function": {"name": "get_weather"}}`."""


class GenerationParams(TypedDict, total=False):
    """Options of `chat` and `complete`. Pick the target with at most one of `model` (the base's id, an
    adapter's name or a blend string `"a*0.7+b*0.3"`), `adapter` or `blend`; none means the base model.
    Anything else the server accepts can go in `extra_body`."""

    model: str
    adapter: str
    blend: Blend
    blend_method: BlendMethod  # default "cat", the exact weighted sum
    density: float  # for ties, dare_linear, dare_ties, magnitude_prune
    max_tokens: int
    temperature: float
    top_p: float
    n: int
    stop: str | list[str]
    seed: int
    presence_penalty: float
    frequency_penalty: float
    logit_bias: Mapping[int | str, float]  # token id -> bias from -100 to 100 (up to 300 tokens)
    # vLLM's sampling extras
    top_k: int  # the k most likely tokens only (0 or -1: off)
    min_p: float  # drop tokens less likely than min_p x the most likely one (0 to 1)
    repetition_penalty: float  # > 1 discourages tokens of the prompt and the output so far (HF's, vLLM's)
    min_tokens: int  # EOS and stop sequences do not end a choice before this many tokens
    ignore_eos: bool  # EOS does not end a choice: it runs to max_tokens (or a stop sequence)
    user: str
    stream_options: dict[str, bool]  # {"include_usage": True}: the last chunk carries `usage`
    extra_body: Mapping[str, Any]


class ParseParams(GenerationParams, total=False):
    """Options of `parse`: `chat`'s, but for `response_format`, which `parse` takes as a model class."""

    max_completion_tokens: int
    logprobs: bool
    top_logprobs: int


class ChatParams(ParseParams, total=False):
    response_format: ResponseFormat  # the reply follows a JSON schema (decoded under a grammar)
    tools: Sequence[Tool]
    tool_choice: ToolChoice
    parallel_tool_calls: bool  # False: at most one call


class CompletionParams(GenerationParams, total=False):
    logprobs: int
    response_format: ResponseFormat
