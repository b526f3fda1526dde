"""Tiny random models of every decoder-only family the server claims, built from configs with the real
SmolLM2 tokenizer (their weights cannot be downloaded here)."""

from __future__ import annotations

import warnings
from typing import Any

FAMILIES: dict[str, dict[str, Any]] = {
    "llama": {},
    "qwen2": {},  # biases on q, k, v
    "qwen3": {"head_dim": 16},  # q and k norms
    "mistral": {"head_dim": 16, "sliding_window": 8},
    "gemma2": {
        "head_dim": 16,
        "sliding_window": 8,
        "query_pre_attn_scalar": 16,
        "attn_logit_softcapping": 0.5,
    },
    "gemma3_text": {
        "head_dim": 16,
        "sliding_window": 8,
        "query_pre_attn_scalar": 16,
        "sliding_window_pattern": 2,
    },
    "phi3": {},  # fused qkv_proj and gate_up_proj
}


def tiny_model(family: str, tokenizer: Any, **overrides: Any) -> Any:
    """A seeded random `family` model (two layers of 64) in eval mode: every build is the same."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    config = AutoConfig.for_model(
        family,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(tokenizer),
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **{**FAMILIES[family], **overrides},
    )
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_config(config).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return model
