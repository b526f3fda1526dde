"""Attention whose result for a row does not depend on the other rows of the batch.

bitsandbytes' CPU 4-bit kernel rounds every layer input to bf16, so a difference in the last fp32 bit
anywhere upstream can flip a rounding and grow, layer by layer, into a different greedy token. SDPA is
such a source: a row alone runs without a mask, a row in a left-padded batch with one, and the two take
different kernels and summation orders (their logits differ after one step on SmolLM2; see
docs/performance.md). Here attention accumulates in float64 — products of float32 values are exact in
float64 and the order of the sums shifts results by about 1e-16, far below float32's resolution — and
rounds back once, so a row's output is the same alone or beside any other rows, padded or not, in
prefill and in decoding.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AttentionInterface, PreTrainedModel
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

NAME = "hotlora_batch_invariant"
QUERY_BLOCK = 128  # query positions per block: bounds the float64 score matrix on long prompts


def batch_invariant_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    softcap: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function contract: `[rows, heads, q, dim]` in, `[rows, q, heads, dim]` out.

    `attention_mask` is SDPA's boolean `[rows, 1, q, keys]` (True: may attend) or None for plain causal;
    `softcap` caps the scores as `softcap * tanh(scores / softcap)` (Gemma 2's attention softcapping).
    """
    rows, heads, q_len, dim = query.shape
    keys = key.shape[2]
    if attention_mask is None:  # causal over a cache of `keys - q_len` earlier positions
        attention_mask = torch.ones(q_len, keys, dtype=torch.bool, device=query.device).tril(keys - q_len)
        attention_mask = attention_mask[None, None]
    kv_heads = key.shape[1]
    group = heads // kv_heads  # query heads per kv head, which is shared by the group's heads
    scale = scaling if scaling is not None else dim**-0.5
    k, v = key.double().transpose(-1, -2), value.double()
    out = torch.empty(rows, q_len, heads, dim, dtype=query.dtype, device=query.device)
    for start in range(0, q_len, QUERY_BLOCK):
        stop = min(start + QUERY_BLOCK, q_len)
        q = query[:, :, start:stop].double().reshape(rows, kv_heads, group * (stop - start), dim)
        scores = torch.matmul(q, k).view(rows, kv_heads, group, stop - start, keys) * scale
        if softcap is not None:
            scores = torch.tanh(scores / softcap) * softcap
        allowed = attention_mask[:, :, None, start:stop]  # [rows, 1, 1, block, keys]
        scores = scores.masked_fill(~allowed, torch.finfo(torch.float64).min)  # padding rows stay finite
        probs = torch.softmax(scores, dim=-1).view(rows, kv_heads, group * (stop - start), keys)
        block = torch.matmul(probs, v).view(rows, heads, stop - start, dim)
        out[:, start:stop] = block.transpose(1, 2).to(query.dtype)
    return out, None


def use_batch_invariant_attention(model: PreTrainedModel) -> None:
    """Switch `model` (an SDPA-capable transformers model) to `batch_invariant_attention`."""
    AttentionInterface.register(NAME, batch_invariant_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
    model.set_attn_implementation(NAME)
