"""What the generic core asks of the device path chosen at load (`loader`), and the plain path.

A device path may swap layer forwards, supply row kernels and keep weights in a layout of its own; the
core reaches all of that only through a `DevicePath`, so it imports no device's modules and a new device
is one module implementing this. The plain path (CUDA, or no kernels) runs torch's own ops and leaves
the weights in the library's layout, so its hooks do nothing.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import torch


class RowKernels(Protocol):
    """Products that give a row the same bits whatever else shares its batch (the LoRA stack's deltas
    and the batch-invariant attention)."""

    def lora_items(self, columns: list[tuple[int, int]]) -> torch.Tensor:
        """`lora_decode`'s items for rows whose adapter columns are `columns[row]` (`(0, 0)`: none)."""
        ...

    def lora_decode(
        self, out: torch.Tensor, x: torch.Tensor, a_t: torch.Tensor, b_t: torch.Tensor, items: torch.Tensor
    ) -> None:
        """`out[row] += (x[row] @ a_t[:, start:stop]) @ b_t[start:stop]` for each item's rows."""
        ...

    def gemm_nn(self, x: torch.Tensor, w: torch.Tensor, out: torch.Tensor, accumulate: bool) -> None:
        """`out = x @ w` (`accumulate`: `out += x @ w`)."""
        ...

    def rotary(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """`x * cos + rotate_half(x) * sin` with the bits of torch's operations: `x` `[rows, heads,
        positions, dim]`, `cos` and `sin` `[rows, positions, dim]`."""
        ...

    def attention(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        mask: torch.Tensor | None,
        scale: float,
        softcap: float | None = None,
    ) -> torch.Tensor:
        """Attention in transformers' layout: `[rows, heads, q, dim]` in, `[rows, q, heads, dim]` out."""
        ...


@dataclass(frozen=True)
class DevicePath:
    """The forward path chosen at load: its row kernels (None: torch's own ops), how the base's layers
    multiply (`kernel`, as /v1/models shows it) and whether it can keep outputs batch-invariant."""

    kernels: RowKernels | None = None
    kernel: str = ""
    batch_invariant: bool = False

    @contextmanager
    def weights_held(self, model: torch.nn.Module) -> Iterator[None]:
        """Hold `model`'s weights as stored while PEFT reads its `state_dict()` (loading, blending or
        saving an adapter): PEFT reads only adapter entries, so a device layout need not be undone."""
        yield

    def to_standard_layout(self, model: torch.nn.Module) -> None:
        """Return `model`'s weights to the quantization library's standard layout (before dequantizing)."""

    def products(self, layers: Sequence[torch.nn.Module], x: torch.Tensor) -> list[torch.Tensor] | None:
        """The outputs of base `layers` that all read `x` (a layer's q, k and v; gate and up), from one call
        where the path has one, each with the bits its own call gives; None: call each layer."""
        return None

    @contextmanager
    def decode_step(self, rows: int) -> Iterator[None]:
        """Run one decode step of `rows` rows: a path may choose the host threads it runs on here."""
        yield

    @property
    def decode_threads(self) -> int:
        """Host threads a decode step runs on now (0: the path leaves them to torch)."""
        return 0


PLAIN = DevicePath()  # torch's own ops on weights in the library's layout: stand-ins, an unquantized base
