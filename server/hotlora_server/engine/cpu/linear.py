"""float32 linear layers through the fixed-order kernel: a row's output has the same bits at any row
count, so a token does not depend on how many rows share its step.

BLAS's `x @ W.T` picks other kernels for other row counts, and where it switches differs between CPUs
(a trick that kept the output layer's bits on an AVX-512 CPU failed on an AVX2 one). `CpuKernels.gemm_nt`
reads the `[out, in]` weight as it is, so SmolLM2's output layer stays tied to its input embedding
without a copy.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, TypeGuard

import torch

from .kernels import CpuKernels, Q8Weight


class FixedOrderLinear:
    """A float32 `Linear` layer's forward through `CpuKernels.gemm_nt` (torch's for inputs that need
    gradients, which only training has)."""

    def __init__(self, module: torch.nn.Linear, kernels: CpuKernels, compact: Q8Weight | None = None) -> None:
        self.module = module
        self.kernels = kernels
        self.compact = compact  # the weight as int8 times scales, exactly: the same bits from fewer bytes

    def __deepcopy__(self, memo: dict[int, Any]) -> Callable[[torch.Tensor], torch.Tensor]:
        """A copy of the layer gets the plain forward: PEFT copies the output layer for an adapter that
        saves its own (`modules_to_save`) and loads that adapter's weight into the copy."""
        module = copy.deepcopy(self.module, memo)
        return type(module).forward.__get__(module)

    def __call__(self, input: torch.Tensor) -> torch.Tensor:  # `input`: it stands in for Linear.forward
        if input.requires_grad and torch.is_grad_enabled():
            return torch.nn.functional.linear(input, self.module.weight, self.module.bias)
        rows = input.reshape(-1, input.shape[-1]).to(torch.float32)
        if rows.stride(-1) != 1:
            rows = rows.contiguous()
        if self.compact is not None:
            out = self.kernels.gemm_q8(rows, self.compact)
        else:
            out = self.kernels.gemm_nt(rows, self.module.weight)
        if self.module.bias is not None:
            out = out + self.module.bias
        return out.to(input.dtype).view(*input.shape[:-1], -1)


def _takes(module: torch.nn.Module) -> TypeGuard[torch.nn.Linear]:
    weight = getattr(module, "weight", None)
    return (
        type(module) is torch.nn.Linear
        and weight is not None
        and weight.device.type == "cpu"
        and weight.dtype == torch.float32
        and weight.is_contiguous()
    )


def install_output(model: torch.nn.Module, kernels: CpuKernels) -> str | None:
    """Route `model`'s output layer through `FixedOrderLinear`, read as int8 times scales where its values
    are exactly that (`CpuKernels.q8_weight`: one step reads the whole output layer, for one row); how it
    is read, or None where it does not apply. Merges never change this weight in place (they swap in a
    dense copy of a layer), so the compact copy stays exact."""
    head = model.get_output_embeddings()  # type: ignore[operator]  # a transformers model's method
    if not _takes(head):
        return None
    compact = kernels.q8_weight(head.weight)
    head.forward = FixedOrderLinear(head, kernels, compact)  # type: ignore[method-assign]  # replaced on purpose
    return "float32" if compact is None else "int8 x scales per 32 (its exact float32 values)"


def install_all(model: torch.nn.Module, kernels: CpuKernels) -> int:
    """Route every float32 `Linear` layer of `model` through `FixedOrderLinear`; return how many."""
    layers = [m for m in model.modules() if _takes(m)]
    for module in layers:
        module.forward = FixedOrderLinear(module, kernels)  # type: ignore[method-assign]  # as above
    return len(layers)
