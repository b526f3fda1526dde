"""A CPU decode step's thread count: probed against fewer threads, the faster kept, outputs unchanged."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
import torch

from hotlora_server.engine.cpu.threads import DecodeThreads, candidates

from support.tiny_server import TINY_NAME, chat_request, collect, running_engine, tiny_settings


class Machine:
    """A clock whose steps cost what `costs` says for the thread count the step runs on."""

    def __init__(self, costs: dict[int, float]) -> None:
        self.costs = costs
        self.now = 0.0
        self.seen: list[int] = []

    def clock(self) -> float:
        return self.now

    def run(self, threads: DecodeThreads, steps: int, rows: int = 1) -> None:
        for _ in range(steps):
            with threads.step(rows):
                count = torch.get_num_threads()
                self.seen.append(count)
                self.now += self.costs[count]


@pytest.fixture(autouse=True)
def _two_threads() -> object:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_the_counts_tried_are_all_cores_then_halvings() -> None:
    assert candidates(1) == [1]
    assert candidates(2) == [2, 1]
    assert candidates(12) == [12, 6, 3, 1]


def test_fewer_threads_are_kept_while_they_are_faster(caplog: pytest.LogCaptureFixture) -> None:
    machine = Machine({2: 0.150, 1: 0.050})  # another program holds a core
    threads = DecodeThreads(2, interval=8, probe=4, clock=machine.clock)
    with caplog.at_level(logging.INFO, "hotlora_server.engine.cpu.threads"):
        machine.run(threads, 8 + 5 + 20)
    assert machine.seen[:13] == [2] * 8 + [1] * 5  # all cores, then the probe (its first step not timed)
    assert threads.current == 1 and machine.seen[13:21] == [1] * 8
    assert "decode threads 2 -> 1" in caplog.text
    assert torch.get_num_threads() == 2  # the step's count does not leak into the rest of the engine


def test_all_cores_come_back_when_the_other_program_stops() -> None:
    machine = Machine({2: 0.150, 1: 0.050})
    threads = DecodeThreads(2, interval=8, probe=4, clock=machine.clock)
    machine.run(threads, 13)
    assert threads.current == 1
    machine.costs = {2: 0.030, 1: 0.050}
    machine.run(threads, 8 + 5)  # the next probe of all cores
    assert threads.current == 2


def test_probes_that_lose_come_ever_more_rarely() -> None:
    machine = Machine({2: 0.030, 1: 0.050})  # a quiet machine
    threads = DecodeThreads(2, interval=8, longest=32, probe=4, clock=machine.clock)
    machine.run(threads, 8 + 5 + 16 + 5 + 32 + 5 + 32 + 5)
    probed = [i for i, count in enumerate(machine.seen) if count == 1]
    assert probed == [*range(8, 13), *range(29, 34), *range(66, 71), *range(103, 108)]
    assert threads.current == 2


def test_on_fewer_cores_probes_keep_coming_at_the_interval() -> None:
    """Fewer threads won while a program ran; it has ended (say, an adapter load beside the batch): all
    cores are tried again within `interval` steps, however often they lost before."""
    machine = Machine({2: 0.150, 1: 0.050})
    threads = DecodeThreads(2, interval=8, longest=1000, probe=4, clock=machine.clock)
    machine.run(threads, 8 + 5 + 3 * (8 + 5))  # fewer wins, then all cores lose three probes
    assert threads.current == 1
    probed = [i for i, count in enumerate(machine.seen) if count == 2 and i >= 13]
    assert probed == [*range(21, 26), *range(34, 39), *range(47, 52)]
    machine.costs = {2: 0.030, 1: 0.050}
    machine.run(threads, 8 + 5)
    assert threads.current == 2


def test_steps_that_slow_down_are_probed_at_once() -> None:
    machine = Machine({2: 0.030, 1: 0.050})
    threads = DecodeThreads(2, interval=8, longest=1000, probe=4, clock=machine.clock)
    machine.run(threads, 8 + 5 + 16 + 5 + 10)  # quiet: the next probe is 22 steps away
    machine.costs = {2: 0.150, 1: 0.050}  # another program starts
    machine.run(threads, 4 + 5)  # four slow steps, then the probe
    assert threads.current == 1


def test_a_probe_across_a_change_of_batch_compares_nothing() -> None:
    machine = Machine({2: 0.150, 1: 0.050})
    threads = DecodeThreads(2, interval=8, probe=4, clock=machine.clock)
    machine.run(threads, 9, rows=1)  # the probe's first step
    machine.run(threads, 1, rows=3)  # a request joined
    assert threads.current == 2 and threads.trying is None


def test_a_fixed_count_is_never_probed() -> None:
    machine = Machine({1: 0.150, 2: 0.050})
    threads = DecodeThreads(2, fixed=1, interval=8, probe=4, clock=machine.clock)
    machine.run(threads, 40)
    assert set(machine.seen) == {1} and threads.fixed


def test_a_step_that_raises_restores_the_count_and_is_not_timed() -> None:
    machine = Machine({2: 0.150, 1: 0.050})
    threads = DecodeThreads(2, interval=0, probe=1, clock=machine.clock)
    machine.run(threads, 1)
    with pytest.raises(RuntimeError), threads.step(1):
        assert torch.get_num_threads() == 1  # the probe
        raise RuntimeError("decode failed")
    assert torch.get_num_threads() == 2
    assert threads.trying == 1 and threads.current == 2  # the probe goes on with the next step


def test_outputs_do_not_depend_on_the_decode_threads(tiny_dir: Path, tmp_path: Path) -> None:
    """The kernels give a row the same bits with any thread count, so the engine's choice changes no text."""
    texts, counts = [], []
    for fixed in (None, 1):
        settings = tiny_settings(tiny_dir, tmp_path, tmp_path / "store", cpu_decode_threads=fixed)
        with running_engine(settings) as engine:
            if not engine._loaded.batch_invariant:
                pytest.skip("no compiled CPU kernels here")
            text, _ = asyncio.run(collect(engine, chat_request(TINY_NAME, "hello there", max_tokens=24)))
            texts.append(text)
            counts.append(engine.stats().decode_threads)
    assert texts[0] == texts[1]
    assert counts == [2, 1]
