"""A prefill sliced between decode steps (`prefill_slices`): the bits of one forward for the prefill and
for the rows decoded in between, and the scheduler slicing beside running rows only where it may."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import DynamicCache

from hotlora_server.engine import scheduler
from hotlora_server.engine.generate import decode_one_token, prefill
from hotlora_server.engine.loader import load_model
from hotlora_server.engine.prefill_slices import PrefillSlices

from support.tiny_server import (
    ADAPTER_NAME,
    TINY_NAME,
    chat_request,
    collect,
    needs_compiler,
    running_engine,
    tiny_settings,
)


def _same(a: DynamicCache, b: DynamicCache) -> bool:
    return all(
        torch.equal(x.keys, y.keys) and torch.equal(x.values, y.values)
        for x, y in zip(a.layers, b.layers, strict=True)
    )


@pytest.mark.parametrize(
    "extra",
    [{"quantize": "none"}, {"quantize": "nf4"}, {"quantize": "nf4", "cpu_4bit": "hotlora"}],
    ids=["float32", "4bit", "4bit-hotlora-kernel"],
)
def test_a_prefill_paused_at_every_layer_gives_one_forwards_bits(
    tiny_dir: Path, tmp_path: Path, extra: dict[str, str]
) -> None:
    """Paused before each decoder layer for a decode step of another stream: the prefill's logits and
    cache, and the other stream's logits, are those each gets without the other."""
    if extra.get("cpu_4bit"):
        needs_compiler()
    model = load_model(tiny_settings(tiny_dir, tmp_path, tmp_path / "store", **extra)).model
    slices = PrefillSlices(model)
    generator = torch.Generator().manual_seed(0)
    prompt = torch.randint(10, 1000, (1, 37), generator=generator)
    other = torch.randint(10, 1000, (1, 5), generator=generator)

    def stream() -> tuple[list[torch.Tensor], Any]:
        """Another stream's decode steps: the logits of each (greedy), and a step function."""
        cache = DynamicCache()
        logits = [prefill(model, other, cache)]

        def step() -> bool:
            logits.append(decode_one_token(model, logits[-1].argmax(-1), cache))
            return True

        return logits, step

    whole_cache = DynamicCache()
    whole = prefill(model, prompt, whole_cache)
    alone, step = stream()
    for _ in slices.layers:
        step()

    sliced_cache, sliced = DynamicCache(), []
    beside, step = stream()
    spent = slices.run(
        lambda: sliced.append(prefill(model, prompt, sliced_cache)), 0.0, time.perf_counter(), step
    )
    assert spent > 0  # the prefill's own time, the pauses not counted

    assert len(slices.layers) > 1 and len(beside) == len(slices.layers) + 1  # a pause before each layer
    assert torch.equal(sliced[0], whole) and _same(sliced_cache, whole_cache)
    assert all(torch.equal(a, b) for a, b in zip(alone, beside, strict=True))


def test_a_failing_prefill_raises_to_the_engine_and_stops_pausing(tiny_dir: Path, tmp_path: Path) -> None:
    model = load_model(tiny_settings(tiny_dir, tmp_path, tmp_path / "store")).model
    slices = PrefillSlices(model)
    pauses: list[int] = []

    def broken() -> None:
        prefill(model, torch.tensor([[1, 2, 3]]), DynamicCache())
        raise RuntimeError("broken prefill")

    with pytest.raises(RuntimeError, match="broken prefill"):
        slices.run(broken, 0.0, time.perf_counter(), lambda: pauses.append(1) is None)
    assert len(pauses) == len(slices.layers)
    prefill(model, torch.tensor([[1, 2, 3]]), DynamicCache())  # outside a sliced run: no pause, no switch
    assert len(pauses) == len(slices.layers)


def _arrivals(engine: Any) -> list[tuple[dict[int, str], int]]:
    """A long base stream, and once it streams, an adapter's seeded n=2 request and a base one."""

    async def run() -> list[tuple[dict[int, str], Any]]:
        long = chat_request(TINY_NAME, "a long story", max_tokens=120, ignore_eos=True)
        others = [
            chat_request(ADAPTER_NAME, "seeded sampling", n=2, temperature=0.9, seed=7),
            chat_request(TINY_NAME, "a somewhat longer prompt about lighthouses and storms at sea"),
        ]
        streaming, chunks = asyncio.Event(), [0]

        async def streamed() -> tuple[dict[int, str], Any]:
            texts: dict[int, str] = {}
            async for event in engine.generate(long):
                if hasattr(event, "text"):
                    texts[event.index] = texts.get(event.index, "") + event.text
                    chunks[0] += 1
                    if chunks[0] > scheduler.STREAMING_TOKENS:  # a stream, not a burst's start
                        streaming.set()
                elif hasattr(event, "completion_tokens"):
                    return texts, event
            raise AssertionError("no usage event")

        task = asyncio.create_task(streamed())
        await streaming.wait()
        results = await asyncio.gather(*(collect(engine, request) for request in others))
        return [await task, *results]

    return [(texts, usage.completion_tokens) for texts, usage in asyncio.run(run())]


def _alone(engine: Any) -> list[tuple[dict[int, str], int]]:
    async def run() -> list[tuple[dict[int, str], Any]]:
        requests = [
            chat_request(TINY_NAME, "a long story", max_tokens=120, ignore_eos=True),
            chat_request(ADAPTER_NAME, "seeded sampling", n=2, temperature=0.9, seed=7),
            chat_request(TINY_NAME, "a somewhat longer prompt about lighthouses and storms at sea"),
        ]
        return [await collect(engine, request) for request in requests]

    return [(texts, usage.completion_tokens) for texts, usage in asyncio.run(run())]


def _counting_pauses(engine: Any, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every prefill beside rows sliced, in slices of no length (a pause before every layer), and a count
    of the decode steps between them."""
    pauses: list[int] = []
    sched = engine._scheduler
    decode_between = sched._decode_between

    def counted() -> bool:
        pauses.append(len(sched.running))
        return bool(decode_between())

    monkeypatch.setattr(scheduler, "SLICE_STEPS", 0.0)
    monkeypatch.setattr(scheduler, "WHOLE_STEPS", 0.0)
    monkeypatch.setattr(sched, "_decode_between", counted)
    return pauses


def test_arrivals_beside_a_stream_are_prefilled_in_slices_with_the_same_outputs(
    tiny_engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    alone = _alone(tiny_engine)
    pauses = _counting_pauses(tiny_engine, monkeypatch)
    assert _arrivals(tiny_engine) == alone
    assert pauses and all(rows >= 1 for rows in pauses)  # decode steps ran in the middle of prefills


def test_with_a_merge_policy_prefills_are_not_sliced(
    tiny_dir: Path, tmp_path: Path, adapter_store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A merge may change what the base computes between two forwards: no decode step in a prefill."""
    with running_engine(tiny_settings(tiny_dir, tmp_path, adapter_store, merge_policy="always")) as engine:
        pauses = _counting_pauses(engine, monkeypatch)
        outputs = _arrivals(engine)
    assert not pauses and outputs[0][1] == 120
