"""The compiled decode kernel for LoRA deltas: its numbers, its batch invariance, and how it is built."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import pytest
import torch

from hotlora_server.engine import lora_kernel
from hotlora_server.engine.loader import load_model
from hotlora_server.engine.lora_kernel import LoraKernel

from conftest import needs_compiler, tiny_settings

NONE = (0, 0)


def _case(rank: int, inputs: int, outputs: int, slots: list[tuple[int, int]], seed: int = 0) -> tuple[torch.Tensor, ...]:
    """x, a_t, b_t (three adapters' columns wide, plus a spare column) and a non-zero output to add into."""
    gen = torch.Generator().manual_seed(seed)
    width = 3 * rank + 1
    return (
        torch.randn(len(slots), inputs, generator=gen),
        torch.randn(inputs, width, generator=gen) * 0.1,
        torch.randn(width, outputs, generator=gen) * 0.1,
        torch.randn(len(slots), outputs, generator=gen),
    )


@pytest.mark.parametrize("rank", [16, 32, 8, 12, 3])
@pytest.mark.parametrize(("inputs", "outputs"), [(64, 48), (37, 19)], ids=["aligned", "tails"])
def test_each_row_gets_its_own_adapters_delta(lora_decode_kernel: LoraKernel, rank: int, inputs: int, outputs: int) -> None:
    """Against float64 `(x @ A.T[:, slot]) @ B.T[slot]`, for ranks and sizes on and off the vector widths;
    rows without an adapter are left exactly as they were."""
    first, second = (rank + 1, 2 * rank + 1), (0, rank)  # one adapter not at column 0
    slots = [first, NONE, second, first, first, second, NONE]
    x, a_t, b_t, out = _case(rank, inputs, outputs, slots)
    expected = out.double().clone()
    for row, (start, stop) in enumerate(slots):
        expected[row] += (x[row].double() @ a_t[:, start:stop].double()) @ b_t[start:stop].double()
    got = out.clone()
    lora_decode_kernel(got, x, a_t, b_t, LoraKernel.items(slots))
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(got[1], out[1]) and torch.equal(got[6], out[6])


@pytest.mark.parametrize("threads", [1, 2])
def test_a_rows_delta_has_the_same_bits_alone_and_in_any_batch(lora_decode_kernel: LoraKernel, threads: int) -> None:
    """Alone, paired with another row of its adapter, among others, on one thread or several."""
    slots = [(0, 16), (16, 32), (0, 16), (0, 16), (32, 40), NONE, (16, 32), (0, 16), (32, 40)]
    x, a_t, b_t, out = _case(16, 576, 192, slots, seed=1)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        together = out.clone()
        lora_decode_kernel(together, x, a_t, b_t, LoraKernel.items(slots))
        for row, slot in enumerate(slots):
            alone = out[row : row + 1].clone()
            lora_decode_kernel(alone, x[row : row + 1], a_t, b_t, LoraKernel.items([slot]))
            assert torch.equal(alone[0], together[row]), row
            reversed_ = out.flip(0).clone()
            lora_decode_kernel(reversed_, x.flip(0), a_t, b_t, LoraKernel.items(slots[::-1]))
            assert torch.equal(reversed_.flip(0)[row], together[row]), row
    finally:
        torch.set_num_threads(before)


def test_rows_of_one_adapter_go_in_pairs() -> None:
    items = LoraKernel.items([(0, 4), (4, 8), (0, 4), NONE, (0, 4)])
    assert items.dtype == torch.int32
    assert items.tolist() == [[0, 4, 0, 2], [0, 4, 4, -1], [4, 8, 1, -1]]
    assert LoraKernel.items([NONE]).shape == (0, 4)


def test_the_library_is_compiled_once_and_then_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    needs_compiler()
    assert lora_kernel.build(tmp_path) is not None
    built = list(tmp_path.iterdir())
    assert len(built) == 1 and built[0].suffix == ".so"
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("compiled again"))
    assert lora_kernel.build(tmp_path) is not None


def test_a_broken_cached_library_is_built_again(tmp_path: Path) -> None:
    needs_compiler()
    assert lora_kernel.build(tmp_path / "first") is not None
    (built,) = (tmp_path / "first").iterdir()
    broken = tmp_path / "second" / built.name  # another path: this process has the first one loaded
    broken.parent.mkdir()
    broken.write_bytes(b"not a library")
    assert lora_kernel.build(broken.parent) is not None
    assert broken.read_bytes()[:4] == b"\x7fELF"


@pytest.mark.parametrize("compiler", ["false", "/nonexistent/cc"], ids=["fails", "missing"])
def test_without_a_working_compiler_there_is_no_kernel_and_no_debris(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, compiler: str
) -> None:
    monkeypatch.setenv("CC", compiler)
    with caplog.at_level(logging.WARNING, logger=lora_kernel.__name__):
        assert lora_kernel.build(tmp_path) is None
    assert "through torch" in caplog.text
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("flag", "expected"), [(True, True), (False, False)])
def test_the_server_uses_the_kernel_on_cpu_unless_told_not_to(tiny_dir: Path, tmp_path: Path, flag: bool, expected: bool) -> None:
    needs_compiler()
    loaded = load_model(tiny_settings(tiny_dir, tmp_path, tmp_path / "store", cpu_lora_kernel=flag))
    assert (loaded.lora_kernel is not None) == expected
    assert any((tmp_path / "kernels").glob("*.so")) == expected
