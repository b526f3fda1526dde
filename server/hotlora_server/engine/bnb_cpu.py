"""Keep bitsandbytes' CPU-packed 4-bit weights exact (and packed) when PEFT touches the model.

On CPUs with AVX512-BF16, bitsandbytes (0.50) repacks a 4-bit weight into a faster layout at its first
inference forward (~1.6x decode throughput at batch 16, measured here). Anything that calls
`state_dict()` afterwards — PEFT does, to load, blend or save an adapter — makes bitsandbytes unpack it
again, and its inverse leaves `absmax` transposed in bf16, so the next forward repacks garbage: the base
model's output is silently corrupted. Two remedies, for two needs:

- `packing_held`: PEFT only reads adapter keys from `state_dict()`, never base values, so the packed
  flag is lowered for the duration and nothing is converted: adapter operations stay cheap.
- `unpack_cpu_weights`: a correct inverse, for code that must read the base weights (merging).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse


def _packed_states(model: torch.nn.Module) -> Iterator[tuple[torch.nn.Module, object]]:
    """Each packed weight once (a PEFT LoRA layer exposes its base layer's `weight` too)."""
    seen: set[int] = set()
    for module in model.modules():
        weight = getattr(module, "weight", None)
        state = getattr(weight, "quant_state", None)
        if state is not None and getattr(state, "packing_format_for_cpu", False) and id(weight) not in seen:
            seen.add(id(weight))
            yield module, state


@contextmanager
def packing_held(model: torch.nn.Module) -> Iterator[None]:
    """Let PEFT call `state_dict()` without bitsandbytes converting (and corrupting) packed weights.

    No forward pass may run inside: it would pack the already packed weights again.
    """
    states = [state for _, state in _packed_states(model)]
    for state in states:
        state.packing_format_for_cpu = False  # type: ignore[attr-defined]
    try:
        yield
    finally:
        for state in states:
            state.packing_format_for_cpu = True  # type: ignore[attr-defined]


def unpack_cpu_weights(model: torch.nn.Module) -> int:
    """Return every CPU-packed 4-bit weight of `model` to bitsandbytes' standard layout; count them.

    The next forward packs them again (about a second for SmolLM2 on 2 cores).
    """
    restored = 0
    for module, state in list(_packed_states(model)):
        weight = module.weight
        nested = state.original_nested  # type: ignore[attr-defined]
        data, state = _convert_weight_packed_for_cpu_inverse(weight.data, state)
        if not nested:  # the step bitsandbytes' inverse misses: absmax back to [blocks] in float32
            state.absmax = state.absmax.T.reshape(-1).to(torch.float32).contiguous()
        weight.data, weight.quant_state = data, state
        restored += 1
    return restored
