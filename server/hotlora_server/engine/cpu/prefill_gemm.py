"""Prefill through dequantized bf16 weights in fixed-size row tiles (4-bit base on a CPU with native bf16).

bitsandbytes' CPU kernel for 4-bit weights dequantizes and multiplies in one pass at about the same cost
per row for any number of rows: right for a decode step (a few rows), slow for a prefill (hundreds of
rows, where bf16 GEMMs on the dequantized weights are several times faster, dequantizing included:
docs/performance.md, "Design measurements").
So during a prefill each 4-bit layer dequantizes its weight to bf16 and multiplies by GEMM, as
bitsandbytes itself does on CUDA for inputs of more than one row.
A bf16 GEMM's kernel depends on its row count, so a row's result would depend on how many rows share the
call (measured) — but not on the other rows or on its place in a call of a fixed size. Every prefill GEMM
therefore runs on tiles of exactly `TILE` rows, the last one zero-padded: a prompt's KV cache is the same
bits alone or prefilled beside others, which batch invariance needs.
Dequantizing needs bitsandbytes' standard layout, which its CPU kernel replaces with a packed one at the
first forward: a copy of the standard-layout 4-bit data is kept (half a byte per weight).
Within a memory budget (`--cpu-prefill-cache-gb`) a layer keeps its dequantized bf16 weight instead,
reordered once into oneDNN's blocked layout (as inductor does for frozen CPU linears): its prefill GEMMs
then neither dequantize nor reorder the weight, which shortens every prefill (docs/performance.md), with
the same bits as `linear`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from functools import partial

import bitsandbytes as bnb
import torch
from bitsandbytes.functional import dequantize_4bit

from ..phase import is_prefilling, prefilling
from .bnb import packs_on_cpu

TILE = 64  # rows per GEMM call


def tiled(x: torch.Tensor, multiply: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """`multiply` applied to `[rows, in]` x in calls of exactly `TILE` rows each."""
    rows = x.shape[0]
    if rows % TILE:
        x = torch.nn.functional.pad(x, (0, 0, 0, TILE - rows % TILE))
    return torch.cat([multiply(tile) for tile in x.split(TILE)])[:rows]


def tiled_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """`x @ weight.T` for `[rows, in]` x, in GEMMs of exactly `TILE` rows each."""
    return tiled(x, partial(torch.nn.functional.linear, weight=weight))


def packed_linear(weight: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """`x @ weight.T` through oneDNN, with `weight` reordered once for `TILE`-row inputs."""
    packed = torch.ops.mkldnn._reorder_linear_weight(weight, TILE)
    return lambda x: torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")


class _PrefillPath:
    """One 4-bit layer's prefill weight (cached, or its standard-layout 4-bit data) and the forward using it."""

    def __init__(self, module: bnb.nn.Linear4bit, cache: bool) -> None:
        self.module = module
        self.decode = module.forward
        # `quant_state` is on bitsandbytes' Params4bit weight, set in its __new__ (out of mypy's sight)
        self.state = copy.deepcopy(module.weight.quant_state)  # type: ignore[attr-defined]
        self.state.dtype = torch.bfloat16  # straight to bf16: over twice as fast as via fp32
        self.data = None if cache else module.weight.data.clone()
        self.cached = packed_linear(dequantize_4bit(module.weight.data, self.state)) if cache else None

    def multiply(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """This prefill's tile GEMM: on the cached weight, or on the weight dequantized now."""
        if self.cached is not None:
            return self.cached
        assert self.data is not None  # an uncached layer keeps its 4-bit data
        return partial(torch.nn.functional.linear, weight=dequantize_4bit(self.data, self.state))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not is_prefilling():
            return self.decode(x)
        flat = x.reshape(-1, x.shape[-1]).to(torch.bfloat16)
        out = tiled(flat, self.multiply()).to(x.dtype).view(*x.shape[:-1], -1)
        bias = self.module.bias
        return out if bias is None else out + bias.to(x.dtype)


def install(model: torch.nn.Module, cache_bytes: int) -> tuple[int, int]:
    """Give every 4-bit layer of `model` that bitsandbytes runs with its packed CPU kernel the prefill path,
    caching the bf16 weight of each layer that still fits `cache_bytes`; return (layers, of them cached).
    Call before the first forward (which packs the weights)."""
    count = cached = 0
    cache = torch.backends.mkldnn.is_available()
    for module in model.modules():
        if packs_on_cpu(module) and not getattr(module.weight.quant_state, "packing_format_for_cpu", False):  # type: ignore[attr-defined]
            size = module.in_features * module.out_features * torch.bfloat16.itemsize
            fits = cache and size <= cache_bytes
            module.forward = _PrefillPath(module, fits).forward  # type: ignore[method-assign]  # on purpose
            cache_bytes -= size if fits else 0
            count, cached = count + 1, cached + fits
    return count, cached


@torch.inference_mode()
def warm_up(model: torch.nn.Module) -> None:
    """Run one short prefill, so that none of the server's prefills is the process's first.

    The first bf16 GEMMs of a process sometimes give other bits than every later call (seen with the
    embedded model, cached weights or not; never after a warm-up prefill: docs/performance.md), which
    breaks the promise that an output does not depend on when it was asked.
    """
    with prefilling():
        model(input_ids=torch.zeros((1, 4), dtype=torch.long, device=next(model.parameters()).device))
