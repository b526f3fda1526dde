"""Memory that must not only grow, on the tiny engine: the KV cache budget, the blend rank cap, blends served
without their sources in memory, and blend builds that hold the running batch for one build at most."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from hotlora_server.engine.kv_budget import KvBudget
from hotlora_server.engine.scheduler import Scheduler
from hotlora_server.errors import InvalidRequestError
from hotlora_server.types import BlendSpec, GenerationRequest

from support.tiny_server import (
    ADAPTER_NAME,
    TINY_CONTEXT,
    TINY_NAME,
    chat_request,
    collect,
    running_engine,
    tiny_settings,
)

SOURCES = ("a", "b", "c", "d")


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One home for the module's engines: the CPU kernels are compiled once."""
    return tmp_path_factory.mktemp("home")


def _kv(tiny_dir: Path, capacity: int = 1) -> KvBudget:
    from transformers import AutoConfig

    return KvBudget.of(AutoConfig.from_pretrained(tiny_dir), torch.float32, capacity)


# -- the KV cache budget ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kv_engine(tiny_dir: Path, adapter_store: Path, home: Path) -> Iterator[Any]:
    """An engine whose KV cache budget holds one request over the whole context and no more."""
    capacity = _kv(tiny_dir).bytes_for(1, TINY_CONTEXT)
    with running_engine(
        tiny_settings(tiny_dir, home, adapter_store, kv_cache_memory_bytes=capacity)
    ) as engine:
        yield engine


def test_the_running_batch_stays_within_the_kv_budget(
    kv_engine: Any, tiny_engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Five requests, a budget for two at a time: the others wait in the queue, the batch's cache never
    holds more than the budget, and every request gets exactly what it gets alone."""
    requests = [
        chat_request(TINY_NAME if i % 2 else ADAPTER_NAME, f"request number {i}", max_tokens=20)
        for i in range(5)
    ]
    reach = [kv_engine._prepare(r).reach for r in requests]
    kv = kv_engine._kv
    assert kv.holds(2, max(reach)) and not kv.holds(3, min(reach))  # what the test is about
    alone = [asyncio.run(collect(tiny_engine, r)) for r in requests]
    held: list[tuple[int, int]] = []  # after each step: bytes of the batch's cache, rows in the batch
    original = Scheduler.step

    def step(self: Scheduler, arrivals: Any) -> None:
        original(self, arrivals)
        held.append((self.stats.kv_cache_bytes, len(self.running)))

    monkeypatch.setattr(Scheduler, "step", step)

    async def together() -> list[Any]:
        return list(await asyncio.gather(*(collect(kv_engine, r) for r in requests)))

    assert asyncio.run(together()) == alone
    assert max(size for size, _ in held) <= kv.capacity
    assert max(rows for _, rows in held) == 2  # the budget, not the queue, set the pace
    deadline = (
        time.monotonic() + 10
    )  # the engine publishes its gauges after the step that ended the last request
    while (kv_engine.stats().kv_cache_usage, kv_engine.stats().kv_cache_bytes) != (0, 0):
        assert time.monotonic() < deadline, kv_engine.stats()
        time.sleep(0.01)


def test_a_request_the_kv_budget_can_never_hold_is_refused_at_once(kv_engine: Any) -> None:
    """Two choices that may each run to the end of the context never fit: 400 at once, not a wait forever."""

    async def first(request: GenerationRequest) -> Any:
        return await anext(kv_engine.generate(request))

    with pytest.raises(InvalidRequestError, match="--kv-cache-memory-bytes") as refused:
        asyncio.run(first(chat_request(TINY_NAME, "two long answers", n=2, max_tokens=None)))
    assert refused.value.param == "n"
    assert asyncio.run(first(chat_request(TINY_NAME, "two short answers", n=2, max_tokens=4)))


def test_a_kv_budget_that_cannot_hold_one_whole_context_stops_the_start(
    tiny_dir: Path, adapter_store: Path, home: Path
) -> None:
    capacity = _kv(tiny_dir).bytes_for(1, TINY_CONTEXT) - 1
    with pytest.raises(RuntimeError, match="--kv-cache-memory-bytes .* cannot hold one request"):
        with running_engine(tiny_settings(tiny_dir, home, adapter_store, kv_cache_memory_bytes=capacity)):
            pass


# -- blends ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def blend_engine(
    tiny_dir: Path, adapter_store: Path, home: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    """Four copies of the r=4 adapter, two slots for adapters and blends, blends up to rank 6."""
    store = tmp_path_factory.mktemp("store")
    for name in SOURCES:
        shutil.copytree(adapter_store / ADAPTER_NAME, store / name)
    settings = tiny_settings(tiny_dir, home, store, max_loaded_adapters=2, max_blend_rank=6)
    with running_engine(settings) as engine:
        yield engine


def _blend(*components: tuple[str, float], method: str = "linear", **sampling: Any) -> GenerationRequest:
    blend = BlendSpec(components=components, method=method)  # type: ignore[arg-type]
    return dataclasses.replace(chat_request(blend.label(), "Tell me a story.", **sampling), blend=blend)


def _built(engine: Any) -> tuple[int, int]:
    """Adapters the engine loaded and blends it built so far."""
    return engine._pool.stats.loads, engine._pool.stats.blends


def test_built_blends_are_served_without_their_sources(blend_engine: Any) -> None:
    """Two blends of four adapters round-robin in two slots (the benchmark's overfull working set, scaled
    down): once built, neither is rebuilt nor are its sources loaded again."""
    pool = blend_engine._pool
    blends = [_blend(("a", 0.5), ("b", 0.5)), _blend(("c", 0.5), ("d", 0.5))]
    first = [asyncio.run(collect(blend_engine, r)) for r in blends]
    churn = _built(blend_engine), pool.stats.evictions
    for _ in range(3):
        assert [asyncio.run(collect(blend_engine, r)) for r in blends] == first
    assert (_built(blend_engine), pool.stats.evictions) == churn
    assert {r.label for r in pool._resident.values()} == {r.model for r in blends}


def test_a_blend_above_the_rank_cap_is_refused(blend_engine: Any) -> None:
    """`cat` adds the ranks (4 + 4 > 6): refused before anything is built, naming the ranks and the flag;
    `svd` keeps the rank of the largest source and is served."""
    built = _built(blend_engine)
    cat = _blend(("a", 0.7), ("b", 0.3), method="cat")
    with pytest.raises(InvalidRequestError, match=r"rank 8 .*a: r=4, b: r=4.*--max-blend-rank 6"):
        asyncio.run(collect(blend_engine, cat))
    with pytest.raises(InvalidRequestError, match="--max-blend-rank 6"):
        asyncio.run(blend_engine.save_blend("too-big", cat.blend))
    assert _built(blend_engine) == built
    texts, usage = asyncio.run(collect(blend_engine, _blend(("a", 0.7), ("b", 0.3), method="svd")))
    assert usage.completion_tokens > 0


@pytest.mark.parametrize("beside_a_stream", [True, False], ids=["beside-a-stream", "idle"])
def test_a_step_attaches_one_blend_at_most(
    blend_engine: Any, monkeypatch: pytest.MonkeyPatch, beside_a_stream: bool
) -> None:
    """Two new blends and a base request arrive together: the first blend's request and the base request
    (behind both blends in the queue) have started before the second blend enters the model, and a stream
    already running gets a token between the two, so nobody waits for a blend it does not use, and no
    step for more than one; the stream's output is what it is alone."""
    from hotlora_server.engine.adapter_pool import AdapterPool
    from hotlora_server.engine.scheduler import Scheduler

    stream_request = chat_request(TINY_NAME, "go on and on", max_tokens=120)
    alone = asyncio.run(collect(blend_engine, stream_request)) if beside_a_stream else None
    weight = 0.2 if beside_a_stream else 0.3  # blends not built yet
    new = [
        _blend(("a", weight), ("c", 1 - weight)),
        _blend(("b", weight), ("d", 1 - weight)),
        chat_request(TINY_NAME, "I need no adapter", max_tokens=4),
    ]
    builds: list[tuple[int, set[str]]] = []  # decode steps so far, the requests started
    started: set[str] = set()
    original, start_rows = AdapterPool._add_blend, Scheduler._start_rows

    def build(self: AdapterPool, blend: BlendSpec, *args: Any) -> Any:
        builds.append((blend_engine._scheduler.stats.decode_steps, set(started)))
        return original(self, blend, *args)

    def start(self: Scheduler, jobs: list[Any], *args: Any) -> None:
        started.update(job.request.request_id for job in jobs)
        start_rows(self, jobs, *args)

    monkeypatch.setattr(AdapterPool, "_add_blend", build)
    monkeypatch.setattr(Scheduler, "_start_rows", start)

    async def scenario() -> tuple[Any, list[Any]]:
        rest = None
        if beside_a_stream:
            stream = blend_engine.generate(stream_request)
            events = [await anext(stream)]
            rest = asyncio.create_task(_drain(stream, events))
        entered, gate = threading.Event(), threading.Event()
        hold = asyncio.create_task(blend_engine.call(lambda _pool: (entered.set(), gate.wait(60))))
        assert await asyncio.to_thread(entered.wait, 30)  # the engine is held between two steps
        tasks = []
        for request in new:  # queued in this order
            tasks.append(asyncio.create_task(collect(blend_engine, request)))
            while blend_engine.waiting() < len(tasks):
                await asyncio.sleep(0.01)
        gate.set()
        await hold
        return (await rest if rest else None), list(await asyncio.gather(*tasks))

    streamed, results = asyncio.run(scenario())
    assert len(builds) == 2 and builds[0][0] < builds[1][0]
    assert {new[0].request_id, new[2].request_id} <= builds[1][1], (
        "requests waited for a blend they do not use"
    )
    assert all(usage.completion_tokens for _, usage in results)
    assert streamed == alone


async def _drain(stream: Any, events: list[Any]) -> tuple[dict[int, str], Any]:
    """The rest of a stream, after `events`: its texts by choice and its usage."""
    async for event in stream:
        events.append(event)
    texts: dict[int, str] = {}
    for event in events[:-1]:
        texts[event.index] = texts.get(event.index, "") + event.text
    return texts, events[-1]
