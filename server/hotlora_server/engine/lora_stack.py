"""Every row's LoRA delta for every resident adapter in two matmuls per layer (Punica/S-LoRA, plain torch).

PEFT's mixed-batch path (`adapter_names`) loops over the adapters of a batch in every layer and routes
rows through hooks it installs at each forward: with 8 adapters in a batch of 16 that loop costs more
than the base model (measured: 59 vs 207 tokens/s). Here each LoRA layer keeps the A matrices of all
stackable resident adapters concatenated along the rank (`A: [R, in]`) and the B matrices, pre-scaled,
likewise (`B: [out, R]`); adapter `k` owns the columns `[start_k, stop_k)`. One forward of a batch is

    delta = ((x @ A.T) * mask) @ B.T

where `mask` keeps each row's own columns (base rows: none): one decode step, whatever the mix. A prefill
(many tokens per row, compute-bound) instead runs each adapter's own columns over its own rows only. The
shapes never depend on what else is in the batch, and the row count is padded to at least `MIN_ROWS`:
float32 GEMMs give bit-identical rows for any row count from there on (below it BLAS switches kernels),
so a row's delta is the same alone or in any batch — which matters because the 4-bit kernel's bf16
rounding amplifies any last-bit change.
PEFT still loads, blends and saves the adapters and stays the reference the tests compare against;
adapters this cannot express exactly (DoRA, LoRA biases, embedding or `modules_to_save` layers) are
served through PEFT's own path.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from peft.tuners.lora import LoraLayer
from peft.utils import ModulesToSaveWrapper


MIN_ROWS = 16  # where this CPU's BLAS stops switching float32 GEMM kernels by row count (measured)


class _LayerStack:
    """One LoRA layer's stacked weights, rebuilt when the resident adapters change."""

    def __init__(self, layer: LoraLayer) -> None:
        self.layer = layer
        self.a: torch.Tensor | None = None  # [R, in]
        self.b: torch.Tensor | None = None  # [out, R], scaling folded in

    def rebuild(self, slots: dict[str, tuple[int, int]], total: int, dtype: torch.dtype) -> None:
        base = self.layer.get_base_layer()
        device = next(p.device for p in self.layer.parameters())
        self.a = torch.zeros(total, base.in_features, dtype=dtype, device=device)
        self.b = torch.zeros(base.out_features, total, dtype=dtype, device=device)
        for key, (start, _) in slots.items():
            if key not in self.layer.lora_A:
                continue  # the adapter does not target this layer: its columns stay zero
            a = self.layer.lora_A[key].weight
            b = self.layer.lora_B[key].weight * self.layer.scaling[key]
            self.a[start : start + a.shape[0]] = a.to(dtype)
            self.b[:, start : start + a.shape[0]] = b.to(dtype)

    def hook(self, stack: LoraStack, _module: torch.nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> Any:
        route = stack.route
        if route is None or self.a is None or self.b is None:
            return None
        x = args[0]
        if x.shape[1] == 1:  # a decode step: all slots at once, each row masked to its own
            delta = _rows_invariant(x[:, 0].to(self.a.dtype), self.a, self.b, route.mask)
            return output + delta[:, None].to(output.dtype)
        for start, stop, index in route.groups:  # a prefill: each adapter's own columns for its rows only
            rows = x.index_select(0, index)
            flat = rows.reshape(-1, rows.shape[-1]).to(self.a.dtype)
            delta = _rows_invariant(flat, self.a[start:stop], self.b[:, start:stop])
            output = output.index_add(0, index, delta.view(*rows.shape[:2], -1).to(output.dtype))
        return output


def _rows_invariant(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """`((x @ a.T) * mask) @ b.T` for `[rows, in]` x, with rows padded to `MIN_ROWS` so that no row's
    result depends on how many rows there are."""
    count = x.shape[0]
    if count < MIN_ROWS:
        x = torch.nn.functional.pad(x, (0, 0, 0, MIN_ROWS - count))
        mask = None if mask is None else torch.nn.functional.pad(mask, (0, 0, 0, MIN_ROWS - count))
    hidden = torch.nn.functional.linear(x, a)
    if mask is not None:
        hidden = hidden * mask
    return torch.nn.functional.linear(hidden, b)[:count]


@dataclass
class _Route:
    """Which rows get which adapter during one forward."""

    mask: torch.Tensor  # [rows, R]: 1 on each row's own columns (decode)
    groups: list[tuple[int, int, torch.Tensor]]  # (start, stop, row indices) per adapter (prefill)


class LoraStack:
    """Stacked LoRA weights of a `PeftModel`'s stackable adapters, applied by forward hooks on its layers."""

    def __init__(self, dtype: torch.dtype) -> None:
        self._dtype = dtype
        self._layers: dict[int, _LayerStack] = {}  # id(LoraLayer) -> its stack
        self._slots: dict[str, tuple[int, int]] = {}  # adapter key -> its columns
        self._stale = True
        self._device = torch.device("cpu")
        self._width = 0  # R: the stacked rank of all slots
        self.route: _Route | None = None  # set only inside `rows`

    def invalidate(self) -> None:
        """Adapters were loaded or deleted: rebuild the stacks before the next forward that needs them."""
        self._stale = True

    def covers(self, model: Any, keys: set[str]) -> bool:
        """Whether every key in `keys` is stackable (rebuilding the stacks first if adapters changed)."""
        if self._stale:
            self._rebuild(model)
        return keys <= self._slots.keys()

    @contextmanager
    def rows(self, keys: list[str], base: str) -> Iterator[None]:
        """One forward pass in which row `i` gets adapter `keys[i]`'s delta (`base`: none); needs `covers`."""
        if all(key == base for key in keys):
            yield
            return
        mask = torch.zeros(len(keys), self._width, dtype=self._dtype)
        rows_of: dict[str, list[int]] = {}
        for row, key in enumerate(keys):
            if key != base:
                start, stop = self._slots[key]
                mask[row, start:stop] = 1
                rows_of.setdefault(key, []).append(row)
        groups = [(*self._slots[key], torch.tensor(rows, device=self._device)) for key, rows in rows_of.items()]
        self.route = _Route(mask.to(self._device), groups)
        try:
            yield
        finally:
            self.route = None

    @torch.no_grad()
    def _rebuild(self, model: Any) -> None:
        layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
        keys = sorted({k for layer in layers for k in layer.lora_A} | {k for layer in layers for k in layer.lora_embedding_A})
        unstackable = _unstackable(model, layers)
        offset = 0
        self._slots = {}
        for key in keys:
            if key in unstackable:
                continue
            rank = max(layer.lora_A[key].weight.shape[0] for layer in layers if key in layer.lora_A)
            self._slots[key] = (offset, offset + rank)
            offset += rank
        for layer in layers:
            if id(layer) not in self._layers and _over_linear(layer):
                stack = _LayerStack(layer)
                layer.register_forward_hook(lambda m, a, o, s=stack: s.hook(self, m, a, o))
                self._layers[id(layer)] = stack
        for stack in self._layers.values():
            stack.rebuild(self._slots, offset, self._dtype)
        self._width = offset
        self._device = next(model.parameters()).device
        self._stale = False


def _over_linear(layer: LoraLayer) -> bool:
    """A LoRA layer over a linear base (the only kind the stack serves)."""
    return isinstance(layer.get_base_layer(), torch.nn.Linear)


def _unstackable(model: Any, layers: list[LoraLayer]) -> set[str]:
    """Adapter keys whose delta is not plain `B @ A * scaling` on linear layers."""
    keys: set[str] = set()
    for layer in layers:
        keys.update(layer.lora_embedding_A)
        keys.update(layer.lora_variant)  # DoRA and other variants
        keys.update(k for k in layer.lora_A if layer.lora_B[k].bias is not None)
        if not _over_linear(layer):
            keys.update(layer.lora_A)
    for module in model.modules():
        if isinstance(module, ModulesToSaveWrapper):
            keys.update(module.modules_to_save)
    return keys
