"""A 4-bit base's layers through the fixed-order kernel, on CPUs where bitsandbytes has no fast kernel.

bitsandbytes (0.50) runs 4-bit layers on the CPU with a fused kernel only where the CPU has AVX512-BF16;
elsewhere (AVX2-only x86, ARM) every forward dequantizes the whole weight to float32 and multiplies it
with BLAS, which is slow at decode sizes and gives a row other bits at other row counts.
`CpuKernels.gemm_q4` multiplies by the same 4-bit weights, dequantized in registers with bitsandbytes'
own rounding (`code[nibble] * absmax` in float32), in a fixed order: the same quantized base and
adapter semantics, batch-invariant by construction. The weight stays in bitsandbytes' layout, so PEFT,
merging and `state_dict()` see the module they expect.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import cast

import bitsandbytes as bnb
import torch

from ..phase import is_prefilling
from .kernels import CpuKernels, Q4Weight


class FixedOrder4bit:
    """A `Linear4bit` layer's forward through `CpuKernels.gemm_q4` (bitsandbytes' for inputs that need
    gradients, which only training has). The weight is checked once and again only when its data moves."""

    def __init__(self, module: bnb.nn.Linear4bit, kernels: CpuKernels) -> None:
        self.module = module
        self.kernels = kernels
        self.fallback: Callable[[torch.Tensor], torch.Tensor] = module.forward
        self.weight = self._prepare()

    def _prepare(self) -> Q4Weight:
        weight = self.module.weight
        state = weight.quant_state  # type: ignore[attr-defined]  # Params4bit sets it in __new__
        return self.kernels.q4_weight(weight.data, state.absmax, state.code, state.blocksize, state.shape[0])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad and torch.is_grad_enabled():
            return self.fallback(x)
        rows = _rows(x)
        return self._finish(self.kernels.gemm_q4(rows, self._current(), prefill=is_prefilling()), x)

    def _current(self) -> Q4Weight:
        """The prepared weight, prepared again if the module's data moved (packing, unpacking)."""
        param = self.module._parameters["weight"]  # the dict, not `Module.__getattr__`: this runs every call
        if param is None or param.data_ptr() != self.weight.data_ptr:
            self.weight = self._prepare()
        return self.weight

    def _finish(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The kernel's `[rows, out]` as the layer's output for `x`: its shape and dtype, plus the bias."""
        out = out.view(*x.shape[:-1], -1)
        if out.dtype != x.dtype:
            out = out.to(x.dtype)
        bias = self.module._parameters.get("bias")
        return out if bias is None else out + bias.to(x.dtype)


def _rows(x: torch.Tensor) -> torch.Tensor:
    """`x` as the kernels' float32 `[rows, in]` with contiguous rows (no copy in the usual case)."""
    rows = x.reshape(-1, x.shape[-1])
    if rows.dtype != torch.float32 or rows.stride(-1) != 1:
        rows = rows.to(torch.float32).contiguous()
    return rows


def many(layers: Sequence[torch.nn.Module], x: torch.Tensor) -> list[torch.Tensor] | None:
    """The outputs of 4-bit `layers` that all read `x` (a decode step's: a few rows, no gradients), from
    one kernel call with each output's own bits; None where any layer does not run `FixedOrder4bit` or
    the call does not apply (then each layer is called on its own)."""
    forwards = [layer.__dict__.get("forward") for layer in layers]
    if is_prefilling() or not all(isinstance(f, FixedOrder4bit) for f in forwards):
        return None
    if x.requires_grad and torch.is_grad_enabled():
        return None
    fixed = cast(list[FixedOrder4bit], forwards)
    out = fixed[0].kernels.gemm_q4_many(_rows(x), [f._current() for f in fixed])
    return None if out is None else [f._finish(y, x) for f, y in zip(fixed, out, strict=True)]


def takes(module: torch.nn.Module, kernels: CpuKernels) -> bool:
    """Whether `module` is a CPU 4-bit layer `gemm_q4` can run: plain float32 absmax (no double
    quantization), a uint8 weight, and a block size that fits the kernel's vectors."""
    if not isinstance(module, bnb.nn.Linear4bit) or module.weight.device.type != "cpu":
        return False
    state = getattr(module.weight, "quant_state", None)
    return (
        state is not None
        and not state.nested
        and module.weight.dtype == torch.uint8
        and state.absmax.dtype == torch.float32
        and state.code.dtype == torch.float32
        and kernels.q4_fits(module.in_features, state.blocksize)
    )


def install(model: torch.nn.Module, kernels: CpuKernels) -> tuple[int, int]:
    """Give every 4-bit layer of `model` that the kernel `takes` its forward; return (taken, 4-bit layers)."""
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    taken = [m for m in layers if takes(m, kernels)]
    for module in taken:
        module.forward = FixedOrder4bit(module, kernels)  # type: ignore[method-assign]  # replaced on purpose
    return len(taken), len(layers)
