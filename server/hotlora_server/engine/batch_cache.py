"""The running batch's KV cache: rows join after their own prefill and leave at any step.

Rows have different lengths, so the cache is left-padded: row `i` holds its tokens in the last
`length - pad[i]` positions, and the attention mask hides its first `pad[i]`. Every row writes its next
token at the same column, which keeps a decode step one plain forward over `[rows, 1]` input ids with
per-row positions. Joining pads the shorter side; leaving trims columns that every remaining row pads.
A decode step writes its column in place into room kept after the cache (`_GrowingLayer`), instead of
`DynamicLayer`'s `torch.cat` of the whole cache in every layer at every step.
"""

from __future__ import annotations

from typing import Protocol, cast

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

ROOM = 64  # columns of room added whenever a layer's buffer is full or was replaced


class KVLayer(Protocol):
    """A prefilled cache layer: its keys and values, `[rows, kv_heads, columns, head_dim]`."""

    keys: torch.Tensor
    values: torch.Tensor


def kv_layers(cache: DynamicCache) -> list[KVLayer]:
    """The layers of a cache that a prefill has filled (transformers types a layer's keys and values as
    optional, since a layer fills at its first update, and its layers as any kind of cache layer)."""
    return cast(list[KVLayer], cache.layers)


def new_cache() -> DynamicCache:
    """A cache of full layers for one prefill. Sliding-window layers keep every column too (their attention
    mask still limits what a query sees), so rows join, leave and move columns in every layer alike; the
    price is memory beyond the window on prompts longer than it."""
    return DynamicCache()


class _GrowingLayer(DynamicLayer):
    """A `DynamicLayer` whose keys and values are views into buffers with room for more columns.

    Anything may still assign `keys`/`values` (joining rows, leaving rows, trimming): the next update
    sees that they are no longer views of its buffers and copies them into new ones, once.
    """

    def __init__(self, layer: DynamicLayer) -> None:
        super().__init__()
        self.keys, self.values, self.is_initialized = layer.keys, layer.values, layer.is_initialized
        if layer.is_initialized:
            self.device = layer.device
        self._buffers: tuple[torch.Tensor, torch.Tensor] | None = None

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: object, **kwargs: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        length, new = self.get_seq_length(), key_states.shape[-2]
        buffers = self._room(length + new)
        if buffers is None:
            buffers = self._buffers = (
                _with_room(self.keys, key_states, length + new + ROOM),
                _with_room(self.values, value_states, length + new + ROOM),
            )
        keys, values = buffers
        keys[:, :, length : length + new] = key_states
        values[:, :, length : length + new] = value_states
        self.keys, self.values = keys[:, :, : length + new], values[:, :, : length + new]
        return self.keys, self.values

    def _room(self, columns: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The buffers while `keys`/`values` are still their start and they have `columns` columns, else None."""
        buffers = self._buffers
        if buffers is None or self.keys is None or self.values is None or self.keys.dim() != 4:
            return None
        held = all(
            mine.data_ptr() == buffer.data_ptr()
            and mine.shape[:2] == buffer.shape[:2]
            and buffer.shape[2] >= columns
            for mine, buffer in zip((self.keys, self.values), buffers, strict=True)
        )
        return buffers if held else None


def _with_room(tensor: torch.Tensor | None, like: torch.Tensor, columns: int) -> torch.Tensor:
    """A buffer of `columns` columns, rows and heads as `like`'s, that starts with `tensor`'s columns (if any)."""
    buffer = like.new_empty(*like.shape[:2], columns, like.shape[3])
    if tensor is not None and tensor.numel():
        buffer[:, :, : tensor.shape[2]] = tensor
    return buffer


def _pad_left(tensor: torch.Tensor, columns: int) -> torch.Tensor:
    """Add `columns` zero positions before the sequence dimension (-2) of a `[rows, heads, seq, dim]` tensor."""
    return torch.nn.functional.pad(tensor, (0, 0, columns, 0)) if columns else tensor


class BatchCache:
    """A left-padded `DynamicCache` with the bookkeeping for rows joining and leaving."""

    def __init__(self) -> None:
        self._clear()

    def _clear(self) -> None:
        self.cache: DynamicCache | None = None
        self.pad = torch.zeros(0, dtype=torch.long)  # left padding of each row
        self.length = 0  # columns in the cache

    @property
    def rows(self) -> int:
        return int(self.pad.shape[0])

    def join(self, cache: DynamicCache, pad: torch.Tensor) -> None:
        """Append the rows of a freshly prefilled, left-padded `cache` (row `i` padded by `pad[i]`)."""
        length = cache.get_seq_length()
        if self.cache is None:
            cache.layers = [
                _GrowingLayer(layer) if type(layer) is DynamicLayer else layer for layer in cache.layers
            ]
            self.cache, self.length, self.pad = cache, length, pad.clone()
            return
        width = max(self.length, length)
        for mine, theirs in zip(kv_layers(self.cache), kv_layers(cache), strict=True):
            mine.keys = torch.cat(
                [_pad_left(mine.keys, width - self.length), _pad_left(theirs.keys, width - length)]
            )
            mine.values = torch.cat(
                [_pad_left(mine.values, width - self.length), _pad_left(theirs.values, width - length)]
            )
        self.pad = torch.cat([self.pad + (width - self.length), pad + (width - length)])
        self.length = width

    def keep(self, rows: list[int]) -> None:
        """Keep only `rows` (indices into the current rows, in order); drop columns no row needs."""
        if not rows:
            self._clear()
            return
        assert self.cache is not None
        index = torch.tensor(rows, dtype=torch.long)
        self.cache.batch_select_indices(index.to(kv_layers(self.cache)[0].keys.device))
        self.pad = self.pad[index]
        trim = int(self.pad.min())
        if trim:
            for layer in kv_layers(self.cache):
                layer.keys, layer.values = layer.keys[:, :, trim:], layer.values[:, :, trim:]
            self.pad -= trim
            self.length -= trim

    def nbytes(self) -> int:
        """Bytes the cache holds now: its keys and values with the room kept for decode steps (and, until
        the next step, buffers a join or a trim has just replaced)."""
        if self.cache is None:
            return 0
        storages: dict[int, int] = {}
        for layer in kv_layers(self.cache):
            for tensor in (layer.keys, layer.values, *(getattr(layer, "_buffers", None) or ())):
                storage = tensor.untyped_storage()
                storages[storage.data_ptr()] = storage.nbytes()
        return sum(storages.values())

    def step_inputs(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(attention mask `[rows, length + 1]`, position ids `[rows, 1]`) of the next decode step."""
        columns = torch.arange(self.length + 1)
        mask = (columns[None, :] >= self.pad[:, None]).long()
        positions = (self.length - self.pad)[:, None]
        return mask.to(device), positions.to(device)

    def advance(self) -> None:
        """A decode step appended one column."""
        self.length += 1
