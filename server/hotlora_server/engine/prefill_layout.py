"""How whole prompts, each from its longest cached prefix, share one padded prefill forward.

A prompt whose first blocks are in the prefix cache runs only the rest: the batch's cache starts with every
row's cached prefix left-padded to the longest, and the new tokens follow. Every row runs as many new tokens
as the longest (a row reuses less of its cached prefix when that is what it takes; the forward computes that
many columns for every row anyway), so no row has padding between its prefix and its new tokens: each row's
tokens are one run at the end of the cache, and a sliding window counted in columns is counted in tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache

from .batch_cache import kv_layers
from .prefix_cache import LayerKV, shorten_hit

Hit = tuple[int, LayerKV | None]  # a prompt's cached prefix: its length and its per-layer KV


@dataclass(frozen=True)
class GroupLayout:
    """The inputs of one prefill forward over whole prompts, and where each row's tokens end up."""

    ids: torch.Tensor  # [rows, width]: each row's new tokens, left-padded to the longest
    valid: torch.Tensor  # [rows, past + width]: which columns of the cache and the new tokens are the row's
    positions: torch.Tensor  # [rows, width]: each new token's position in its prompt
    pad: torch.Tensor  # [rows]: the columns before each row's first token (its tokens are the last ones)
    hits: list[Hit]  # each row's cached prefix, cut to what the layout reuses
    past: int  # columns of cached prefix before the new tokens
    computed: int  # prompt tokens the forward computes
    reused: int  # prompt tokens taken from the prefix cache

    @classmethod
    def of(cls, prompts: list[list[int]], hits: list[Hit]) -> GroupLayout:
        """The layout of `prompts`, given each one's longest cached prefix (`PrefixCache.lookup`)."""
        full = torch.tensor([len(prompt) for prompt in prompts])
        width = int((full - torch.tensor([count for count, _ in hits])).max())
        hits = [shorten_hit(hit, max(0, int(n) - width)) for hit, n in zip(hits, full, strict=True)]
        held = torch.tensor([count for count, _ in hits])
        lengths = full - held
        past = int(held.max())
        pad = width - lengths  # non-zero only for rows without a cached prefix
        ids = torch.tensor(
            [[0] * int(p) + prompt[int(h) :] for p, h, prompt in zip(pad, held, prompts, strict=True)]
        )
        columns = torch.arange(past + width)[None, :]
        total_pad = past + width - full  # each row's tokens are the last `full` columns
        return cls(
            ids=ids,
            valid=columns >= total_pad[:, None],
            positions=(columns[:, past:] - past - pad[:, None]).clamp(min=0) + held[:, None],
            pad=total_pad,
            hits=hits,
            past=past,
            computed=int(lengths.sum()),
            reused=int(held.sum()),
        )

    def row_kv(self, cache: DynamicCache, row: int) -> LayerKV:
        """Row `row`'s keys and values in the prefilled `cache`, its whole prompt (for the prefix cache)."""
        start = int(self.pad[row])
        return [
            (layer.keys[row : row + 1, :, start:], layer.values[row : row + 1, :, start:])
            for layer in kv_layers(cache)
        ]
