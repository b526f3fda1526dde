"""The CPU's fixed-order kernels: their numbers against float64, a row's bits alone and in any batch
(the guarantee batch invariance rests on, on any CPU), their argument checks, and how they are built."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import bitsandbytes.functional as bnbf
import pytest
import torch

from hotlora_server.engine.cpu import kernels_build
from hotlora_server.engine.cpu.kernels import CpuKernels, decode_items

from support.gguf_weights import q8_0
from support.tiny_server import needs_compiler

NONE = (0, 0)
# row slices of a 20-row call: single rows, tile edges (4 and 6 rows) and the 4-bit kernel's switch to
# dequantized column panels at 8 rows, on either side
SLICES = [(0, 1), (5, 6), (19, 20), (0, 2), (3, 7), (0, 7), (1, 9), (4, 16), (0, 13), (2, 20)]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(params=[1, 2], ids=["1-thread", "2-threads"])
def threads(request: pytest.FixtureRequest) -> object:
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


# -- logits and dense layers: x @ w.T ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("k", "n"), [(576, 1000), (64, 49), (37, 45), (5, 3)], ids=["aligned", "vector", "tails", "tiny"]
)
def test_gemm_nt_matches_float64_and_gives_each_row_its_bits_alone(
    cpu_kernels: CpuKernels, threads: int, k: int, n: int
) -> None:
    x, w = torch.randn(20, k, generator=_gen(0)), torch.randn(n, k, generator=_gen(1))
    together = cpu_kernels.gemm_nt(x, w)
    torch.testing.assert_close(together.double(), x.double() @ w.double().T, rtol=1e-5, atol=1e-4)
    for start, stop in SLICES:
        assert torch.equal(cpu_kernels.gemm_nt(x[start:stop], w), together[start:stop]), (start, stop)


@pytest.mark.parametrize(("k", "n"), [(576, 1000), (64, 49), (32, 3)])
def test_gemm_q8_gives_gemm_nts_bits_from_int8_and_scales(
    cpu_kernels: CpuKernels, threads: int, k: int, n: int
) -> None:
    w = q8_0(n, k, seed=4)
    compact = cpu_kernels.q8_weight(w)
    assert compact is not None and compact.values.dtype == torch.int8
    assert compact.values.numel() + 4 * compact.scales.numel() < w.numel() * 4 / 3  # a third of the bytes
    x = torch.randn(20, k, generator=_gen(5))
    together = cpu_kernels.gemm_nt(x, w)
    assert torch.equal(cpu_kernels.gemm_q8(x, compact), together)
    for start, stop in SLICES:
        assert torch.equal(cpu_kernels.gemm_q8(x[start:stop], compact), together[start:stop]), (start, stop)


def test_only_a_weight_that_is_exactly_int8_times_scales_is_held_so(cpu_kernels: CpuKernels) -> None:
    assert cpu_kernels.q8_weight(torch.randn(8, 64, generator=_gen(6))) is None  # any float32 weight
    assert cpu_kernels.q8_weight(q8_0(8, 64, seed=7)[:, :48].contiguous()) is None  # not whole blocks
    nudged = q8_0(8, 64, seed=8)
    nudged[3, 5] = torch.nextafter(nudged[3, 5], torch.tensor(1.0))  # one value a step off
    assert cpu_kernels.q8_weight(nudged) is None
    compact = cpu_kernels.q8_weight(q8_0(8, 64, seed=9))
    assert compact is not None
    with pytest.raises(ValueError, match="features"):
        cpu_kernels.gemm_q8(torch.randn(2, 32), compact)


def test_gemm_nt_takes_rows_with_a_stride(cpu_kernels: CpuKernels) -> None:
    wide = torch.randn(6, 100, generator=_gen(2))
    w = torch.randn(9, 64, generator=_gen(3))
    assert torch.equal(
        cpu_kernels.gemm_nt(wide[:, :64], w), cpu_kernels.gemm_nt(wide[:, :64].contiguous(), w)
    )


# -- the 4-bit base: x @ dequant(W).T ------------------------------------------------------------------


@pytest.mark.parametrize("prefill", [False, True], ids=["decode", "prefill"])
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize(("n", "k", "blocksize"), [(96, 576, 64), (40, 1536, 64), (18, 256, 128)])
def test_gemm_q4_matches_bitsandbytes_dequantized_weight(
    cpu_kernels: CpuKernels, threads: int, quant_type: str, n: int, k: int, blocksize: int, prefill: bool
) -> None:
    """Against float64 products with the weight bitsandbytes itself dequantizes; within each kernel
    (decode: direct tiles below 8 rows, panels from 8; prefill: panels) a row alone and among others
    gives the same bits."""
    packed, state = bnbf.quantize_4bit(
        torch.randn(n, k, generator=_gen(4)), blocksize=blocksize, quant_type=quant_type
    )
    dense = bnbf.dequantize_4bit(packed, state).double()
    x = torch.randn(20, k, generator=_gen(5))
    weight = cpu_kernels.q4_weight(packed, state.absmax, state.code, blocksize, n)
    together = cpu_kernels.gemm_q4(x, weight, prefill)
    torch.testing.assert_close(together.double(), x.double() @ dense.T, rtol=1e-5, atol=1e-3)
    for start, stop in SLICES:
        alone = cpu_kernels.gemm_q4(x[start:stop], weight, prefill)
        assert torch.equal(alone, together[start:stop]), (start, stop)


def test_gemm_q4_refuses_what_it_cannot_read(cpu_kernels: CpuKernels) -> None:
    packed, state = bnbf.quantize_4bit(torch.randn(8, 128, generator=_gen(6)), blocksize=64, quant_type="nf4")
    x = torch.randn(2, 128)
    weight = cpu_kernels.q4_weight(packed, state.absmax, state.code, 64, 8)
    for bad in (
        lambda: cpu_kernels.q4_weight(packed, state.absmax, state.code, 64, 9),  # rows the data cannot hold
        lambda: cpu_kernels.q4_weight(packed, state.absmax[:-1], state.code, 64, 8),
        lambda: cpu_kernels.q4_weight(packed, state.absmax, state.code, 32, 8),  # absmax of another size
        lambda: cpu_kernels.q4_weight(packed, state.absmax, state.code[:8], 64, 8),
        lambda: cpu_kernels.q4_weight(packed.float(), state.absmax, state.code, 64, 8),
        lambda: cpu_kernels.gemm_q4(x[:, :100], weight),
        lambda: cpu_kernels.gemm_q4(x.double(), weight),
        lambda: cpu_kernels.gemm_q4(x.T, weight),
    ):
        with pytest.raises(ValueError):
            bad()
    assert not cpu_kernels.q4_fits(100, 50) and cpu_kernels.q4_fits(128, 64)


def _q4_weights(kernels: CpuKernels, shapes: list[tuple[int, int]], seed: int) -> list[Any]:
    """4-bit NF4 weights (blocksize 64) of `[out, in]` `shapes`."""
    weights = []
    for i, (n, k) in enumerate(shapes):
        packed, state = bnbf.quantize_4bit(
            torch.randn(n, k, generator=_gen(seed + i)), blocksize=64, quant_type="nf4"
        )
        weights.append(kernels.q4_weight(packed, state.absmax, state.code, 64, n))
    return weights


@pytest.mark.parametrize(
    "shapes", [[(576, 576), (192, 576), (192, 576)], [(1536, 576), (1536, 576)], [(45, 128)]]
)
def test_gemm_q4_many_gives_each_weight_gemm_q4s_bits(
    cpu_kernels: CpuKernels, threads: int, shapes: list[tuple[int, int]]
) -> None:
    """A layer's q, k and v (or gate and up, or a column count no tile divides) in one call: each output
    has the bits of its own `gemm_q4` call, for every row count the call takes."""
    weights = _q4_weights(cpu_kernels, shapes, seed=20)
    x = torch.randn(cpu_kernels.q4_many_rows, shapes[0][1], generator=_gen(30))
    for rows in range(1, cpu_kernels.q4_many_rows + 1):
        together = cpu_kernels.gemm_q4_many(x[:rows], weights)
        assert together is not None
        for weight, out in zip(weights, together, strict=True):
            assert torch.equal(out, cpu_kernels.gemm_q4(x[:rows], weight)), rows


def test_gemm_q4_many_leaves_what_it_does_not_take_to_single_calls(cpu_kernels: CpuKernels) -> None:
    weights = _q4_weights(cpu_kernels, [(8, 128)] * (cpu_kernels.q4_many + 1) + [(8, 64)], seed=40)
    x = torch.randn(cpu_kernels.q4_many_rows + 1, 128, generator=_gen(41))
    assert cpu_kernels.gemm_q4_many(x, weights[:2]) is None  # too many rows
    assert cpu_kernels.gemm_q4_many(x[:1], weights[:-1]) is None  # too many weights
    assert cpu_kernels.gemm_q4_many(x[:1], [weights[0], weights[-1]]) is None  # another input width
    with pytest.raises(ValueError):
        cpu_kernels.gemm_q4_many(x[:1].double(), weights[:2])


# -- a prefill's LoRA deltas: x @ w on column slices of the stacked blocks ------------------------------


@pytest.mark.parametrize(("k", "n"), [(64, 16), (576, 40), (16, 1536), (7, 5)])
@pytest.mark.parametrize("accumulate", [False, True])
def test_gemm_nn_matches_float64_and_gives_each_row_its_bits_alone(
    cpu_kernels: CpuKernels, threads: int, k: int, n: int, accumulate: bool
) -> None:
    x = torch.randn(20, k, generator=_gen(7))
    block = torch.randn(k, n + 9, generator=_gen(8))
    w = block[:, 3 : 3 + n]  # a slice of a wider block, as the stack passes an adapter's columns
    start = torch.randn(20, n, generator=_gen(9))
    together = start.clone()
    cpu_kernels.gemm_nn(x, w, together, accumulate)
    expected = x.double() @ w.double() + (start.double() if accumulate else 0)
    torch.testing.assert_close(together.double(), expected, rtol=1e-5, atol=1e-4)
    for lo, hi in SLICES:
        alone = start[lo:hi].clone()
        cpu_kernels.gemm_nn(x[lo:hi], w, alone, accumulate)
        assert torch.equal(alone, together[lo:hi]), (lo, hi)


def test_gemm_nn_checks_shapes(cpu_kernels: CpuKernels) -> None:
    with pytest.raises(ValueError):
        cpu_kernels.gemm_nn(torch.randn(3, 8), torch.randn(9, 4), torch.empty(3, 4), False)
    with pytest.raises(ValueError):
        cpu_kernels.gemm_nn(torch.randn(3, 8), torch.randn(8, 4), torch.empty(2, 4), False)
    with pytest.raises(ValueError):
        cpu_kernels.gemm_nn(torch.randn(3, 8), torch.randn(8, 4).T, torch.empty(3, 8), False)


# -- a decode step's LoRA deltas ----------------------------------------------------------------------


def _case(
    rank: int, inputs: int, outputs: int, slots: list[tuple[int, int]], seed: int = 0
) -> tuple[torch.Tensor, ...]:
    """x, a_t, b_t (three adapters' columns wide, plus a spare column) and a non-zero output to add into."""
    gen = _gen(seed)
    width = 3 * rank + 1
    return (
        torch.randn(len(slots), inputs, generator=gen),
        torch.randn(inputs, width, generator=gen) * 0.1,
        torch.randn(width, outputs, generator=gen) * 0.1,
        torch.randn(len(slots), outputs, generator=gen),
    )


@pytest.mark.parametrize("rank", [16, 32, 8, 12, 3])
@pytest.mark.parametrize(("inputs", "outputs"), [(64, 48), (37, 19)], ids=["aligned", "tails"])
def test_each_row_gets_its_own_adapters_delta(
    cpu_kernels: CpuKernels, rank: int, inputs: int, outputs: int
) -> None:
    """Against float64 `(x @ A.T[:, slot]) @ B.T[slot]`, for ranks and sizes on and off the vector widths;
    rows without an adapter are left exactly as they were."""
    first, second = (rank + 1, 2 * rank + 1), (0, rank)  # one adapter not at column 0
    slots = [first, NONE, second, first, first, second, NONE]
    x, a_t, b_t, out = _case(rank, inputs, outputs, slots)
    expected = out.double().clone()
    for row, (start, stop) in enumerate(slots):
        expected[row] += (x[row].double() @ a_t[:, start:stop].double()) @ b_t[start:stop].double()
    got = out.clone()
    cpu_kernels.lora_decode(got, x, a_t, b_t, decode_items(slots))
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(got[1], out[1]) and torch.equal(got[6], out[6])


def test_a_rows_delta_has_the_same_bits_alone_and_in_any_batch(cpu_kernels: CpuKernels, threads: int) -> None:
    """Alone, paired with another row of its adapter, among others, on one thread or several."""
    slots = [(0, 16), (16, 32), (0, 16), (0, 16), (32, 40), NONE, (16, 32), (0, 16), (32, 40)]
    x, a_t, b_t, out = _case(16, 576, 192, slots, seed=1)
    together = out.clone()
    cpu_kernels.lora_decode(together, x, a_t, b_t, decode_items(slots))
    reversed_ = out.flip(0).clone()
    cpu_kernels.lora_decode(reversed_, x.flip(0), a_t, b_t, decode_items(slots[::-1]))
    for row, slot in enumerate(slots):
        alone = out[row : row + 1].clone()
        cpu_kernels.lora_decode(alone, x[row : row + 1], a_t, b_t, decode_items([slot]))
        assert torch.equal(alone[0], together[row]), row
        assert torch.equal(reversed_.flip(0)[row], together[row]), row


def test_items_outside_the_block_or_the_batch_are_refused_and_change_nothing(cpu_kernels: CpuKernels) -> None:
    slots = [(0, 16), (16, 32)]
    x, a_t, b_t, out = _case(16, 64, 48, slots, seed=2)
    for items in ([[0, 60, 0, -1]], [[8, 4, 0, -1]], [[0, 16, 2, -1]], [[0, 16, 0, 5]], [[-1, 16, 0, -1]]):
        got = out.clone()
        with pytest.raises(ValueError):
            cpu_kernels.lora_decode(got, x, a_t, b_t, torch.tensor(items, dtype=torch.int32))
        assert torch.equal(got, out)
    with pytest.raises(ValueError):
        cpu_kernels.lora_decode(out, x, a_t, b_t.T.contiguous(), decode_items(slots))


def test_rows_of_one_adapter_go_in_pairs() -> None:
    items = decode_items([(0, 4), (4, 8), (0, 4), NONE, (0, 4)])
    assert items.dtype == torch.int32
    assert items.tolist() == [[0, 4, 0, 2], [0, 4, 4, -1], [4, 8, 1, -1]]
    assert decode_items([NONE]).shape == (0, 4)


# -- the library ---------------------------------------------------------------------------------------


# -- attention: softmax(q k^T) v per row, head and query --------------------------------------------


def _attention_inputs(
    rows: int, heads: int, kv_heads: int, q_len: int, keys: int, dim: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random q, k, v and a causal mask in which row 0 is left-padded by 3 positions."""
    gen = _gen(seed)
    q = torch.randn(rows, heads, q_len, dim, generator=gen)
    k, v = (torch.randn(rows, kv_heads, keys, dim, generator=gen) for _ in range(2))
    mask = (
        torch.ones(keys, keys, dtype=torch.bool).tril()[keys - q_len :].expand(rows, 1, q_len, keys).clone()
    )
    mask[0, ..., :3] = False
    return q, k, v, mask


def _attention_float64(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, softcap: float | None
) -> torch.Tensor:
    group = q.shape[1] // k.shape[1]
    k, v = (t.double().repeat_interleave(group, 1) for t in (k, v))
    scores = q.double() @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    probs = torch.softmax(scores.masked_fill(~mask, float("-inf")), -1).nan_to_num(0.0)
    return (probs @ v).transpose(1, 2)


@pytest.mark.parametrize(
    ("heads", "kv_heads", "q_len", "keys", "dim", "softcap"),
    [(9, 3, 1, 40, 64, None), (4, 2, 7, 10, 16, None), (4, 4, 5, 12, 20, 30.0), (2, 1, 1, 3, 5, None)],
    ids=["decode-gqa", "prefill", "softcap-tails", "tiny"],
)
def test_attention_matches_float64_and_gives_each_row_its_bits_alone(
    cpu_kernels: CpuKernels,
    threads: int,
    heads: int,
    kv_heads: int,
    q_len: int,
    keys: int,
    dim: int,
    softcap: float | None,
) -> None:
    """A left-padded row gets, bit for bit, what it gets alone without the padding; padding queries get zeros."""
    q, k, v, mask = _attention_inputs(3, heads, kv_heads, q_len, keys, dim, seed=20)
    scale = dim**-0.5
    together = cpu_kernels.attention(q, k, v, mask, scale, softcap)
    torch.testing.assert_close(
        together.double(), _attention_float64(q, k, v, mask, softcap), rtol=1e-5, atol=1e-5
    )
    alone = cpu_kernels.attention(q[:1], k[:1, :, 3:], v[:1, :, 3:], mask[:1, ..., 3:], scale, softcap)
    rows_alone = [
        cpu_kernels.attention(q[r : r + 1], k[r : r + 1], v[r : r + 1], None, scale, softcap) for r in (1, 2)
    ]
    if keys - q_len < 3:  # the padded row's first queries see nothing: zeros, and no such query alone
        assert torch.equal(
            together[0, : 3 - (keys - q_len)], torch.zeros_like(together[0, : 3 - (keys - q_len)])
        )
        assert torch.equal(alone[:, 3 - (keys - q_len) :], together[:1, 3 - (keys - q_len) :])
    else:
        assert torch.equal(alone, together[:1])
    assert all(torch.equal(got, together[r : r + 1]) for r, got in zip((1, 2), rows_alone, strict=True))


def test_attention_refuses_what_it_cannot_read(cpu_kernels: CpuKernels) -> None:
    q, k, v, mask = _attention_inputs(2, 4, 2, 1, 6, 8, seed=21)
    bad = [
        ((q.double(), k, v, mask), "float32 only"),
        ((q, k[:, :, :5], v, mask), "do not fit"),
        ((q[:, :3], k, v, mask), "do not share"),
        ((q, k.transpose(-1, -2), v.transpose(-1, -2), mask), "do not fit"),
        ((q, k, v, mask.int()), "mask: expected bool"),
        ((torch.randn(2, 4, 7, 8), k, v, None), "causal: 7 queries over 6 keys"),
        ((q, k, torch.randn(2, 2, 8, 6).transpose(-1, -2), mask), "contiguous"),
    ]
    for args, message in bad:
        with pytest.raises(ValueError, match=message):
            cpu_kernels.attention(*args, scale=0.5)


@pytest.mark.parametrize(
    ("rows", "heads", "positions", "dim"), [(1, 9, 1, 64), (3, 4, 5, 16), (2, 8, 7, 128), (2, 3, 2, 6)]
)
def test_rotary_gives_transformers_bits(
    cpu_kernels: CpuKernels, rows: int, heads: int, positions: int, dim: int
) -> None:
    """Against transformers' own `apply_rotary_pos_emb` on a transposed (strided) view, as attention
    layers hold q and k: every bit the same, vector lanes and scalar tails (dim 6) alike."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    x = torch.randn(rows, positions, heads, dim, generator=_gen(50)).transpose(1, 2)
    cos, sin = torch.randn(2, rows, positions, dim, generator=_gen(51))
    expected, _ = apply_rotary_pos_emb(x, x, cos, sin)
    got = cpu_kernels.rotary(x, cos, sin)
    assert got.is_contiguous() and torch.equal(got, expected)


def test_rotary_refuses_what_it_cannot_read(cpu_kernels: CpuKernels) -> None:
    x, cos = torch.randn(1, 2, 3, 8), torch.randn(1, 3, 8)
    for bad in (
        lambda: cpu_kernels.rotary(x.double(), cos, cos),
        lambda: cpu_kernels.rotary(x[..., :7], cos[..., :7], cos[..., :7]),  # an odd dim has no halves
        lambda: cpu_kernels.rotary(x, cos[:, :2], cos[:, :2]),  # positions the tensors disagree on
        lambda: cpu_kernels.rotary(x.transpose(2, 3), cos, cos),  # dim not contiguous
    ):
        with pytest.raises(ValueError):
            bad()


# -- as torch operators ------------------------------------------------------------------------------


def test_a_decode_layers_kernels_compile_into_one_graph_with_the_same_bits(cpu_kernels: CpuKernels) -> None:
    """torch.compile traces the operators (their Meta kernels give the shapes) without a graph break,
    the mutating LoRA delta included, and the compiled function gives the eager bits."""
    packed, state = bnbf.quantize_4bit(
        torch.randn(96, 64, generator=_gen(60)), blocksize=64, quant_type="nf4"
    )
    weight = cpu_kernels.q4_weight(packed, state.absmax, state.code, 64, 96)
    a_t, b_t = torch.randn(64, 8, generator=_gen(61)), torch.randn(8, 96, generator=_gen(62))
    items = decode_items([(0, 8), NONE, (4, 8)])
    cos, sin = torch.randn(2, 3, 1, 32, generator=_gen(63))

    def layer(x: torch.Tensor) -> torch.Tensor:
        y = cpu_kernels.gemm_q4(x, weight)
        cpu_kernels.lora_decode(y, x, a_t, b_t, items)
        q = cpu_kernels.rotary(y.view(3, 1, 3, 32).transpose(1, 2), cos, sin)
        return cpu_kernels.attention(q, q, q, None, scale=0.25) + 1

    x = torch.randn(3, 64, generator=_gen(64))
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(x), layer(x))


def test_on_meta_tensors_the_operators_give_shapes_and_checks_only(cpu_kernels: CpuKernels) -> None:
    meta = torch.device("meta")
    out = cpu_kernels.attention(*(torch.empty(2, 4, 3, 8, device=meta),) * 3, None, scale=0.5)
    assert out.device == meta and tuple(out.shape) == (2, 3, 4, 8)
    x, w = torch.empty(5, 64, device=meta), torch.empty(7, 64, device=meta)
    assert tuple(cpu_kernels.gemm_nt(x, w).shape) == (5, 7)
    with pytest.raises(ValueError, match="features"):
        cpu_kernels.gemm_nt(x, torch.empty(7, 32, device=meta))
    with pytest.raises(ValueError, match="two devices"):
        cpu_kernels.gemm_nt(x, torch.empty(7, 64))


def test_the_library_is_compiled_once_and_then_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    needs_compiler()
    assert kernels_build.build(tmp_path) is not None
    built = list(tmp_path.iterdir())
    assert len(built) == 1 and built[0].suffix == ".so"
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("compiled again"))
    assert kernels_build.build(tmp_path) is not None


def test_a_broken_cached_library_is_built_again(tmp_path: Path) -> None:
    needs_compiler()
    assert kernels_build.build(tmp_path / "first") is not None
    (built,) = (tmp_path / "first").iterdir()
    broken = tmp_path / "second" / built.name  # another path: this process has the first one loaded
    broken.parent.mkdir()
    broken.write_bytes(b"not a library")
    assert kernels_build.build(broken.parent) is not None
    assert broken.read_bytes()[:4] == b"\x7fELF"


def test_the_portable_build_gives_the_same_guarantee(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Compiled for a baseline x86-64 (no AVX: the vector layer's portable branch, as on a CPU this file
    has no intrinsics for), the kernels still give each row its bits alone."""
    needs_compiler()
    import platform

    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("the baseline build is x86-64's")
    monkeypatch.setattr(
        kernels_build,
        "FLAGS",
        tuple(f if f != "-march=native" else "-march=x86-64" for f in kernels_build.FLAGS),
    )
    portable = kernels_build.build(tmp_path)
    assert portable is not None and portable.lanes == 4
    x, w = torch.randn(11, 72, generator=_gen(10)), torch.randn(30, 72, generator=_gen(11))
    together = portable.gemm_nt(x, w)
    assert all(torch.equal(portable.gemm_nt(x[i : i + 1], w), together[i : i + 1]) for i in range(11))
    packed, state = bnbf.quantize_4bit(
        torch.randn(10, 64, generator=_gen(12)), blocksize=64, quant_type="nf4"
    )
    weight = portable.q4_weight(packed, state.absmax, state.code, 64, 10)
    together = portable.gemm_q4(x[:, :64], weight)
    assert all(
        torch.equal(portable.gemm_q4(x[i : i + 1, :64], weight), together[i : i + 1]) for i in range(11)
    )
    torch.testing.assert_close(
        together.double(),
        x[:, :64].double() @ bnbf.dequantize_4bit(packed, state).double().T,
        rtol=1e-5,
        atol=1e-3,
    )


@pytest.mark.parametrize("compiler", ["false", "/nonexistent/cc"], ids=["fails", "missing"])
def test_without_a_working_compiler_there_are_no_kernels_and_no_debris(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, compiler: str
) -> None:
    monkeypatch.setenv("CC", compiler)
    with caplog.at_level(logging.WARNING, logger=kernels_build.__name__):
        assert kernels_build.build(tmp_path) is None
    assert "kernels" in caplog.text
    assert list(tmp_path.iterdir()) == []


# -- only a library this user alone could have written is loaded ---------------------------------------

STUB = """int hotlora_lanes(void) { return 12345; }
int hotlora_register(const char *ns) { return 0; }
"""


def _library_name(tmp_path: Path) -> str:
    """The name `build` gives the library on this machine (the hash of source, flags, compiler, CPU)."""
    assert kernels_build.build(tmp_path / "probe") is not None
    (built,) = (tmp_path / "probe").iterdir()
    return built.name


def _planted_library(path: Path) -> Path:
    """A library with every entry point the loader looks up, whose `hotlora_lanes` says 12345."""
    source = path.with_suffix(".c")
    source.write_text(STUB)
    tools = kernels_build.compilers()
    assert tools is not None
    subprocess.run([tools[0], "-shared", "-fPIC", str(source), "-o", str(path)], check=True)
    return path


def test_the_library_and_its_folder_are_private_whatever_the_umask(tmp_path: Path) -> None:
    needs_compiler()
    before = os.umask(0o002)
    try:
        built = kernels_build.build(tmp_path / "home" / "kernels")
    finally:
        os.umask(before)
    assert built is not None
    assert stat.S_IMODE(os.stat(tmp_path / "home").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(built.path.parent).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(built.path).st_mode) == 0o600


@pytest.mark.parametrize("how", ["writable-by-others", "symlink", "someone-elses"])
def test_a_library_someone_else_could_have_put_there_is_built_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, how: str
) -> None:
    needs_compiler()
    folder = tmp_path / "kernels"
    folder.mkdir(mode=0o700)
    target = folder / _library_name(tmp_path)
    if how == "symlink":
        os.symlink(_planted_library(tmp_path / "elsewhere.so"), target)
    else:
        _planted_library(target)
        if how == "writable-by-others":
            os.chmod(target, 0o666)
        else:
            if os.geteuid() != 0:
                pytest.skip("giving a file to another user needs root")
            os.chown(target, 65534, 65534)
            os.chmod(target, 0o755)
    with caplog.at_level(logging.WARNING, logger=kernels_build.__name__):
        built = kernels_build.build(folder)
    assert built is not None and built.lanes != 12345  # the planted library was not loaded
    assert f"not loading {target}" in caplog.text
    info = os.lstat(target)
    assert stat.S_ISREG(info.st_mode) and info.st_uid == os.geteuid() and stat.S_IMODE(info.st_mode) == 0o600


def test_a_kernels_folder_someone_else_owns_is_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Whoever owns the folder can swap the library between the check and the load: no kernels then,
    and the server starts without them (batch invariance off)."""
    needs_compiler()
    folder = tmp_path / "kernels"
    folder.mkdir(mode=0o700)
    _planted_library(folder / _library_name(tmp_path))
    monkeypatch.setattr(os, "geteuid", lambda: os.stat(folder).st_uid + 1)  # as if another user owned it
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("compiled in someone else's folder"))
    with caplog.at_level(logging.WARNING, logger=kernels_build.__name__):
        assert kernels_build.build(folder) is None
    assert f"not loading the CPU kernels from {folder}" in caplog.text and "owned by uid" in caplog.text


def test_a_kernels_folder_of_ours_open_to_others_is_made_private(tmp_path: Path) -> None:
    needs_compiler()
    folder = tmp_path / "kernels"
    folder.mkdir()
    os.chmod(folder, 0o777)
    assert kernels_build.build(folder) is not None
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
