"""Attention whose result for a row does not depend on the other rows of the batch.

bitsandbytes' CPU 4-bit kernel rounds every layer input to bf16, so a difference in the last fp32 bit
anywhere upstream can flip a rounding and grow, layer by layer, into a different greedy token. SDPA is
such a source: a row alone runs without a mask, a row in a left-padded batch with one, and the two take
different kernels and summation orders (see docs/performance.md). The compiled kernels' attention
computes each row, head and query position on its own, over the keys its mask allows, in key order, so
a row's output has the same bits alone or beside any other rows, padded or not, in prefill and decoding.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from transformers import AttentionInterface, PreTrainedModel
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

from .device_path import RowKernels

NAME = "hotlora_batch_invariant"


def batch_invariant_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    softcap: float | None = None,
    *,
    kernels: RowKernels,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function contract: `[rows, heads, q, dim]` in, `[rows, q, heads, dim]` out.

    `attention_mask` is SDPA's boolean `[rows or 1, 1, q, keys]` (True: may attend) or None for plain
    causal; `softcap` caps the scores as `softcap * tanh(scores / softcap)` (Gemma 2's softcapping).
    """
    rows, _, q_len, dim = query.shape
    if attention_mask is not None:
        attention_mask = attention_mask.expand(rows, 1, q_len, key.shape[2])
    scale = scaling if scaling is not None else dim**-0.5
    return kernels.attention(query, key, value, attention_mask, scale, softcap), None


def use_batch_invariant_attention(model: PreTrainedModel, kernels: RowKernels) -> None:
    """Switch `model` (an SDPA-capable transformers model on the CPU, float32) to the kernels' attention."""
    AttentionInterface.register(NAME, partial(batch_invariant_attention, kernels=kernels))
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
    model.set_attn_implementation(NAME)
