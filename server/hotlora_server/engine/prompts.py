"""Requests to prompt token ids: chat messages through the tokenizer's own chat template."""

from __future__ import annotations

from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

from ..errors import InvalidRequestError


def chat_prompt_ids(tokenizer: PreTrainedTokenizerBase, messages: Sequence[dict[str, str]]) -> list[int]:
    """Render `messages` with the chat template (generation prompt appended) and tokenize the result."""
    if tokenizer.chat_template is None:
        raise InvalidRequestError(
            "this model has no chat template: the server can be started with --chat-template chatml (or a "
            "Jinja file), or use /v1/completions with a raw prompt",
            param="messages",
        )
    text = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def completion_prompt_ids(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    """Tokenize a raw prompt the way the model was trained to see plain text."""
    ids = list(tokenizer(prompt)["input_ids"])
    if not ids:
        raise InvalidRequestError("the prompt is empty", param="prompt")
    return ids


def stop_token_ids(tokenizer: PreTrainedTokenizerBase, generation_eos: int | list[int] | None) -> frozenset[int]:
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
