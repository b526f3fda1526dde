"""Decode-step attention whose result for a row does not depend on the other rows of the batch.

bitsandbytes' CPU 4-bit kernel rounds every layer input to bf16, so a difference in the last fp32 bit
anywhere upstream can flip a rounding and grow, layer by layer, into a different greedy token. SDPA is
such a source: a row alone runs without a mask, a row in a left-padded batch with one, and the two take
different kernels and summation orders (measured: 0.24 logits apart after one step on SmolLM2). Here a
decode step accumulates in float64 — products of float32 values are exact in float64 and the order of
the sums shifts results by about 1e-16, far below float32's resolution — and rounds back once, so a
row's output is the same alone or beside any other rows, padded or not. Prefill (always one request
alone) keeps plain SDPA.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

NAME = "hotlora_batch_invariant"


def batch_invariant_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function contract: `[rows, heads, q, dim]` in, `[rows, q, heads, dim]` out."""
    rows, heads, q_len, dim = query.shape
    if q_len != 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    kv_heads = key.shape[1]
    q = query.double().view(rows, kv_heads, heads // kv_heads, dim)  # query heads grouped by their kv head
    scores = torch.matmul(q, key.double().transpose(-1, -2)) * (scaling if scaling is not None else dim**-0.5)
    if attention_mask is not None:  # boolean [rows, 1, 1, keys]: True where a row may attend
        scores = scores.masked_fill(~attention_mask, float("-inf"))
    out = torch.matmul(torch.softmax(scores, dim=-1), value.double())
    return out.view(rows, heads, 1, dim).transpose(1, 2).to(query.dtype), None


def use_batch_invariant_attention(model: PreTrainedModel) -> None:
    """Switch `model` (an SDPA-capable transformers model) to `batch_invariant_attention`."""
    AttentionInterface.register(NAME, batch_invariant_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
    model.set_attn_implementation(NAME)
