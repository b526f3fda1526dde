"""Decoding as a few plain functions (the shape of gpt-fast's `prefill` / `decode_one_token`).

Extra forward kwargs carry the per-step inputs of a padded batch (attention mask, positions) and, for
adapters served through PEFT's own path, its per-row `adapter_names`.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import DynamicCache

from .phase import prefilling


@torch.inference_mode()
def prefill(model: Any, input_ids: torch.Tensor, cache: DynamicCache, **forward_kwargs: Any) -> torch.Tensor:
    """Run the prompt ([rows, tokens]) through the model, filling `cache`; return last logits [rows, vocab].

    The last position is kept by index, not `logits_to_keep=1`: that slice leaves the `lm_head` input
    strided, and torch then multiplies row by row, reading the whole output embedding once per row
    (about twice the time of a contiguous input: docs/performance.md).
    """
    last = torch.tensor([input_ids.shape[1] - 1], device=input_ids.device)
    with prefilling():
        out = model(input_ids=input_ids, cache=cache, use_cache=True, logits_to_keep=last, **forward_kwargs)
    return out.logits[:, -1, :]


@torch.inference_mode()
def decode_one_token(
    model: Any, tokens: torch.Tensor, cache: DynamicCache, **forward_kwargs: Any
) -> torch.Tensor:
    """One decoding step for every row ([rows] token ids); return next-token logits [rows, vocab]."""
    out = model(input_ids=tokens[:, None], cache=cache, use_cache=True, **forward_kwargs)
    return out.logits[:, -1, :]
