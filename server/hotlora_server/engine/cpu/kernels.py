"""The CPU's fixed-order products (`kernels.c`), compiled once per machine and called as torch operators.

Batch invariance — a request's output does not depend on what else shares its batch — needs every
product on the forward path to give a row the same bits whatever the row count. BLAS does not promise
that: its kernels change with the shape, and which shapes change them differs between CPUs (a transposed
output layer and padded LoRA GEMMs held on an AVX-512 CPU and failed on an AVX2 one). These kernels sum
each output element in one fixed order of their own, so the guarantee holds by construction on any CPU.

`kernels_build` compiles the library; `kernels_ops.cpp` registers its entry points as operators of one
namespace (`CpuKernels.ops`), each checking shapes, dtypes, devices and layouts before it reads memory
(a wrong call raises `ValueError`) and each with a Meta kernel, so `torch.compile` traces through them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


class CpuKernels:
    """The compiled library's operators (`ops`, a `torch.ops` namespace), with the few decisions that
    stay in Python: which layouts the 4-bit kernels take, when one call may serve several weights."""

    def __init__(self, ops: Any, path: Path) -> None:
        self.ops = ops
        self.path = path
        # floats per vector the library was compiled for; values per scale of a `Q8Weight`; weights and
        # rows one `gemm_q4_many` call takes at most
        self.lanes, self.q8_group, self.q4_many, self.q4_many_rows = ops.sizes()
        # the operators' overloads, resolved once: this skips a lookup at every call
        self._nt = ops.gemm_nt.default
        self._q8 = ops.gemm_q8.default
        self._q4 = ops.gemm_q4.default
        self._q4_many = ops.gemm_q4_many.default
        self._nn = ops.gemm_nn.default
        self._decode = ops.lora_decode.default
        self._attention = ops.attention.default
        self._rotary = ops.rotary.default
        self._bnb_gemv = ops.bnb_gemv_4bit.default

    def gemm_nt(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """`x @ w.T` for float32 `x` `[M, K]` and `w` `[N, K]`, each with contiguous rows: the logits."""
        return self._nt(x, w)

    def q8_weight(self, w: torch.Tensor) -> Q8Weight | None:
        """`w` `[N, K]` as int8 values times one float32 scale per `q8_group` values along K, when every
        value of `w` is exactly such a product (a GGUF Q8_0 weight dequantized, as the embedded model's
        tied output layer is); None otherwise. `gemm_q8` then gives `gemm_nt`'s bits."""
        if w.dim() != 2 or w.dtype != torch.float32 or w.device.type != "cpu":
            raise ValueError(f"w: expected a 2-d float32 CPU tensor, got {w.dtype} {tuple(w.shape)}")
        n, k = w.shape
        if k % self.q8_group or not w.is_contiguous():
            return None
        groups = k // self.q8_group
        values = torch.empty(n, k, dtype=torch.int8)
        scales = torch.empty(n, groups, dtype=torch.float32)
        for start in range(0, n, 4096):  # in slices: a large vocabulary's temporaries stay small
            blocks = w[start : start + 4096].reshape(-1, groups, self.q8_group)
            scale = blocks.abs().amax(-1) / 127  # Q8_0's largest value is 127 times its scale
            found = torch.round(blocks / torch.where(scale == 0, 1.0, scale).unsqueeze(-1))
            if found.abs().amax() > 127 or not torch.equal(found * scale.unsqueeze(-1), blocks):
                return None  # most weights fail in the first slice
            values[start : start + 4096] = found.reshape(-1, k).to(torch.int8)
            scales[start : start + 4096] = scale
        return Q8Weight(values, scales)

    def gemm_q8(self, x: torch.Tensor, weight: Q8Weight) -> torch.Tensor:
        """`x @ w.T` for float32 `x` `[M, K]` and the weight `q8_weight` made of `w`: `gemm_nt`'s bits."""
        return self._q8(x, weight.values, weight.scales)

    def q4_fits(self, in_features: int, blocksize: int) -> bool:
        """Whether `gemm_q4` takes a layer of `in_features` quantized in blocks of `blocksize`."""
        return blocksize > 0 and blocksize % (2 * self.lanes) == 0 and in_features % blocksize == 0

    def q4_weight(
        self, packed: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, blocksize: int, n: int
    ) -> Q4Weight:
        """The `[n, K]` weight W in bitsandbytes' 4-bit layout, checked for `gemm_q4` (`packed`:
        n * K / 2 bytes; `absmax`: one float32 per `blocksize` elements; `code`: 16 float32 values)."""
        packed, absmax, code = (t.as_subclass(torch.Tensor) for t in (packed, absmax, code))  # plain tensors
        k = self.ops.q4_in_features(packed, absmax, code, blocksize, n)
        return Q4Weight(packed, absmax, code, blocksize, n, k)

    def gemm_q4(self, x: torch.Tensor, weight: Q4Weight, prefill: bool = False) -> torch.Tensor:
        """`x @ W.T` for float32 `x` `[M, K]` with contiguous rows. `prefill`: the panel kernel, faster
        for many rows; a row's bits differ between the two, so a caller keeps each phase on one."""
        return self._q4(x, *weight.tensors, weight.blocksize, weight.out_features, prefill)

    def gemm_q4_many(self, x: torch.Tensor, weights: Sequence[Q4Weight]) -> list[torch.Tensor] | None:
        """`gemm_q4(x, w)` for each of `weights` (same bits) in one call, which forks and joins the
        threads once; None where it does not apply: more than `q4_many` weights or `q4_many_rows` rows,
        or weights of another input width (the caller then multiplies one by one)."""
        k = x.shape[-1]
        if not (
            0 < x.shape[0] <= self.q4_many_rows
            and len(weights) <= self.q4_many
            and all(w.in_features == k for w in weights)
        ):
            return None
        tensors = [t for w in weights for t in w.tensors]
        shapes = [v for w in weights for v in (w.blocksize, w.out_features)]
        return list(self._q4_many(x, tensors, shapes))

    def gemm_nn(self, x: torch.Tensor, w: torch.Tensor, out: torch.Tensor, accumulate: bool) -> None:
        """`out = x @ w` (`accumulate`: `out += x @ w`, the product added once), float32 `x` `[M, K]`,
        `w` `[K, N]` and `out` `[M, N]`, each with contiguous rows (`w` may be a column slice)."""
        self._nn(x, w, out, accumulate)

    def lora_items(self, columns: list[tuple[int, int]]) -> torch.Tensor:
        """`decode_items`, for callers that hold only the kernels (the device path's `RowKernels`)."""
        return decode_items(columns)

    def lora_decode(
        self, out: torch.Tensor, x: torch.Tensor, a_t: torch.Tensor, b_t: torch.Tensor, items: torch.Tensor
    ) -> None:
        """`out[row] += (x[row] @ a_t[:, start:stop]) @ b_t[start:stop]` for each item's rows.

        `out` `[rows, ..., out]` and `x` `[rows, ..., in]` float32, one row each (`[rows, 1, features]` in
        a decode step), row `r` at `r * stride(0)` with its features contiguous; `a_t` `[in, W]` and `b_t`
        `[W, out]` contiguous float32; `items` `[n, 4]` int32 `(start, stop, row, second row or -1)` from
        `decode_items` (the kernel refuses items outside the block or the batch).
        """
        self._decode(out, x, a_t, b_t, items)

    def attention(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        mask: torch.Tensor | None,
        scale: float,
        softcap: float | None = None,
    ) -> torch.Tensor:
        """Attention in transformers' layout: float32 `query` `[rows, heads, q, dim]`, `key` and `value`
        `[rows, kv_heads, keys, dim]` (any strides, `dim` contiguous), `mask` bool `[rows, 1, q, keys]`
        (True: may attend) or None for causal over the last `q` keys; returns `[rows, q, heads, dim]`.
        `softcap` caps scores as `softcap * tanh(s / softcap)` (Gemma 2)."""
        return self._attention(query, key, value, mask, scale, softcap or 0.0)

    def bnb_gemv_4bit(
        self,
        x: torch.Tensor,
        weight: torch.Tensor,
        absmax: torch.Tensor,
        quant_type: int,
        blocksize: int,
        out_features: int,
    ) -> torch.Tensor:
        """`x @ W.T` through bitsandbytes' fused CPU kernel, W in its packed CPU layout (`quant_type`: 0
        nf4, 1 fp4): as `Linear4bit.forward` computes it, x rounded to bf16 and the product returned in
        x's dtype, without its Python around the kernel."""
        return self._bnb_gemv(x, weight, absmax, quant_type, blocksize, out_features)

    def rotary(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """transformers' `x * cos + rotate_half(x) * sin` with the bits of its torch operations, in one
        call instead of six: float32 `x` `[rows, heads, positions, dim]` (any strides, `dim` contiguous),
        `cos` and `sin` `[rows, positions, dim]`; returns a contiguous tensor of `x`'s shape."""
        return self._rotary(x, cos, sin)


@dataclass(frozen=True)
class Q8Weight:
    """A float32 weight `CpuKernels.q8_weight` found to be int8 `values` `[N, K]` times float32 `scales`
    `[N, K / q8_group]`, exactly."""

    values: torch.Tensor
    scales: torch.Tensor


class Q4Weight:
    """A 4-bit weight `CpuKernels.q4_weight` checked: its tensors as plain tensors, and its sizes."""

    def __init__(
        self, packed: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, blocksize: int, n: int, k: int
    ) -> None:
        self.tensors = (packed, absmax, code)
        self.blocksize, self.out_features, self.in_features = blocksize, n, k
        self.data_ptr = packed.data_ptr()  # where the packed weight was when it was checked


def decode_items(slots: list[tuple[int, int]]) -> torch.Tensor:
    """`lora_decode`'s items for rows whose adapter columns are `slots[row]` (`(0, 0)`: none): rows of one
    adapter in pairs, which read its weights once."""
    by_slot: dict[tuple[int, int], list[int]] = {}
    for row, slot in enumerate(slots):
        if slot[1] > slot[0]:
            by_slot.setdefault(slot, []).append(row)
    items = [
        [start, stop, rows[i], rows[i + 1] if i + 1 < len(rows) else -1]
        for (start, stop), rows in by_slot.items()
        for i in range(0, len(rows), 2)
    ]
    return torch.tensor(items, dtype=torch.int32).reshape(-1, 4)
