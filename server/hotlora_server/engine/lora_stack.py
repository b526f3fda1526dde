"""Every row's LoRA delta for every resident adapter in two matmuls per layer (Punica/S-LoRA, plain torch).

PEFT's mixed-batch path (`adapter_names`) loops over the adapters of a batch in every layer and routes
rows through hooks it installs at each forward: with 8 adapters in a batch of 16 that loop costs more
than the base model (measured: 59 vs 207 tokens/s). Here each LoRA layer keeps the A matrices of all
stackable resident adapters concatenated along the rank (`A: [R, in]`) and the B matrices, pre-scaled,
likewise (`B: [out, R]`); adapter `k` owns the columns `[start_k, stop_k)`. One forward of a batch is

    delta = ((x @ A.T) * mask) @ B.T

where `mask` keeps each row's own columns (base rows: none). The shapes never depend on which adapters
the batch uses, and the row count is padded to at least `MIN_ROWS`: float32 GEMMs give bit-identical
rows for any row count from there on (below it BLAS switches kernels), so a row's delta is the same alone
or in any batch — which matters because the 4-bit kernel's bf16 rounding amplifies any last-bit change.
PEFT still loads, blends and saves the adapters and stays the reference the tests compare against;
adapters this cannot express exactly (DoRA, LoRA biases, embedding or `modules_to_save` layers) are
served through PEFT's own path.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
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
        mask = stack.mask
        if mask is None or self.a is None or self.b is None:
            return None
        x = args[0].to(self.a.dtype)
        rows = x.shape[0]
        if x.shape[1] == 1 and rows < MIN_ROWS:  # a decode step: pad to row-invariant GEMM sizes
            x = torch.nn.functional.pad(x, (0, 0, 0, 0, 0, MIN_ROWS - rows))
        hidden = torch.nn.functional.linear(x, self.a) * mask[: x.shape[0]]
        return output + torch.nn.functional.linear(hidden, self.b)[:rows].to(output.dtype)


class LoraStack:
    """Stacked LoRA weights of a `PeftModel`'s stackable adapters, applied by forward hooks on its layers."""

    def __init__(self, dtype: torch.dtype) -> None:
        self._dtype = dtype
        self._layers: dict[int, _LayerStack] = {}  # id(LoraLayer) -> its stack
        self._slots: dict[str, tuple[int, int]] = {}  # adapter key -> its columns
        self._stale = True
        self._device = torch.device("cpu")
        self._width = 0  # R: the stacked rank of all slots
        self.mask: torch.Tensor | None = None  # [rows (padded), 1, R], set only inside `rows`

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
        mask = torch.zeros(max(len(keys), MIN_ROWS), 1, self._width, dtype=self._dtype)
        for row, key in enumerate(keys):
            if key != base:
                start, stop = self._slots[key]
                mask[row, 0, start:stop] = 1
        self.mask = mask.to(self._device)
        try:
            yield
        finally:
            self.mask = None

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
