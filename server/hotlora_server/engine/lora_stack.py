"""Every row's LoRA delta for every resident adapter in a few matmuls per layer (Punica/S-LoRA).

PEFT's mixed-batch path (`adapter_names`) loops over the adapters of a batch in every layer and routes rows
through hooks it installs at each forward: with 8 adapters in a batch of 16 that loop costs more than the
base model itself (docs/performance.md, "Design measurements"). Here each LoRA layer keeps the A matrices
of the stackable resident adapters concatenated along the rank and the B matrices, pre-scaled, likewise,
both stored transposed (`A.T: [in, W]`, `B.T: [W, out]`), in blocks of about `BLOCK` columns; adapter `k`
owns the columns `[start_k, stop_k)` of one block. A prefill (many tokens per row, compute-bound) runs each
adapter's own columns over its own rows only; a decode step multiplies each row by its own adapter's
columns. With the device path's row kernels (float32 on a CPU: a row's delta has the same bits alone and
in any batch, by construction) both go through them; elsewhere through torch, a decode step for each block
some row uses as

    delta += ((x @ A.T) * mask) @ B.T

where `mask` keeps each row's own columns (other rows: none, so their delta is an exact zero). The LoRA
cost follows the blocks a batch uses, not everything resident.
PEFT still loads, blends and saves the adapters and stays the reference the tests compare against;
adapters this cannot express exactly (DoRA, LoRA biases, embedding or `modules_to_save` layers) are
served through PEFT's own path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import torch
from peft.tuners.lora import LoraLayer
from peft.utils import ModulesToSaveWrapper

from .device_path import RowKernels

BLOCK = 128  # columns per block: 8 adapters of rank 16 (fewer, larger GEMMs vs skipping unused ones)


@dataclass(frozen=True)
class _Slot:
    """An adapter's columns: `[start, stop)` of block `block`."""

    block: int
    start: int
    stop: int


class _LayerStack:
    """One LoRA layer's stacked weights, updated column by column as the resident adapters change, and its
    forward while the stack routes the batch: the base layer, then the rows' deltas. PEFT's own forward
    then only calls the base layer (its adapters are disabled), so it is skipped: its checks and dispatch,
    on every linear layer at every step, slowed a step of base rows by a quarter once any adapter was
    loaded (docs/performance.md). PEFT's forward runs whenever PEFT routes the batch itself."""

    def __init__(self, layer: LoraLayer, stack: LoraStack) -> None:
        assert isinstance(layer, torch.nn.Module)  # PEFT mixes LoraLayer into its LoRA modules
        self.layer = layer
        self.blocks: list[
            tuple[torch.Tensor, torch.Tensor]
        ] = []  # per block: A.T [in, W], B.T [W, out] scaled
        self._stack = stack
        self._peft_forward = layer.forward
        layer.forward = self.forward  # replaced on purpose, as the CPU path replaces base layers' forwards

    def detach(self) -> None:
        """Give the layer PEFT's forward back and let go of the stacked copies."""
        if self.layer.__dict__.get("forward") == self.forward:
            del self.layer.forward
        self.blocks = []

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if not self._stack.routing or args or kwargs:
            return self._peft_forward(x, *args, **kwargs)
        return self.add_deltas(x, self.layer.base_layer(x))

    def fit(self, widths: list[int], dtype: torch.dtype) -> bool:
        """Give the blocks these widths: new blocks are zero, a grown block keeps its columns. True if this
        layer had no blocks (every adapter's columns are to be written)."""
        fresh = not self.blocks
        base = self.layer.get_base_layer()
        assert isinstance(base, torch.nn.Linear)  # the stack serves LoRA layers `_over_linear` only
        device = next(p.device for p in self.layer.parameters())
        for index, width in enumerate(widths):
            if index < len(self.blocks) and self.blocks[index][0].shape[1] == width:
                continue
            a = torch.zeros(base.in_features, width, dtype=dtype, device=device)
            b = torch.zeros(width, base.out_features, dtype=dtype, device=device)
            if index == len(self.blocks):
                self.blocks.append((a, b))
            else:
                old_a, old_b = self.blocks[index]
                a[:, : old_a.shape[1]], b[: old_b.shape[0]] = old_a, old_b
                self.blocks[index] = (a, b)
        return fresh

    def write(self, key: str, slot: _Slot, dtype: torch.dtype) -> None:
        """Put adapter `key`'s A and B (scaled) into its columns, if it targets this layer."""
        if key not in self.layer.lora_A:
            return  # the adapter does not target this layer: its columns stay zero
        a_block, b_block = self.blocks[slot.block]
        a, b = _factors(self.layer, key)
        b = b * self.layer.scaling[key]
        a_block[:, slot.start : slot.start + a.shape[0]] = a.T.to(dtype)
        b_block[slot.start : slot.start + a.shape[0]] = b.T.to(dtype)

    def release(self, gone: list[_Slot], blocks: int) -> None:
        """Drop the blocks past the first `blocks` (given back), and zero the columns of adapters that left
        in the others, so that they are free for another."""
        del self.blocks[blocks:]
        for slot in gone:
            if slot.block < len(self.blocks):
                a_block, b_block = self.blocks[slot.block]
                a_block[:, slot.start : slot.stop] = 0
                b_block[slot.start : slot.stop] = 0

    def add_deltas(self, x: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        """`output` (the base layer's, for `x`) plus each routed row's delta; itself when none is routed."""
        stack = self._stack
        route = stack.route
        if route is None or not self.blocks:
            return output
        output = output.contiguous()  # the deltas are added through views of it
        kernels = stack.kernels
        if route.step is not None:  # a decode step: [rows, 1, features]
            x = x.to(stack.dtype).contiguous()  # no copy in the usual case
            for block, plan in route.step:
                a, b = self.blocks[block]
                if kernels is None:
                    output[:, 0] += (((x[:, 0] @ a) * plan) @ b).to(output.dtype)
                elif output.dtype == torch.float32:
                    kernels.lora_decode(output, x, a, b, plan)
                else:  # a base layer with other outputs: the delta in float32, rounded once
                    delta = torch.zeros(output.shape, dtype=torch.float32)
                    kernels.lora_decode(delta, x, a, b, plan)
                    output += delta.to(output.dtype)
            return output
        for slot, start, stop in route.runs:  # a prefill: each adapter's own columns for its rows only
            a, b = self.blocks[slot.block]
            a, b = a[:, slot.start : slot.stop], b[slot.start : slot.stop]
            flat = x[start:stop].reshape(-1, x.shape[-1]).to(stack.dtype)
            out = output[start:stop].view(flat.shape[0], -1)
            if kernels is None:
                out += ((flat @ a) @ b).to(out.dtype)
                continue
            hidden = torch.empty(flat.shape[0], a.shape[1], dtype=torch.float32)
            kernels.gemm_nn(flat, a, hidden, accumulate=False)
            if out.dtype == torch.float32:
                kernels.gemm_nn(hidden, b, out, accumulate=True)
            else:  # the delta in float32, rounded once
                delta = torch.empty(out.shape, dtype=torch.float32)
                kernels.gemm_nn(hidden, b, delta, accumulate=False)
                out += delta.to(out.dtype)
        return output


@dataclass
class _Route:
    """Which rows get which adapter during one forward."""

    step: list[tuple[int, torch.Tensor]] | None  # a decode step: per block used, the kernel's items or the
    # torch path's [rows, W] mask (1 on each row's own columns); None: a prefill
    runs: list[
        tuple[_Slot, int, int]
    ]  # (columns, first row, end row) per run of rows of one adapter (prefill)


class LoraStack:
    """Stacked LoRA weights of a `PeftModel`'s stackable adapters, applied by its layers' forwards.

    Adapters fill blocks in load order, each block holding one `group(key)` only: a batch's cost follows
    the blocks its adapters span, so adapters likely to be served together belong in the same blocks.
    When adapters come and go only their own columns are written or zeroed (an adapter takes the first
    free columns of its group's blocks), so a load costs what that adapter weighs, not all that is resident.
    """

    def __init__(
        self,
        dtype: torch.dtype,
        group: Callable[[str], int] = lambda key: 0,
        kernels: RowKernels | None = None,
    ) -> None:
        self.dtype = dtype
        self.kernels = kernels if dtype == torch.float32 else None  # they read float32 through raw pointers
        self._group = group
        self._layers: dict[int, _LayerStack] = {}  # id(LoraLayer) -> its stack
        self._slots: dict[str, _Slot] = {}  # adapter key -> its columns
        self._widths: list[int] = []  # columns of each block
        self._groups: list[int] = []  # the group each block holds
        self._stale = True
        self._device = torch.device("cpu")
        # inside `rows`: (the route, None if no row has an adapter); the stack applies the deltas and PEFT's
        # layers pass the base. Per context: a sliced prefill's forward and a decode step take turns
        self._rows: ContextVar[tuple[_Route | None] | None] = ContextVar(
            f"hotlora_rows_{id(self)}", default=None
        )

    @property
    def routing(self) -> bool:
        """Whether the forward running here is routed by the stack (inside `rows`)."""
        return self._rows.get() is not None

    @property
    def route(self) -> _Route | None:
        """The routed forward's rows, or None: no row has an adapter, or not inside `rows`."""
        rows = self._rows.get()
        return None if rows is None else rows[0]

    def invalidate(self) -> None:
        """Adapters were loaded: update the stacks before the next forward that needs them."""
        self._stale = True

    def covers(self, model: Any, keys: set[str]) -> bool:
        """Whether every key in `keys` is stackable (updating the stacks first if adapters changed)."""
        if self._stale:
            self.update(model)
        return keys <= self._slots.keys()

    @contextmanager
    def rows(self, keys: list[str], base: str, decode: bool) -> Iterator[None]:
        """One forward pass in which row `i` gets adapter `keys[i]`'s delta (`base`: none); needs `covers`.

        `decode`: one token per row (else a prefill). A prefill runs once per run of consecutive rows with
        one adapter, on a slice of the batch: callers keep an adapter's rows together (any order is right,
        only slower).
        """
        route = None
        if not all(key == base for key in keys):
            slots = [None if key == base else self._slots[key] for key in keys]
            route = _Route(self._step(slots), []) if decode else _Route(None, _runs(slots))
        token = self._rows.set((route,))
        try:
            yield
        finally:
            self._rows.reset(token)

    def _step(self, slots: list[_Slot | None]) -> list[tuple[int, torch.Tensor]]:
        """Per block some row uses, what a decode step's deltas need for it (kernel items or torch mask)."""
        step = []
        for block in sorted({slot.block for slot in slots if slot is not None}):
            columns = [(s.start, s.stop) if s is not None and s.block == block else (0, 0) for s in slots]
            if self.kernels is not None:
                step.append((block, self.kernels.lora_items(columns)))
                continue
            mask = torch.zeros(len(slots), self._widths[block], dtype=self.dtype)
            for row, (start, stop) in enumerate(columns):
                mask[row, start:stop] = 1
            step.append((block, mask.to(self._device)))
        return step

    @torch.inference_mode()  # blocks made in inference mode (a forward) may only be written in it
    def update(self, model: Any) -> None:
        """Follow the model's adapters: zero and free the columns of those gone, place the new ones.

        Called at once when an adapter is deleted (not only before the next forward), so that nothing of it
        outlives it: its columns, and the stacks and forwards of the LoRA layers PEFT discarded with it."""
        modules = list(model.modules())
        layers = [m for m in modules if isinstance(m, LoraLayer)]
        present = {k for layer in layers for k in layer.lora_A}
        unstackable = _unstackable(modules, layers)
        keys = sorted(getattr(model, "peft_config", {}), key=self._group)  # none once PEFT unwrapped the base
        wanted = [k for k in keys if k in present and k not in unstackable]
        gone = [self._slots.pop(key) for key in [k for k in self._slots if k not in wanted]]
        stacks = {id(layer): self._stack_of(layer) for layer in layers if _over_linear(layer)}
        for old in self._layers.values():
            if stacks.get(id(old.layer)) is not old:
                old.detach()  # a layer PEFT removed
        self._layers = stacks
        while self._widths and not any(slot.block == len(self._widths) - 1 for slot in self._slots.values()):
            self._widths.pop()  # empty blocks at the end are given back
            self._groups.pop()
        for stack in stacks.values():  # before new adapters are placed: a block given back may be made again
            stack.release(gone, len(self._widths))
        new = [key for key in wanted if key not in self._slots]
        for key in new:
            rank = max(_factors(layer, key)[0].shape[0] for layer in layers if key in layer.lora_A)
            self._slots[key] = self._place(self._group(key), rank)
        for stack in stacks.values():
            for key in self._slots if stack.fit(self._widths, self.dtype) else new:
                stack.write(key, self._slots[key], self.dtype)
        self._device = next(model.parameters()).device
        self._stale = False

    def _stack_of(self, layer: LoraLayer) -> _LayerStack:
        """The stack of `layer`, made (taking over its forward) the first time it is seen."""
        stack = self._layers.get(id(layer))
        return stack if stack is not None and stack.layer is layer else _LayerStack(layer, self)

    def _place(self, group: int, rank: int) -> _Slot:
        """Columns for a new adapter: free ones in a block of its group, else the end of its group's last
        block while that stays within `BLOCK` columns, else a new block."""
        blocks = [block for block, owner in enumerate(self._groups) if owner == group]
        for block in blocks:
            taken = sorted((s.start, s.stop) for s in self._slots.values() if s.block == block)
            start = _free_columns(taken, self._widths[block], rank)
            if start is not None:
                return _Slot(block, start, start + rank)
        if blocks and self._widths[blocks[-1]] + rank <= max(BLOCK, rank):
            block = blocks[-1]
        else:
            block = len(self._widths)
            self._widths.append(0)
            self._groups.append(group)
        start = self._widths[block]
        self._widths[block] += rank
        return _Slot(block, start, start + rank)


def base_and_deltas(
    module: torch.nn.Module,
) -> tuple[torch.nn.Module, Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None] | None:
    """How `module`'s output for an input `x` is formed: its base layer's output, then for a LoRA layer
    the stack's deltas added (`add(x, output)`) while the stack routes the batch. None where PEFT's own
    forward forms it (the module must then be called). Lets a caller compute several base outputs at
    once (`DevicePath.products`) and still apply every row's adapter."""
    if not isinstance(module, LoraLayer):
        return module, None
    forward = module.__dict__.get("forward")
    stack = getattr(forward, "__self__", None)
    if not isinstance(stack, _LayerStack) or not stack._stack.routing:
        return None
    return module.base_layer, stack.add_deltas  # what the stack's forward calls


def _free_columns(taken: list[tuple[int, int]], width: int, rank: int) -> int | None:
    """The first of `rank` free columns among `width`, around the sorted `taken` ranges; None if none."""
    start = 0
    for begin, end in [*taken, (width, width)]:
        if begin - start >= rank:
            return start
        start = max(start, end)
    return None


def _runs(slots: list[_Slot | None]) -> list[tuple[_Slot, int, int]]:
    """(columns, first row, end row) per run of consecutive rows with one adapter."""
    runs: list[tuple[_Slot, int, int]] = []
    for row, slot in enumerate(slots):
        if slot is None:
            continue
        if runs and runs[-1][0] == slot and runs[-1][2] == row:
            runs[-1] = (slot, runs[-1][1], row + 1)
        else:
            runs.append((slot, row, row + 1))
    return runs


def _factors(layer: LoraLayer, key: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Adapter `key`'s A `[r, in]` and B `[out, r]` in `layer`: linear, as every stacked adapter's are."""
    a, b = layer.lora_A[key], layer.lora_B[key]
    assert isinstance(a, torch.nn.Linear) and isinstance(b, torch.nn.Linear)
    return a.weight, b.weight


def _over_linear(layer: LoraLayer) -> bool:
    """A LoRA layer over a linear base (the only kind the stack serves)."""
    return isinstance(layer.get_base_layer(), torch.nn.Linear)


def _unstackable(modules: list[torch.nn.Module], layers: list[LoraLayer]) -> set[str]:
    """Adapter keys whose delta is not plain `B @ A * scaling` on linear layers."""
    keys: set[str] = set()
    for layer in layers:
        keys.update(layer.lora_embedding_A)
        keys.update(layer.lora_variant)  # DoRA and other variants
        keys.update(k for k in layer.lora_A if layer.lora_B[k].bias is not None)
        if not _over_linear(layer):
            keys.update(layer.lora_A)
    for module in modules:
        if isinstance(module, ModulesToSaveWrapper):
            keys.update(module.modules_to_save)
    return keys
