"""vLLM's `POST /tokenize` and `POST /detokenize`."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field, model_validator

from .blends import _BlendFields
from .common import Messages, ModelId, Text, _Lenient
from .tools import Tools

MAX_DETOKENIZE_TOKENS = 2**17  # a bound on validation; the engine refuses more than the context holds
_TOKENIZE_UNSUPPORTED = {
    "chat_template": "a chat template per request",
    "chat_template_kwargs": "chat template arguments",
    "continue_final_message": "continuing the final message",
}


class TokenizeRequest(_BlendFields, _Lenient):
    """vLLM's `POST /tokenize`: a raw `prompt`, or `messages` rendered with the chat template."""

    model: ModelId | None = None  # the base model when left out, as vLLM
    prompt: Text | None = None
    messages: Messages | None = None
    tools: Tools | None = None  # rendered into the prompt of `messages`, as a chat request's
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
            self._parse_blend(self.model)
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
            self._parse_blend(self.model)
        return self


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeResponse(BaseModel):
    prompt: str
