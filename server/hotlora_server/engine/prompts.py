"""Requests to prompt token ids: chat messages through the tokenizer's own chat template."""

from __future__ import annotations

import copy
import threading
from collections.abc import Sequence
from typing import Any

import jinja2
from transformers import PreTrainedTokenizerBase

from ..errors import ContextLengthExceededError, InvalidRequestError
from ..tools import fallback_messages, supports_tools
from ..types import GenerationRequest, TemplateMessage, TemplateTool, TokenizeRequest


def chat_prompt_text(
    tokenizer: PreTrainedTokenizerBase,
    messages: Sequence[TemplateMessage],
    tools: Sequence[TemplateTool] | None = None,
    add_generation_prompt: bool = True,
) -> str:
    """`messages` rendered with the chat template, the generation prompt appended (unless told not to).

    A template that renders tools gets `tools` and the conversation's calls as they are; for any other,
    they are written into plain turns first (`tools.prompt`'s fallback).
    """
    if tokenizer.chat_template is None:
        raise InvalidRequestError(
            "this model has no chat template: the server can be started with --chat-template chatml (or a "
            "Jinja file), or use /v1/completions with a raw prompt",
            param="messages",
        )
    options: dict[str, Any] = {}
    if supports_tools(tokenizer.get_chat_template(tools=list(tools) if tools else None)):
        conversation = list(messages)
        if tools:
            options["tools"] = list(tools)
    else:
        conversation = fallback_messages(messages, tools)
    try:
        text = tokenizer.apply_chat_template(
            conversation, add_generation_prompt=add_generation_prompt, tokenize=False, **options
        )
    except jinja2.TemplateError as exc:  # a template's `raise_exception`, e.g. roles out of order
        raise InvalidRequestError(
            f"the chat template cannot render these messages: {exc}", param="messages"
        ) from None
    return str(text)


class PromptTokenizer:
    """A request's prompt as token ids, checked against the context; called from worker threads.

    It keeps its own copy of the tokenizer: a fast tokenizer refuses to be used by two threads at once
    when one call changes its settings ("Already borrowed"), and the engine thread decodes with the
    original. A text too long for the context is refused from its length before it is tokenized
    (tokenizing megabytes takes seconds and gigabytes): no token covers more characters than the longest
    entry of the vocabulary, as holds for the byte-level BPE and SentencePiece tokenizers of chat models
    (every character of the text lands in some token).
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, context_length: int) -> None:
        self._tokenizer = copy.deepcopy(tokenizer)
        self._lock = threading.Lock()
        self._context = context_length
        self._longest_token = max(map(len, tokenizer.get_vocab()), default=1)
        self._vocab = len(tokenizer)

    def encode(self, request: GenerationRequest) -> list[int]:
        """The prompt's ids; `ContextLengthExceededError` unless it leaves room for the completion.

        A chat is rendered with the template (which adds its own special tokens); a raw prompt is
        tokenized the way the model was trained to see plain text.
        """
        wanted = request.sampling.max_tokens
        with self._lock:
            if request.messages is not None:
                text = chat_prompt_text(self._tokenizer, request.messages, request.tools)
                param, special = "messages", False
            else:
                param, text, special = "prompt", request.prompt or "", True
            self._check_fits(len(text), wanted or 1, param, exact=False)
            ids = list(self._tokenizer(text, add_special_tokens=special)["input_ids"])
        if not ids:
            raise InvalidRequestError("the prompt is empty", param=param)
        self._check_fits(len(ids), wanted or 1, param, exact=True)
        return ids

    def tokenize(self, request: TokenizeRequest, strings: bool = False) -> tuple[list[int], list[str] | None]:
        """`POST /tokenize`: the ids (and token strings) of a chat or a prompt, bounded as a prompt is: a text
        the context could not hold is refused (by its characters before it is tokenized)."""
        with self._lock:
            if request.messages is not None:
                param = "messages"
                text = chat_prompt_text(
                    self._tokenizer, request.messages, request.tools, request.add_generation_prompt
                )
            else:
                param, text = "prompt", request.prompt or ""
            self._check_fits(len(text), 0, param, exact=False)
            ids = list(self._tokenizer(text, add_special_tokens=request.add_special_tokens)["input_ids"])
            names = [str(t) for t in self._tokenizer.convert_ids_to_tokens(ids)] if strings else None
        self._check_fits(len(ids), 0, param, exact=True)
        return ids, names

    def detokenize(self, ids: list[int]) -> str:
        """`POST /detokenize`: the text of `ids`, special tokens included (so a tokenized chat reads back as
        its template made it); ids outside the vocabulary, or more than the context holds, are refused."""
        if len(ids) > self._context:
            raise InvalidRequestError(
                f"{len(ids)} tokens are more than this model's context of {self._context} tokens",
                param="tokens",
            )
        unknown = [i for i in ids if i >= self._vocab]
        if unknown:
            raise InvalidRequestError(
                f"token id {unknown[0]} is outside the vocabulary (ids 0 to {self._vocab - 1})",
                param="tokens",
            )
        with self._lock:
            return str(
                self._tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
            )

    def _check_fits(self, size: int, completion: int, param: str, *, exact: bool) -> None:
        """Refuse a prompt of `size` tokens, or (not `exact`) of `size` characters, that leaves no room
        for `completion` tokens."""
        tokens = size if exact else -(-size // self._longest_token)  # not exact: the fewest it can make
        if tokens + completion <= self._context:
            return
        counted = (
            f"{tokens} in the {param}" if exact else f"at least {tokens} in the {param} of {size} characters"
        )
        raise ContextLengthExceededError(
            f"This model's maximum context length is {self._context} tokens. However, you requested "
            f"{'' if exact else 'at least '}{tokens + completion} tokens ({counted}, {completion} in the "
            f"completion). Please reduce the length of the {param} or completion.",
            param=param,
        )


def stop_token_ids(
    tokenizer: PreTrainedTokenizerBase, generation_eos: int | list[int] | None
) -> frozenset[int]:
    """EOS from the tokenizer and generation config, plus ChatML's end of turn `<|im_end|>`."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    if isinstance(generation_eos, int):
        ids.add(generation_eos)
    elif generation_eos:
        ids.update(generation_eos)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != tokenizer.unk_token_id:
        ids.add(im_end)
    return frozenset(ids)
