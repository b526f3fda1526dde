"""Keep bitsandbytes' CPU-packed 4-bit weights exact (and packed) when PEFT touches the model.

On CPUs with AVX512-BF16, bitsandbytes (0.50) repacks a 4-bit weight into a faster layout at its first
inference forward (docs/performance.md has the gain). Anything that calls
`state_dict()` afterwards — PEFT does, to load, blend or save an adapter — makes bitsandbytes unpack it
again, and its inverse leaves `absmax` transposed in bf16, so the next forward repacks garbage: the base
model's output is silently corrupted. Two remedies, for two needs:

- `packing_held`: PEFT only reads adapter keys from `state_dict()`, never base values, so the packed
  flag is lowered for the duration and nothing is converted: adapter operations stay cheap.
- `unpack_cpu_weights`: a correct inverse, for code that must read the base weights (merging).

`PackedDecode` calls the packed kernel through one operator of the kernels library: bitsandbytes' Python
path around it (dtype and shape checks, a tensor comparison to tell nf4 from fp4, conversions to and from
bf16, a `ctypes` call) costs more than the kernel on a model this small (docs/performance.md).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeGuard

import bitsandbytes as bnb
import torch
from bitsandbytes.cextension import lib
from bitsandbytes.functional import QuantState, _convert_weight_packed_for_cpu_inverse

from .kernels import CpuKernels


def _packed_states(model: torch.nn.Module) -> Iterator[tuple[bnb.nn.Params4bit, QuantState]]:
    """Each packed weight and its state once (a PEFT LoRA layer exposes its base layer's `weight` too)."""
    seen: set[int] = set()
    for module in model.modules():
        weight = getattr(module, "weight", None)
        state = getattr(weight, "quant_state", None)
        if (
            isinstance(weight, bnb.nn.Params4bit)
            and state is not None
            and getattr(state, "packing_format_for_cpu", False)
            and id(weight) not in seen
        ):
            seen.add(id(weight))
            yield weight, state


@contextmanager
def packing_held(model: torch.nn.Module) -> Iterator[None]:
    """Let PEFT call `state_dict()` without bitsandbytes converting (and corrupting) packed weights.

    No forward pass may run inside: it would pack the already packed weights again.
    """
    states = [state for _, state in _packed_states(model)]
    for state in states:
        state.packing_format_for_cpu = False  # type: ignore[attr-defined]  # bitsandbytes sets it outside the class
    try:
        yield
    finally:
        for state in states:
            state.packing_format_for_cpu = True  # type: ignore[attr-defined]  # as above


def unpack_cpu_weights(model: torch.nn.Module) -> int:
    """Return every CPU-packed 4-bit weight of `model` to bitsandbytes' standard layout; count them.

    The next forward packs them again (about a second for SmolLM2 on 2 cores).
    """
    restored = 0
    for weight, state in list(_packed_states(model)):
        nested = state.original_nested
        data, state = _convert_weight_packed_for_cpu_inverse(weight.data, state)
        if not nested:  # the step bitsandbytes' inverse misses: absmax back to [blocks] in float32
            state.absmax = state.absmax.T.reshape(-1).to(torch.float32).contiguous()
        weight.data, weight.quant_state = data, state
        restored += 1
    return restored


def packs_on_cpu(module: torch.nn.Module) -> TypeGuard[bnb.nn.Linear4bit]:
    """Whether `module` is a 4-bit layer bitsandbytes will run (or runs) with its packed CPU kernel."""
    return (
        isinstance(module, bnb.nn.Linear4bit)
        and module.weight.device.type == "cpu"
        and getattr(module, "support_avx512bf16_for_cpu", False)
    )


QUANT_TYPES = {"nf4": 0, "fp4": 1}  # bitsandbytes' numbers for them


class PackedDecode:
    """A CPU 4-bit layer's forward: bitsandbytes' own until it has packed the weight, then its kernel
    through one operator call (`CpuKernels.bnb_gemv_4bit`).

    Same kernel, same inputs (rows rounded to bf16), same bits as `Linear4bit.forward`; only the Python
    around it is gone.
    """

    def __init__(self, module: bnb.nn.Linear4bit, kernels: CpuKernels) -> None:
        self.module = module
        self.kernels = kernels
        self.fallback: Callable[[torch.Tensor], torch.Tensor] = module.forward
        state = module.weight.quant_state  # type: ignore[attr-defined]  # Params4bit sets it in __new__
        self.quant_type = QUANT_TYPES[state.quant_type]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.module._parameters["weight"]  # the dict, not `Module.__getattr__`: this runs every call
        assert weight is not None
        state = weight.quant_state  # type: ignore[attr-defined]  # as above
        if not getattr(state, "packing_format_for_cpu", False):
            return self.fallback(x)  # bitsandbytes packs the weight now (or its layout is not ours)
        out = self.kernels.bnb_gemv_4bit(
            x, weight.data, state.absmax, self.quant_type, state.blocksize, state.shape[0]
        )
        bias = self.module._parameters.get("bias")
        return out if bias is None else out + bias.to(x.dtype)


def bnb_gemv_kernels() -> tuple[int | None, int | None]:
    """The addresses of bitsandbytes' fused CPU 4-bit kernels (nf4, fp4) in its loaded library, None
    where it has none: the kernels library calls them (`PackedDecode`)."""
    library = lib._lib  # the CDLL itself: bitsandbytes' wrapper answers a missing name with a stub
    found = (getattr(library, f"gemv_4bit_inference_cpu_{name}_bf16", None) for name in QUANT_TYPES)
    nf4, fp4 = (None if f is None else ctypes.cast(f, ctypes.c_void_p).value for f in found)
    return nf4, fp4


def install_packed_decode(model: torch.nn.Module, kernels: CpuKernels) -> int:
    """Give every layer of `model` that `packs_on_cpu` the direct kernel call; return how many."""
    layers = [module for module in model.modules() if packs_on_cpu(module)]
    for module in layers:
        module.forward = PackedDecode(module, kernels)  # type: ignore[method-assign]  # replaced on purpose
    return len(layers)
