"""`POST /v1/completions` (legacy text completions): the request, the answer and its streamed chunks."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field, model_validator

from .common import PositiveInt, Text, Usage, _Response
from .sampling import _SamplingFields


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
