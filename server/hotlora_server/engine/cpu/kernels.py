"""The CPU's fixed-order products (`kernels.c`), compiled once per machine and called through `ctypes`.

Batch invariance — a request's output does not depend on what else shares its batch — needs every
product on the forward path to give a row the same bits whatever the row count. BLAS does not promise
that: its kernels change with the shape, and which shapes change them differs between CPUs (a transposed
output layer and padded LoRA GEMMs held on an AVX-512 CPU and failed on an AVX2 one). These kernels sum
each output element in one fixed order of their own, so the guarantee holds by construction on any CPU.

`kernels_build` compiles the library; every call here checks shapes, dtypes and layouts first and raises
`ValueError`, so a wrong call cannot read or write outside its tensors.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

_I64, _I32, _PTR = ctypes.c_int64, ctypes.c_int32, ctypes.c_void_p


def _check(ok: bool, message: str | Callable[[], str]) -> None:
    """Raise `message` unless `ok`; a message that formats shapes is a callable, formatted only then (the
    checks run at every kernel call)."""
    if not ok:
        raise ValueError(message if isinstance(message, str) else message())


def _rows(t: torch.Tensor, name: str, dtype: torch.dtype = torch.float32) -> None:
    """A 2-d CPU tensor of `dtype` whose rows are contiguous (any row stride)."""
    _check(
        t.dim() == 2 and t.device.type == "cpu",
        lambda: f"{name}: expected a 2-d CPU tensor, got {tuple(t.shape)}",
    )
    _check(t.dtype == dtype, lambda: f"{name}: expected {dtype}, got {t.dtype}")
    _check(t.stride(1) == 1 and t.stride(0) >= t.shape[1], lambda: f"{name}: rows must be contiguous")


class CpuKernels:
    """The compiled library's entry points, each checking its arguments before the call."""

    def __init__(self, library: ctypes.CDLL, path: Path) -> None:
        self.path = path
        self.lanes: int = library.hotlora_lanes()  # floats per vector the library was compiled for
        self._nt = library.hotlora_gemm_nt
        self._nt.argtypes = [_PTR, _I64, _PTR, _I64, _PTR, _I64, _I64, _I64, _I64, _I32]
        self._nt.restype = None
        self._q8 = library.hotlora_gemm_q8
        self._q8.argtypes = self._nt.argtypes
        self._q8.restype = None
        self.q8_group: int = library.hotlora_q8_group()  # values per scale of a `Q8Weight`
        self._q4 = library.hotlora_gemm_q4
        self._q4.argtypes = [_PTR, _I64, _PTR, _PTR, _PTR, _I64, _PTR, _I64, _I64, _I64, _I64, _I32]
        self._q4.restype = _I32
        self._q4_many = library.hotlora_gemm_q4_many
        self._q4_many.argtypes = [_PTR, _I64, _I64, _I64, _I64, _PTR, _I32]
        self._q4_many.restype = _I32
        self.q4_many: int = library.hotlora_q4_many()  # weights one `gemm_q4_many` call takes
        self.q4_many_rows: int = library.hotlora_q4_many_rows()  # and the most rows
        self._q4_prefill = library.hotlora_gemm_q4_prefill
        self._q4_prefill.argtypes = self._q4.argtypes
        self._q4_prefill.restype = _I32
        self._nn = library.hotlora_gemm_nn
        self._nn.argtypes = [_PTR, _I64, _PTR, _I64, _PTR, _I64, _I64, _I64, _I64, _I32, _I32]
        self._nn.restype = _I32
        self._decode = library.hotlora_lora_decode
        self._decode.argtypes = [_PTR, _I64, _I64, _PTR, _PTR, _I64, _I64, _PTR, _I64, _I64, _PTR, _I32, _I32]
        self._decode.restype = _I32
        self._attention = library.hotlora_attention
        self._attention.argtypes = [*(_PTR, _I64, _I64, _I64) * 3, _PTR, _I64, _I64, _PTR, _I64, _I64, _I64]
        self._attention.argtypes += [_I64] * 6 + [ctypes.c_float, ctypes.c_float, _I32]
        self._attention.restype = _I32
        self._rotary = library.hotlora_rotary
        self._rotary.argtypes = [_PTR, *[_I64] * 7, _PTR, _PTR, _PTR]
        self._rotary.restype = None

    def gemm_nt(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """`x @ w.T` for float32 `x` `[M, K]` and `w` `[N, K]`: the output layer's logits."""
        _rows(x, "x")
        _rows(w, "w")
        _check(x.shape[1] == w.shape[1], lambda: f"x has {x.shape[1]} features, w {w.shape[1]}")
        (m, k), n = x.shape, w.shape[0]
        y = torch.empty(m, n, dtype=torch.float32)
        if m and n:
            self._nt(
                x.data_ptr(),
                x.stride(0),
                w.data_ptr(),
                w.stride(0),
                y.data_ptr(),
                n,
                m,
                n,
                k,
                torch.get_num_threads(),
            )
        return y

    def q8_weight(self, w: torch.Tensor) -> Q8Weight | None:
        """`w` `[N, K]` as int8 values times one float32 scale per `q8_group` values along K, when every
        value of `w` is exactly such a product (a GGUF Q8_0 weight dequantized, as the embedded model's
        tied output layer is); None otherwise. `gemm_q8` then gives `gemm_nt`'s bits."""
        _rows(w, "w")
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
        _rows(x, "x")
        (m, k), n = x.shape, weight.values.shape[0]
        _check(k == weight.values.shape[1], lambda: f"x has {k} features, w {weight.values.shape[1]}")
        y = torch.empty(m, n, dtype=torch.float32)
        if m and n:
            self._q8(
                x.data_ptr(),
                x.stride(0),
                weight.values.data_ptr(),
                weight.scales.data_ptr(),
                y.data_ptr(),
                n,
                m,
                n,
                k,
                torch.get_num_threads(),
            )
        return y

    def q4_fits(self, in_features: int, blocksize: int) -> bool:
        """Whether `gemm_q4` takes a layer of `in_features` quantized in blocks of `blocksize`."""
        return blocksize % (2 * self.lanes) == 0 and in_features % blocksize == 0

    def q4_weight(
        self, packed: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, blocksize: int, n: int
    ) -> Q4Weight:
        """The `[n, K]` weight W in bitsandbytes' 4-bit layout, checked once for `gemm_q4` (`packed`:
        n * K / 2 bytes; `absmax`: one float32 per `blocksize` elements; `code`: 16 float32 values)."""
        _check(
            packed.dtype == torch.uint8 and packed.is_contiguous() and n > 0,
            "packed: expected contiguous uint8",
        )
        k = packed.numel() * 2 // n
        _check(k * n == packed.numel() * 2, lambda: f"packed: {packed.numel()} bytes do not hold {n} rows")
        _check(
            self.q4_fits(k, blocksize),
            lambda: f"{k} features in blocks of {blocksize}: not a 4-bit layout this kernel takes",
        )
        _check(
            absmax.dtype == torch.float32 and absmax.is_contiguous() and absmax.numel() == n * k // blocksize,
            "absmax: wrong size",
        )
        _check(
            code.dtype == torch.float32 and code.is_contiguous() and code.numel() == 16,
            "code: expected 16 float32 values",
        )
        _check(
            all(t.device.type == "cpu" for t in (packed, absmax, code)), "4-bit weights must be on the CPU"
        )
        return Q4Weight(packed, absmax, code, blocksize, n, k)

    def gemm_q4(self, x: torch.Tensor, weight: Q4Weight, prefill: bool = False) -> torch.Tensor:
        """`x @ W.T` for float32 `x` `[M, K]` with contiguous rows (checked at every call: a few
        attribute reads, as this runs once per 4-bit layer per forward). `prefill`: the panel kernel,
        faster for many rows; a row's bits differ between the two, so a caller keeps each phase on one."""
        if not (x.dtype == torch.float32 and x.dim() == 2 and x.stride(1) == 1 and x.device.type == "cpu"):
            _rows(x, "x")  # raises with the reason
        m, k = x.shape
        _check(
            k == weight.in_features and x.stride(0) >= k,
            lambda: f"x has {k} features, the weight {weight.in_features}",
        )
        y = torch.empty(m, weight.out_features, dtype=torch.float32)
        fn = self._q4_prefill if prefill else self._q4
        if m and fn(
            x.data_ptr(),
            x.stride(0),
            *weight.pointers,
            y.data_ptr(),
            *weight.sizes(m),
            torch.get_num_threads(),
        ):
            raise MemoryError("the 4-bit kernel could not allocate its buffers")
        return y

    def gemm_q4_many(self, x: torch.Tensor, weights: Sequence[Q4Weight]) -> list[torch.Tensor] | None:
        """`gemm_q4(x, w)` for each of `weights` (same bits) in one call, which forks and joins the
        threads once; None where it does not apply: more than `q4_many` weights or `q4_many_rows` rows,
        or weights of another input width (the caller then multiplies one by one)."""
        if not (x.dtype == torch.float32 and x.dim() == 2 and x.stride(1) == 1 and x.device.type == "cpu"):
            _rows(x, "x")  # raises with the reason
        m, k = x.shape
        if not (
            0 < m <= self.q4_many_rows
            and len(weights) <= self.q4_many
            and x.stride(0) >= k
            and all(w.in_features == k for w in weights)
        ):
            return None
        out = [torch.empty(m, w.out_features, dtype=torch.float32) for w in weights]
        specs = [
            v for w, y in zip(weights, out, strict=True) for v in (*w.pointers, y.data_ptr(), w.out_features)
        ]
        status = self._q4_many(
            x.data_ptr(),
            x.stride(0),
            m,
            k,
            len(weights),
            (_I64 * len(specs))(*specs),
            torch.get_num_threads(),
        )
        if status == -1:
            raise MemoryError("the 4-bit kernel could not allocate its buffers")
        _check(status == 0, "gemm_q4_many: the kernel refused its arguments")
        return out

    def gemm_nn(self, x: torch.Tensor, w: torch.Tensor, out: torch.Tensor, accumulate: bool) -> None:
        """`out = x @ w` (`accumulate`: `out += x @ w`, the product added once), float32 `x` `[M, K]`,
        `w` `[K, N]` and `out` `[M, N]`, each with contiguous rows (`w` may be a column slice)."""
        for t, name in ((x, "x"), (w, "w"), (out, "out")):
            _rows(t, name)
        (m, k), n = x.shape, w.shape[1]
        _check(
            w.shape[0] == k and tuple(out.shape) == (m, n),
            lambda: f"shapes {tuple(x.shape)} @ {tuple(w.shape)} -> {tuple(out.shape)}",
        )
        if (
            m
            and n
            and self._nn(
                x.data_ptr(),
                x.stride(0),
                w.data_ptr(),
                w.stride(0),
                out.data_ptr(),
                out.stride(0),
                m,
                n,
                k,
                int(accumulate),
                torch.get_num_threads(),
            )
        ):
            raise MemoryError("the LoRA prefill kernel could not allocate its buffers")

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
        `decode_items` (the kernel refuses items outside the block or the batch). Checks cost about a
        microsecond: this runs once per LoRA layer per decode step.
        """
        _check(
            out.dtype == x.dtype == a_t.dtype == b_t.dtype == torch.float32, "lora_decode takes float32 only"
        )
        _check(
            a_t.dim() == b_t.dim() == 2 and a_t.is_contiguous() and b_t.is_contiguous(),
            "blocks: contiguous 2-d",
        )
        (inner, width), outer = a_t.shape, b_t.shape[1]
        _check(
            b_t.shape[0] == width and x.shape[-1] == inner and out.shape[-1] == outer,
            "block and row shapes differ",
        )
        _check(x.stride(-1) == 1 and out.stride(-1) == 1, "features must be contiguous")
        _check(
            x.numel() == x.shape[0] * inner and out.numel() == out.shape[0] * outer,
            "one row of features per row",
        )
        _check(
            items.dtype == torch.int32 and items.is_contiguous() and items.dim() == 2 and items.shape[1] == 4,
            "items: [n, 4] int32",
        )
        if self._decode(
            x.data_ptr(),
            x.stride(0),
            inner,
            a_t.data_ptr(),
            b_t.data_ptr(),
            width,
            outer,
            out.data_ptr(),
            out.stride(0),
            min(x.shape[0], out.shape[0]),
            items.data_ptr(),
            items.shape[0],
            torch.get_num_threads(),
        ):
            raise ValueError("lora_decode: an item names columns outside the block or rows outside the batch")

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
        (True: may attend; keys contiguous) or None for causal over the last `q` keys; returns
        `[rows, q, heads, dim]`. `softcap` caps scores as `softcap * tanh(s / softcap)` (Gemma 2)."""
        _check(query.dtype == key.dtype == value.dtype == torch.float32, "attention takes float32 only")
        _check(query.dim() == key.dim() == value.dim() == 4, "query, key and value: 4-d")
        rows, heads, q_len, dim = query.shape
        kv_heads, keys = key.shape[1], key.shape[2]
        _check(
            tuple(key.shape) == tuple(value.shape) == (rows, kv_heads, keys, dim),
            lambda: (
                f"key {tuple(key.shape)} and value {tuple(value.shape)} do not fit query {tuple(query.shape)}"
            ),
        )
        _check(
            kv_heads > 0 and heads % kv_heads == 0, lambda: f"{heads} heads do not share {kv_heads} kv heads"
        )
        _check(all(t.stride(-1) == 1 for t in (query, key, value)), "the last dimension must be contiguous")
        _check(
            all(t.device.type == "cpu" for t in (query, key, value)), "attention's tensors must be on the CPU"
        )
        mask_args: tuple[int, int, int] = (0, 0, 0)
        _check(mask is not None or q_len <= keys, lambda: f"causal: {q_len} queries over {keys} keys")
        if mask is not None:
            _check(
                mask.dtype == torch.bool and tuple(mask.shape) == (rows, 1, q_len, keys),
                lambda: f"mask: expected bool {(rows, 1, q_len, keys)}",
            )
            mask = mask if mask.stride(-1) == 1 else mask.contiguous()
            mask_args = (mask.data_ptr(), mask.stride(0), mask.stride(2))
        out = torch.empty(rows, q_len, heads, dim, dtype=torch.float32)
        strides = [(t.data_ptr(), t.stride(0), t.stride(1), t.stride(2)) for t in (query, key, value)]
        if out.numel() and self._attention(
            *[a for s in strides for a in s],
            *mask_args,
            out.data_ptr(),
            out.stride(0),
            out.stride(1),
            out.stride(2),
            rows,
            heads,
            kv_heads,
            q_len,
            keys,
            dim,
            scale,
            softcap or 0.0,
            torch.get_num_threads(),
        ):
            raise MemoryError("the attention kernel could not allocate its buffers")
        return out

    def rotary(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """transformers' `x * cos + rotate_half(x) * sin` with the bits of its torch operations, in one
        call instead of six: float32 `x` `[rows, heads, positions, dim]` (any strides, `dim` contiguous),
        `cos` and `sin` `[rows, positions, dim]`; returns a contiguous tensor of `x`'s shape."""
        _check(x.dtype == cos.dtype == sin.dtype == torch.float32, "rotary takes float32 only")
        _check(x.dim() == 4 and x.stride(-1) == 1 and x.shape[-1] % 2 == 0, "x: 4-d, an even contiguous dim")
        rows, heads, positions, dim = x.shape
        _check(
            tuple(cos.shape) == tuple(sin.shape) == (rows, positions, dim)
            and cos.is_contiguous()
            and sin.is_contiguous(),
            lambda: f"cos and sin: expected contiguous {(rows, positions, dim)}, got {tuple(cos.shape)}",
        )
        _check(all(t.device.type == "cpu" for t in (x, cos, sin)), "rotary's tensors must be on the CPU")
        out = torch.empty(rows, heads, positions, dim, dtype=torch.float32)
        self._rotary(
            x.data_ptr(),
            x.stride(0),
            x.stride(1),
            x.stride(2),
            rows,
            heads,
            positions,
            dim,
            cos.data_ptr(),
            sin.data_ptr(),
            out.data_ptr(),
        )
        return out


@dataclass(frozen=True)
class Q8Weight:
    """A float32 weight `CpuKernels.q8_weight` found to be int8 `values` `[N, K]` times float32 `scales`
    `[N, K / q8_group]`, exactly."""

    values: torch.Tensor
    scales: torch.Tensor


class Q4Weight:
    """A 4-bit weight `CpuKernels.q4_weight` checked: it keeps the tensors alive while its pointers are used."""

    def __init__(
        self, packed: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, blocksize: int, n: int, k: int
    ) -> None:
        self.tensors = (packed, absmax, code)
        self.out_features, self.in_features = n, k
        self.pointers = (packed.data_ptr(), absmax.data_ptr(), code.data_ptr(), blocksize)

    def sizes(self, rows: int) -> tuple[int, int, int, int]:
        """`ldy, M, N, K` after the output pointer, as `hotlora_gemm_q4` takes them."""
        n = self.out_features
        return n, rows, n, self.in_features


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
