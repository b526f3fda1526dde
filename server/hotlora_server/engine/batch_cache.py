"""The running batch's KV cache: rows join after their own prefill and leave at any step.

Rows have different lengths, so the cache is left-padded: row `i` holds its tokens in the last
`length - pad[i]` positions, and the attention mask hides its first `pad[i]`. Every row writes its next
token at the same column, which keeps a decode step one plain forward over `[rows, 1]` input ids with
per-row positions. Joining pads the shorter side; leaving trims columns that every remaining row pads.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache


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
            self.cache, self.length, self.pad = cache, length, pad.clone()
            return
        width = max(self.length, length)
        for mine, theirs in zip(self.cache.layers, cache.layers, strict=True):
            mine.keys = torch.cat([_pad_left(mine.keys, width - self.length), _pad_left(theirs.keys, width - length)])
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
        self.cache.batch_select_indices(index.to(self.cache.layers[0].keys.device))
        self.pad = self.pad[index]
        trim = int(self.pad.min())
        if trim:
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, trim:], layer.values[:, :, trim:]
            self.pad -= trim
            self.length -= trim

    def step_inputs(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(attention mask `[rows, length + 1]`, position ids `[rows, 1]`) of the next decode step."""
        columns = torch.arange(self.length + 1)
        mask = (columns[None, :] >= self.pad[:, None]).long()
        positions = (self.length - self.pad)[:, None]
        return mask.to(device), positions.to(device)

    def advance(self) -> None:
        """A decode step appended one column."""
        self.length += 1
