"""Automatic prefix caching: the KV of prompt prefixes already computed, reused by later prompts.

Chat prompts start alike (the system turn, often more), so a burst of requests repeats most of its
prefill work. As in vLLM, prompts are cut into blocks of `BLOCK` tokens and a block is found by the
adapter that computed it and every token up to its end; a prompt reuses its longest run of cached blocks
(never its last token, whose logits the prefill must produce) and adds the blocks it computed itself.
Entries are least recently used first out, within `capacity` bytes. Prompts longer than the prefill
budget (prefilled alone, in chunks) neither use nor fill it, and nothing does while an adapter is merged
into the base weights (the base computes something else then).

Batch invariance holds: every product of a prefill is row-invariant and attention runs in the kernels' fixed order, so a
prefix's keys and values are the same bits computed alone, within a longer prompt or within a batch —
the prompt gets the same KV from the cache as it would compute.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from transformers import DynamicCache

BLOCK = 16  # tokens per cached block (vLLM's default block size)
CAPACITY = 64 * 2**20  # bytes; SmolLM2-135M: about 90 blocks of 16 tokens

LayerKV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values `[1, kv_heads, tokens, dim]`


class PrefixCache:
    """Cached KV blocks keyed by (adapter key, the prompt's tokens up to the block's end)."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        self.capacity = capacity  # bytes
        self.size = 0
        self._blocks: OrderedDict[tuple[str, tuple[int, ...]], LayerKV] = OrderedDict()

    def lookup(self, key: str, ids: list[int]) -> tuple[int, LayerKV | None]:
        """(cached prefix length, its per-layer KV concatenated) for the longest cached run of `ids`'s blocks."""
        found: list[LayerKV] = []
        for end in range(BLOCK, len(ids), BLOCK):  # `end < len(ids)`: the last token always runs
            name = (key, tuple(ids[:end]))
            block = self._blocks.get(name)
            if block is None:
                break
            self._blocks.move_to_end(name)
            found.append(block)
        if not found:
            return 0, None
        layers = [
            (torch.cat([b[i][0] for b in found], dim=2), torch.cat([b[i][1] for b in found], dim=2))
            for i in range(len(found[0]))
        ]
        return BLOCK * len(found), layers

    def cached(self, key: str, ids: list[int]) -> int:
        """How many leading tokens of `ids` `lookup` would return now; changes nothing (the LRU order neither)."""
        end = BLOCK
        while end < len(ids) and (key, tuple(ids[:end])) in self._blocks:
            end += BLOCK
        return end - BLOCK

    def discard(self, key: str) -> None:
        """Drop every block computed by adapter `key`: it was unloaded, and its key is never used again."""
        for name in [name for name in self._blocks if name[0] == key]:
            self.size -= _nbytes(self._blocks.pop(name))

    def store(self, key: str, ids: list[int], layers: LayerKV) -> None:
        """Keep the blocks of `ids` not cached yet; `layers` holds its KV, `[1, kv_heads, len(ids), dim]`."""
        for end in range(BLOCK, len(ids), BLOCK):
            name = (key, tuple(ids[:end]))
            if name in self._blocks:
                continue
            block = [
                (k[:, :, end - BLOCK : end].clone(), v[:, :, end - BLOCK : end].clone()) for k, v in layers
            ]
            self._blocks[name] = block
            self.size += _nbytes(block)
        while self.size > self.capacity and self._blocks:
            _, evicted = self._blocks.popitem(last=False)
            self.size -= _nbytes(evicted)


def _nbytes(block: LayerKV) -> int:
    return sum(k.nbytes + v.nbytes for k, v in block)


def fill_past(
    cache: DynamicCache, hits: list[tuple[int, LayerKV | None]], past: int, device: torch.device
) -> None:
    """Put every row's cached prefix KV, left-padded to `past` columns, into the empty `cache`."""
    sample = next(layers for _, layers in hits if layers is not None)
    for index, (keys, values) in enumerate(sample):
        shape = (len(hits), keys.shape[1], past, keys.shape[3])
        k = torch.zeros(shape, dtype=keys.dtype, device=device)
        v = torch.zeros(shape, dtype=values.dtype, device=device)
        for row, (count, layers) in enumerate(hits):
            if layers is not None:
                k[row, :, past - count :] = layers[index][0][0]
                v[row, :, past - count :] = layers[index][1][0]
        cache.update(k, v, index)


def shorten_hit(hit: tuple[int, LayerKV | None], at_most: int) -> tuple[int, LayerKV | None]:
    """A prefix-cache hit cut to its first `at_most` tokens."""
    count, layers = hit
    if layers is None or count <= at_most:
        return hit
    if at_most == 0:
        return 0, None
    return at_most, [(k[:, :, :at_most], v[:, :, :at_most]) for k, v in layers]
