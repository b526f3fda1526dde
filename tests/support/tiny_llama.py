"""The tiny random llama the unit tests build: one set of dimensions, each test changing what it needs (its
tokenizer's vocabulary and special tokens, a context length, tied embeddings, smaller layers)."""

from __future__ import annotations

import warnings
from typing import Any

TINY_LLAMA: dict[str, int] = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=256,
)


def build_tiny_llama(**overrides: Any) -> Any:
    """A LlamaForCausalLM of `TINY_LLAMA` with `overrides` (LlamaConfig fields), seeded: every build is the
    same."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return LlamaForCausalLM(LlamaConfig(**{**TINY_LLAMA, **overrides}))


def special_tokens(tokenizer: Any) -> dict[str, Any]:
    """`tokenizer`'s bos, eos and pad token ids, as LlamaConfig and GenerationConfig take them."""
    return {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
