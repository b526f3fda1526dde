"""The fields chat and text completions share: the target model, sampling options, stop sequences and
streaming, with the blend fields (`blends.py`)."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field, field_validator, model_validator

from .blends import _BlendFields
from .common import ModelId, PositiveInt, Text, _characters_only, _Lenient, _Strict
from .structured import ResponseFormat

MAX_STOP_SEQUENCES = 4
MAX_STOP_LENGTH = 256  # characters; the stop matcher's work per token grows with the square of it


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

Temperature = Annotated[float, Field(ge=0.0, le=2.0)]
TopP = Annotated[float, Field(gt=0.0, le=1.0)]
TopK = Annotated[int, Field(ge=-1)]  # vLLM's: 0 (or -1) is off; more than the vocabulary keeps it all
MinP = Annotated[float, Field(ge=0.0, le=1.0)]
RepetitionPenalty = Annotated[float, Field(gt=0.0)]  # vLLM's range: any finite positive number
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]

MAX_LOGIT_BIAS = 300  # entries of `logit_bias`, as OpenAI allows
LOGIT_BIAS_RANGE = 100.0
LogitBias = Annotated[dict[str, float], Field(max_length=MAX_LOGIT_BIAS)]
StopSequence = Annotated[str, Field(max_length=MAX_STOP_LENGTH), AfterValidator(_characters_only)]
StopSequences = Annotated[list[StopSequence], Field(max_length=MAX_STOP_SEQUENCES, fail_fast=True)]


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
    response_format: ResponseFormat | None = None  # `structured.py`
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
        self._parse_blend(self.model)
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
