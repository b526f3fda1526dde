"""The blend methods, in one registry: each name with what it needs and how it is built. No torch.

LoRAX keeps its merge strategies in one `strategy_registry`; so do we. Everything that knows a method reads
it from here: the protocol (which names exist, which take `density`), the engine contract (`BlendSpec`),
the adapter pool (equal ranks, the blend's rank, PEFT's `combination_type`). The client SDK speaks only
HTTP and keeps its own `BlendMethod`; a test pins it to `BLEND_METHODS`.

A new method is one `BlendMethodSpec` below and its name in `BlendMethod`; a method PEFT's
`add_weighted_adapter` lacks also needs its own build in the adapter pool.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal, get_args

BlendMethod = Literal["cat", "linear", "svd", "ties", "dare_linear", "dare_ties", "magnitude_prune"]


def _sum(ranks: Sequence[int]) -> int:
    return sum(ranks)


def _largest(ranks: Sequence[int]) -> int:
    return max(ranks)


@dataclass(frozen=True)
class BlendMethodSpec:
    """One blend method: a row of the registry."""

    name: BlendMethod
    combination_type: str  # PEFT's `add_weighted_adapter(combination_type=...)`
    needs_density: bool  # takes `density` (the fraction of each delta kept), and requires it
    equal_ranks: bool  # its sources must all have the same rank
    rank: Callable[[Sequence[int]], int]  # the rank PEFT gives the blend of sources of these ranks
    summary: str


_SPECS = (
    BlendMethodSpec("cat", "cat", False, False, _sum, "the exact weighted sum; the ranks add up"),
    BlendMethodSpec("linear", "linear", False, True, _largest, "a weighted sum of the A and B matrices"),
    BlendMethodSpec("svd", "svd", False, False, _largest, "the weighted sum cut to the largest rank by SVD"),
    BlendMethodSpec("ties", "ties", True, True, _largest, "TIES: trim, elect the sign, merge"),
    BlendMethodSpec("dare_linear", "dare_linear", True, True, _largest, "DARE: drop at random, rescale, sum"),
    BlendMethodSpec("dare_ties", "dare_ties", True, True, _largest, "DARE, then TIES' sign election"),
    BlendMethodSpec("magnitude_prune", "magnitude_prune", True, True, _largest, "keep the largest, then sum"),
)

METHODS: Mapping[str, BlendMethodSpec] = MappingProxyType({spec.name: spec for spec in _SPECS})
BLEND_METHODS: tuple[str, ...] = tuple(METHODS)
DENSITY_METHODS: tuple[str, ...] = tuple(name for name, spec in METHODS.items() if spec.needs_density)
EQUAL_RANK_METHODS: tuple[str, ...] = tuple(name for name, spec in METHODS.items() if spec.equal_ranks)
DEFAULT_METHOD: BlendMethod = "cat"

if get_args(BlendMethod) != BLEND_METHODS:  # the type checkers' list and the registry are one list
    raise RuntimeError(f"BlendMethod {get_args(BlendMethod)} differs from the registry {BLEND_METHODS}")


def blend_rank(method: str, ranks: Sequence[int]) -> int:
    """The rank PEFT's `add_weighted_adapter` gives a blend of adapters of these ranks."""
    return METHODS[method].rank(ranks)


def combination_type(method: str) -> str:
    """PEFT's name for `method`."""
    return METHODS[method].combination_type
