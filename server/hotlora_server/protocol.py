"""Pydantic models of OpenAI's wire format (the subset hotlora serves) and hotlora's extensions. No torch.

Lenient like vLLM about fields it does not know (accepted, logged and ignored; OpenAI's API refuses them),
strict about the ones it does: types are not coerced ("1" is not a number), numbers must be finite and in
range, lists and the strings that cost work per token are capped, and features that are not implemented
are refused with a message instead of being silently ignored.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Iterator
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator, with_config
from typing_extensions import TypedDict

from hotlora_adapters import validate_adapter_name

from .blend_methods import DEFAULT_METHOD, DENSITY_METHODS, METHODS, BlendMethod
from .types import AdapterInfo, BlendSpec

log = logging.getLogger(__name__)

MAX_STOP_SEQUENCES = 4
MAX_STOP_LENGTH = 256  # characters; the stop matcher's work per token grows with the square of it
MAX_TOP_LOGPROBS = 20
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


# -- requests ---------------------------------------------------------------------------------------


def _characters_only(value: str) -> str:
    """JSON's `"\\ud800"` decodes to a lone surrogate: not a character, and tokenizers and UTF-8 fail on it."""
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError as exc:
            raise ValueError(f"contains an unpaired surrogate at position {exc.start}, which is not a character") from None
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


class ChatMessage(_Open):
    """One message; its ignored fields are logged with the request's (`messages[].name`)."""

    role: Literal["system", "developer", "user", "assistant"]
    content: Text | ContentParts
    name: Text | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part["text"] for part in self.content)

    def template_role(self) -> str:
        """OpenAI's `developer` role is the system prompt for chat templates that predate it."""
        return "system" if self.role == "developer" else self.role


class StreamOptions(_Strict):
    include_usage: bool = False


_UNSUPPORTED = {
    "tools": "tool calling",
    "tool_choice": "tool calling",
    "functions": "function calling",
    "function_call": "function calling",
    "audio": "audio output",
    "prediction": "predicted outputs",
}

ModelId = Annotated[str, Field(min_length=1, max_length=MAX_MODEL_LENGTH)]
Temperature = Annotated[float, Field(ge=0.0, le=2.0)]
TopP = Annotated[float, Field(gt=0.0, le=1.0)]
TopK = Annotated[int, Field(ge=-1)]  # vLLM's: 0 (or -1) is off; more than the vocabulary keeps it all
MinP = Annotated[float, Field(ge=0.0, le=1.0)]
RepetitionPenalty = Annotated[float, Field(gt=0.0)]  # vLLM's range: any finite positive number
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]
PositiveInt = Annotated[int, Field(ge=1)]
MAX_LOGIT_BIAS = 300  # entries of `logit_bias`, as OpenAI allows
LOGIT_BIAS_RANGE = 100.0
LogitBias = Annotated[dict[str, float], Field(max_length=MAX_LOGIT_BIAS)]
StopSequence = Annotated[str, Field(max_length=MAX_STOP_LENGTH), AfterValidator(_characters_only)]
StopSequences = Annotated[list[StopSequence], Field(max_length=MAX_STOP_SEQUENCES, fail_fast=True)]
# a name that may become a folder in the store: refused with the naming rule before anything looks it up
AdapterName = Annotated[str, AfterValidator(validate_adapter_name)]
Density = Annotated[float, Field(gt=0.0, le=1.0)]
MAX_BLEND_COMPONENTS = 8
# a blend weight scales its adapter's change to the base; far beyond this the sums overflow (NaN output)
MAX_BLEND_WEIGHT = 10.0


class BlendComponent(_Strict):
    name: AdapterName
    weight: float = 1.0


BlendComponents = Annotated[list[BlendComponent], Field(min_length=1, max_length=MAX_BLEND_COMPONENTS, fail_fast=True)]


class _BlendFields(BaseModel):
    """hotlora's extension: blend stored adapters per request (`extra_body` in the `openai` SDK)."""

    adapters: BlendComponents | None = None
    blend_method: BlendMethod | None = None
    density: Density | None = None

    def blend_spec(self, model: str) -> BlendSpec | None:
        """The blend this request asks for: the `adapters` field, or a `a*0.7+b*0.3` model string."""
        components = [(c.name, c.weight) for c in self.adapters] if self.adapters else parse_blend_model(model)
        if components is None:
            if self.blend_method is not None or self.density is not None:
                raise ValueError("`blend_method` and `density` apply only to a blend of adapters")
            return None
        return make_blend(components, self.blend_method or DEFAULT_METHOD, self.density)


def parse_blend_model(model: str) -> list[tuple[str, float]] | None:
    """`"piglatin*0.7+yoda*0.3"` → [("piglatin", 0.7), ("yoda", 0.3)]; None for a plain model id.

    A weight defaults to 1 (`"a+b"`). Adapter names cannot contain `*` or `+`, so this is unambiguous.
    """
    if "*" not in model and "+" not in model:
        return None
    components: list[tuple[str, float]] = []
    for part in model.split("+"):
        name, star, weight = part.strip().partition("*")
        try:
            value = float(weight) if star else 1.0
        except ValueError:
            raise ValueError(f"blend `{model}`: weight `{weight}` of `{name}` is not a number") from None
        components.append((name.strip(), value))
    return components


def make_blend(components: list[tuple[str, float]], method: BlendMethod, density: float | None) -> BlendSpec:
    """Validate a blend: valid, distinct adapter names, bounded weights, `density` where the method needs it."""
    if not components or len(components) > MAX_BLEND_COMPONENTS:
        raise ValueError(f"a blend combines 1 to {MAX_BLEND_COMPONENTS} adapters")
    names = [validate_adapter_name(name) for name, _ in components]
    if len(set(names)) != len(names):
        raise ValueError("each adapter may appear only once in a blend")
    for name, weight in components:
        if not math.isfinite(weight):
            raise ValueError(f"the weight of `{name}` must be a finite number")
        if abs(weight) > MAX_BLEND_WEIGHT:
            raise ValueError(
                f"the weight of `{name}` must be between -{MAX_BLEND_WEIGHT:g} and {MAX_BLEND_WEIGHT:g} "
                f"(got {weight:g}): a weight scales the adapter's change to the base model"
            )
    if all(weight == 0 for _, weight in components):
        raise ValueError("at least one blend weight must be non-zero")
    needs_density = METHODS[method].needs_density
    if needs_density and density is None:
        raise ValueError(f"blend method `{method}` needs `density` (the fraction of weights kept, 0 < density <= 1)")
    if not needs_density and density is not None:
        raise ValueError(f"`density` applies only to the blend methods {', '.join(DENSITY_METHODS)}")
    return BlendSpec(components=tuple(components), method=method, density=density)


class _SamplingFields(_BlendFields, _Lenient):
    """Fields shared by chat and text completions."""

    model: ModelId
    temperature: Temperature | None = None
    top_p: TopP | None = None
    n: PositiveInt | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    stop: StopSequence | StopSequences | None = None
    seed: Annotated[int, Field(ge=-(2**63), lt=2**63)] | None = None  # a signed 64-bit integer
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    user: Text | None = None
    logit_bias: LogitBias | None = None
    # vLLM's sampling extras (`extra_body` in the `openai` SDK)
    top_k: TopK | None = None
    min_p: MinP | None = None
    repetition_penalty: RepetitionPenalty | None = None
    min_tokens: Annotated[int, Field(ge=0)] | None = None
    ignore_eos: bool | None = None

    @field_validator("logit_bias")
    @classmethod
    def _check_logit_bias(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        """OpenAI's shape: token ids (decimal strings) to biases from -100 to 100. Whether an id is in the
        vocabulary is the engine's to say (it knows the model)."""
        for key, bias in (value or {}).items():
            if not (key.isascii() and key.isdigit() and len(key) <= 10):
                raise ValueError(f"`{key[:20]}` is not a token id (a non-negative integer, as a string)")
            if abs(bias) > LOGIT_BIAS_RANGE:
                raise ValueError(f"the bias of token {key} must be between -100 and 100 (got {bias:g})")
        return value

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else value or []
        if any(s == "" for s in stops):
            raise ValueError("stop sequences must not be empty")
        return value

    @model_validator(mode="after")
    def _refuse_unsupported(self) -> _SamplingFields:
        for name, feature in _UNSUPPORTED.items():
            if (self.model_extra or {}).get(name) not in (None, [], {}):
                raise ValueError(f"`{name}`: {feature} is not supported by this server")
        if self.stream_options is not None and not self.stream:
            raise ValueError("`stream_options` is only allowed when `stream` is true")
        self.blend_spec(self.model)  # a malformed blend is a 400 like any other invalid field
        return self

    def check_min_tokens(self, max_tokens: int | None) -> None:
        if self.min_tokens is not None and max_tokens is not None and self.min_tokens > max_tokens:
            raise ValueError(f"`min_tokens` ({self.min_tokens}) must not exceed max_tokens ({max_tokens})")

    def token_bias(self) -> tuple[tuple[int, float], ...]:
        """`logit_bias` by token id, each id once (`"7"` and `"07"` are one token: the last one counts)."""
        return tuple(sorted({int(key): bias for key, bias in (self.logit_bias or {}).items()}.items()))

    def stop_sequences(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())

    def include_usage(self) -> bool:
        """Whether a stream ends with a usage chunk (`stream_options.include_usage`)."""
        return bool(self.stream_options and self.stream_options.include_usage)


Messages = Annotated[list[ChatMessage], Field(min_length=1, max_length=MAX_MESSAGES, fail_fast=True)]


class ChatCompletionRequest(_SamplingFields):
    messages: Messages
    max_tokens: PositiveInt | None = None
    max_completion_tokens: PositiveInt | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS)] | None = None
    response_format: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _check_chat(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("`top_logprobs` requires `logprobs` to be true")
        if self.response_format and self.response_format.get("type") not in (None, "text"):
            raise ValueError("`response_format`: only {'type': 'text'} is supported by this server")
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


class CompletionRequest(_SamplingFields):
    prompt: Text | Annotated[list[Text], Field(min_length=1, max_length=1, fail_fast=True)]
    max_tokens: PositiveInt | None = 16  # OpenAI's default for /v1/completions
    logprobs: Annotated[int, Field(ge=0, le=5)] | None = None
    echo: bool | None = None
    suffix: Text | None = None
    best_of: PositiveInt | None = None

    @model_validator(mode="after")
    def _check_completion(self) -> CompletionRequest:
        if self.echo:
            raise ValueError("`echo` is not supported by this server")
        if self.suffix:
            raise ValueError("`suffix` (insertion) is not supported by this server")
        if self.best_of is not None and self.best_of != (self.n or 1):
            raise ValueError("`best_of` other than `n` is not supported by this server")
        self.check_min_tokens(self.max_tokens)
        return self

    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


MAX_DETOKENIZE_TOKENS = 2**17  # a bound on validation; the engine refuses more than the context holds
_TOKENIZE_UNSUPPORTED = {
    "tools": "tool calling",
    "chat_template": "a chat template per request",
    "chat_template_kwargs": "chat template arguments",
    "continue_final_message": "continuing the final message",
}


class TokenizeRequest(_BlendFields, _Lenient):
    """vLLM's `POST /tokenize`: a raw `prompt`, or `messages` rendered with the chat template."""

    model: ModelId | None = None  # the base model when left out, as vLLM
    prompt: Text | None = None
    messages: Messages | None = None
    add_generation_prompt: bool = True
    add_special_tokens: bool | None = None  # default: true for a prompt, false for messages (the template's)
    return_token_strs: bool | None = False

    @model_validator(mode="after")
    def _check_tokenize(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give either `prompt` or `messages`")
        for name, feature in _TOKENIZE_UNSUPPORTED.items():
            if (self.model_extra or {}).get(name) not in (None, False, [], {}):
                raise ValueError(f"`{name}`: {feature} is not supported by this server")
        if self.model is not None:
            self.blend_spec(self.model)
        return self

    def special_tokens(self) -> bool:
        return self.add_special_tokens if self.add_special_tokens is not None else self.messages is None


class DetokenizeRequest(_BlendFields, _Lenient):
    """vLLM's `POST /detokenize`."""

    model: ModelId | None = None
    tokens: Annotated[
        list[Annotated[int, Field(ge=0, lt=2**63)]], Field(max_length=MAX_DETOKENIZE_TOKENS, fail_fast=True)
    ]

    @model_validator(mode="after")
    def _check_detokenize(self) -> DetokenizeRequest:
        if self.model is not None:
            self.blend_spec(self.model)
        return self


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeResponse(BaseModel):
    prompt: str


# -- responses --------------------------------------------------------------------------------------


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: Literal["stop", "length"]


class _Response(BaseModel):
    """Fields every completion object and chunk shares."""

    id: str
    created: int
    model: str
    system_fingerprint: str | None = None


class ChatCompletion(_Response):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[ChatChoice]
    usage: Usage


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int
    delta: Delta
    logprobs: ChoiceLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None = None


class ChatCompletionChunk(_Response):
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    choices: list[ChunkChoice]
    usage: Usage | None = None


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]] | None
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None = None


class Completion(_Response):
    object: Literal["text_completion"] = "text_completion"
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "hotlora"
    root: str
    parent: str | None = None
    quantization: str | None = None
    max_model_len: int | None = None
    kernel: str | None = None  # hotlora: how the base's layers multiply on this machine
    batch_invariant: bool | None = None  # hotlora: whether an output is independent of its batch


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# -- adapter management ------------------------------------------------------------------------------


class AdapterLoadRequest(_Lenient):
    name: AdapterName
    path: Annotated[str, Field(min_length=1)] | None = None


class LoadLoraAdapterRequest(_Lenient):
    """vLLM's `POST /v1/load_lora_adapter`."""

    lora_name: AdapterName
    lora_path: Annotated[str, Field(min_length=1)] | None = None


class UnloadLoraAdapterRequest(_Lenient):
    """vLLM's `POST /v1/unload_lora_adapter`."""

    lora_name: AdapterName


class BlendSaveRequest(_Lenient):
    name: AdapterName
    adapters: BlendComponents
    method: BlendMethod = DEFAULT_METHOD
    density: Density | None = None

    @model_validator(mode="after")
    def _check_blend(self) -> BlendSaveRequest:
        self.blend_spec()
        return self

    def blend_spec(self) -> BlendSpec:
        return make_blend([(c.name, c.weight) for c in self.adapters], self.method, self.density)


class AdapterCard(BaseModel):
    id: str
    object: Literal["adapter"] = "adapter"
    status: Literal["resident", "available", "disabled", "invalid"]
    created: int
    size_bytes: int
    version: str
    manifest: dict[str, Any] | None = None
    error: str | None = None

    @classmethod
    def of(cls, info: AdapterInfo) -> AdapterCard:
        return cls(
            id=info.name,
            status=info.status,
            created=info.created,
            size_bytes=info.size_bytes,
            version=info.version,
            manifest=info.manifest,
            error=info.error,
        )


class AdapterDeleted(BaseModel):
    id: str
    object: Literal["adapter"] = "adapter"
    deleted: bool  # removed from the store (`purge`), not only unloaded and disabled
    status: Literal["disabled", "deleted"]


class AdapterList(BaseModel):
    object: Literal["list"] = "list"
    data: list[AdapterCard]


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
