"""Continuous batching on the tiny llama: the left-padded batch cache, the scheduler, the engine's outputs.

A row's logits in a padded mixed batch must be those it gets alone (stacked LoRA: test_server_lora_stack).
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import PeftModel
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from hotlora_server.engine.batch_cache import ROOM, BatchCache, _GrowingLayer
from hotlora_server.errors import HotloraError
from hotlora_server.types import BlendSpec, Usage

from support.tiny_server import ADAPTER_NAME, TINY_NAME, chat_request, collect, running_engine, tiny_settings


def test_the_pool_stacks_blends_after_plain_adapters(
    tiny_dir: Path, tmp_path: Path, adapter_store: Path
) -> None:
    """Loaded in the order x, y, the blend x+y, z: the stacked blocks hold x, y, z, then the blend."""
    store = tmp_path / "store"
    for name in ("x", "y", "z"):
        shutil.copytree(adapter_store / ADAPTER_NAME, store / name)
    blend = BlendSpec(components=(("x", 0.5), ("y", 0.5)))
    with running_engine(tiny_settings(tiny_dir, tmp_path, store)) as engine:
        asyncio.run(collect(engine, dataclasses.replace(chat_request(blend.label(), "Hi"), blend=blend)))
        asyncio.run(collect(engine, chat_request("z", "Hi")))
        pool = engine._pool
        assert pool._stack.covers(pool.model, set())
        labels = {r.key: r.label for r in pool._resident.values()}
        slots = pool._stack._slots
        assert [
            labels[key] for key in sorted(slots, key=lambda key: (slots[key].block, slots[key].start))
        ] == ["x", "y", "z", blend.label()]


def test_a_growing_layer_appends_in_place_and_follows_any_reassignment() -> None:
    """The batch cache's layers hold what `DynamicLayer` holds, through decode steps, rows leaving and
    columns trimmed; a step writes into the room after the cache instead of copying it."""
    gen = torch.Generator().manual_seed(0)

    def kv(rows: int, columns: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randn(rows, 2, columns, 4, generator=gen), torch.randn(
            rows, 2, columns, 4, generator=gen
        )

    plain = DynamicLayer()
    plain.update(*kv(3, 5))
    grown = _GrowingLayer(plain)

    def steps(count: int, rows: int) -> set[int]:
        buffers = set()
        for _ in range(count):
            new = kv(rows, 1)
            expected, got = plain.update(*new), grown.update(*new)
            assert all(torch.equal(a, b) for a, b in zip(expected, got, strict=True))
            buffers.add(grown.keys.data_ptr())
        return buffers

    assert len(steps(ROOM, 3)) == 1  # one buffer, with room for every step
    assert len(steps(2, 3)) == 2  # full: the first step moves the cache into a larger buffer
    for layer in (plain, grown):  # as when rows leave: a row dropped, then columns no row needs
        layer.batch_select_indices(torch.tensor([0, 2]))
        layer.keys, layer.values = layer.keys[:, :, 2:], layer.values[:, :, 2:]
    assert len(steps(3, 2)) == 1


@torch.inference_mode()
def test_padded_batch_matches_each_row_alone(peft_model: PeftModel) -> None:
    """Rows of different lengths join and leave a running batch; every step's logits equal the row alone."""
    model = peft_model.get_base_model()
    gen = torch.Generator().manual_seed(3)
    prompts = [torch.randint(0, 1000, (1, n), generator=gen) for n in (9, 3, 14, 5)]

    def alone(prompt: torch.Tensor, steps: list[int]) -> list[torch.Tensor]:
        cache = DynamicCache(config=model.config)
        model(input_ids=prompt, cache=cache)
        out = []
        for token in steps:
            out.append(model(input_ids=torch.tensor([[token]]), cache=cache).logits[0, -1])
        return out

    batch = BatchCache()
    tokens = [[11, 12, 13, 14, 15, 16], [21, 22, 23, 24, 25, 26], [31, 32, 33, 34], [41, 42, 43, 44, 45]]
    expected = [alone(p, t) for p, t in zip(prompts, tokens, strict=True)]
    running: list[int] = []  # prompt index of each batch row
    done = [0, 0, 0, 0]
    schedule = {0: [0, 1], 1: [2], 3: [3]}  # step -> prompts joining before it
    for step in range(12):
        for index in schedule.get(step, []):
            cache = DynamicCache(config=model.config)
            model(input_ids=prompts[index], cache=cache)
            batch.join(cache, torch.zeros(1, dtype=torch.long))
            running.append(index)
        leaving = [row for row, index in enumerate(running) if done[index] == len(tokens[index])]
        if leaving:
            batch.keep([row for row in range(len(running)) if row not in leaving])
            running = [index for row, index in enumerate(running) if row not in leaving]
        if not running:
            break
        ids = torch.tensor([[tokens[index][done[index]]] for index in running])
        mask, positions = batch.step_inputs(torch.device("cpu"))
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=batch.cache).logits[
            :, -1
        ]
        batch.advance()
        for row, index in enumerate(running):
            torch.testing.assert_close(logits[row], expected[index][done[index]], rtol=1e-4, atol=1e-4)
            done[index] += 1
    assert done == [len(t) for t in tokens]
    assert batch.rows == 0 and batch.cache is None


REQUESTS = [
    (TINY_NAME, "hello there", {}),
    (ADAPTER_NAME, "a somewhat longer prompt about lighthouses and storms at sea", {}),
    (TINY_NAME, "x", {"max_tokens": 3}),
    (ADAPTER_NAME, "seeded sampling", {"temperature": 0.9, "seed": 7, "n": 2}),
    (TINY_NAME, "stop early", {"stop": ("e",)}),
    (ADAPTER_NAME, "short", {"max_tokens": 20}),
]


def _outputs(
    engine: Any, concurrently: bool, cases: list[tuple[str, str, dict[str, Any]]] = REQUESTS
) -> list[tuple[dict[int, str], int]]:
    async def run() -> list[tuple[dict[int, str], Usage]]:
        requests = [chat_request(model, text, **extra) for model, text, extra in cases]
        if concurrently:
            return list(await asyncio.gather(*(collect(engine, r) for r in requests)))
        return [await collect(engine, r) for r in requests]

    return [(texts, usage.completion_tokens) for texts, usage in asyncio.run(run())]


def test_outputs_do_not_depend_on_the_batch(tiny_engine: Any) -> None:
    """Greedy and seeded rows, base and adapter, stops and budgets: alone == all in one batch."""
    alone = _outputs(tiny_engine, concurrently=False)
    assert len(alone[3][0]) == 2 and alone[3][0][0] != alone[3][0][1]  # n=2 rows sample apart
    assert alone[2][1] == 3  # max_tokens honoured
    assert _outputs(tiny_engine, concurrently=True) == alone


@pytest.mark.parametrize(
    "extra", [{"max_num_batched_tokens": 16}, {"max_num_seqs": 2}], ids=["chunked-prefill", "queued"]
)
def test_chunked_prefill_and_waiting_rows_give_the_same_outputs(
    tiny_engine: Any, tiny_dir: Path, adapter_store: Path, tmp_path: Path, extra: dict[str, int]
) -> None:
    from hotlora_server.engine.engine import Engine

    expected = _outputs(tiny_engine, concurrently=True)
    engine = Engine(tiny_settings(tiny_dir, tmp_path, adapter_store, **extra))
    engine.start()
    try:
        while not engine.is_ready():
            assert engine.error is None
            engine._ready.wait(0.05)
        assert _outputs(engine, concurrently=True) == expected
    finally:
        engine.stop()


def test_a_cancelled_stream_leaves_and_the_others_finish(tiny_engine: Any) -> None:
    async def run() -> tuple[dict[int, str], Usage]:
        long = chat_request(TINY_NAME, "never mind", max_tokens=200)
        stream = tiny_engine.generate(long)
        await anext(stream)
        other = asyncio.create_task(
            collect(tiny_engine, chat_request(ADAPTER_NAME, "still here", max_tokens=30))
        )
        await stream.aclose()  # the client went away
        return await other

    texts, usage = asyncio.run(run())
    assert usage.completion_tokens > 0 and texts[0]
    assert tiny_engine._scheduler.idle


def test_requests_beyond_max_queue_get_429_at_once(
    tiny_dir: Path, adapter_store: Path, tmp_path: Path, openai_error: Any
) -> None:
    """With one waiting place taken, the next request is refused at once with Retry-After; the queued
    one is served when the engine moves on."""

    from fastapi.testclient import TestClient

    from hotlora_server.api import create_app
    from hotlora_server.engine.engine import Engine

    engine = Engine(tiny_settings(tiny_dir, tmp_path, adapter_store, max_queue=1))
    engine.start()
    entered, gate = threading.Event(), threading.Event()
    results: list[Any] = []

    def hold_engine() -> None:  # a management task occupies the engine thread until `gate` opens
        asyncio.run(engine.call(lambda _pool: (entered.set(), gate.wait(60))))

    def queued_request() -> None:
        results.append(asyncio.run(collect(engine, chat_request(TINY_NAME, "I wait", max_tokens=5))))

    try:
        assert engine._ready.wait(120)
        holder = threading.Thread(target=hold_engine)
        holder.start()
        assert entered.wait(30)
        queued = threading.Thread(target=queued_request)
        queued.start()
        while engine.waiting() < 1:
            queued.join(0.01)
        body = {"model": TINY_NAME, "messages": [{"role": "user", "content": "refused"}], "max_tokens": 5}
        with TestClient(create_app(engine)) as client:
            refused = client.post("/v1/chat/completions", json=body)
        error = openai_error(refused, 429, code="overloaded")
        assert "--max-queue" in error["message"] and refused.headers["Retry-After"] == "1"
        gate.set()
        holder.join(30)
        queued.join(30)
        assert results and results[0][1].completion_tokens > 0
    finally:
        gate.set()
        engine.stop()


SHARED = "Read this log of the lighthouse and the storms at sea, every night of the winter, then answer. " * 3
PREFIXED = [
    *REQUESTS,
    (TINY_NAME, SHARED + "Which night was worst?", {}),
    (ADAPTER_NAME, SHARED + "Which night was calmest?", {}),
    (TINY_NAME, SHARED + "How many storms?", {"max_tokens": 5}),
]


@pytest.mark.parametrize("quantize", ["none", "nf4"])
def test_prefix_cache_gives_the_outputs_of_a_full_prefill(
    tiny_dir: Path, adapter_store: Path, tmp_path: Path, quantize: str
) -> None:
    """Prompts sharing the system turn, some also a long user text, reuse its KV (cached prefixes of different
    lengths in one prefill, per adapter); the outputs are those without the cache."""
    with running_engine(
        tiny_settings(tiny_dir, tmp_path, adapter_store, quantize=quantize, enable_prefix_caching=False)
    ) as engine:
        expected = _outputs(engine, concurrently=True, cases=PREFIXED)
        assert engine._scheduler._prefix is None
    with running_engine(tiny_settings(tiny_dir, tmp_path, adapter_store, quantize=quantize)) as engine:
        stats = engine._scheduler.stats
        assert _outputs(engine, concurrently=False, cases=PREFIXED) == expected  # alone: fills, then hits
        filled = stats.prefix_cache_hit_tokens
        assert filled > 16 * len(PREFIXED)  # the shared user text too, not only the system turn
        assert _outputs(engine, concurrently=True, cases=PREFIXED) == expected  # all in one batch
        assert stats.prefix_cache_hit_tokens > filled


def test_a_cached_prefix_costs_the_prefill_budget_nothing(
    tiny_dir: Path, adapter_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As in vLLM, only the tokens a prompt computes count against --max-num-batched-tokens: prompts that
    fit one step only without their cached prefix are still prefilled together, in one forward."""
    from hotlora_server.engine.scheduler import Scheduler

    prompts = [
        SHARED + question for question in ("Which night was worst?", "Which night was calmest?", "How many?")
    ]
    with running_engine(tiny_settings(tiny_dir, tmp_path, adapter_store)) as engine:
        lengths = [asyncio.run(collect(engine, chat_request(TINY_NAME, p)))[1].prompt_tokens for p in prompts]
    groups: list[int] = []
    prefill_group = Scheduler._prefill_group
    monkeypatch.setattr(
        Scheduler,
        "_prefill_group",
        lambda self, jobs: (groups.append(len(jobs)), prefill_group(self, jobs))[1],
    )

    async def burst(engine: Any) -> None:  # all three queued while a management task holds the engine thread
        gate = threading.Event()
        holder = asyncio.create_task(engine.call(lambda _pool: gate.wait(60)))
        tasks = [asyncio.create_task(collect(engine, chat_request(TINY_NAME, p))) for p in prompts]
        while engine._mailbox.queued() < len(prompts):
            await asyncio.sleep(0.01)
        gate.set()
        await holder
        await asyncio.gather(*tasks)

    with running_engine(
        tiny_settings(tiny_dir, tmp_path, adapter_store, max_num_batched_tokens=max(lengths))
    ) as engine:
        asyncio.run(collect(engine, chat_request(TINY_NAME, prompts[0])))  # caches the shared blocks
        cached = engine._scheduler.stats.prefix_cache_hit_tokens
        asyncio.run(burst(engine))
        hits = engine._scheduler.stats.prefix_cache_hit_tokens - cached
    assert (
        sum(lengths[:2]) > max(lengths) >= sum(lengths) - hits
    )  # two do not fit in full; all three do cached
    assert groups == [1, 3]


class _HeldPrefills:
    """Records the engine's prefill groups and decode steps, holding prefill `i` (of the first `count`)
    until `release[i]` is set."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, count: int = 1) -> None:
        from hotlora_server.engine.scheduler import Scheduler

        self.steps: list[str] = []
        self.started = [threading.Event() for _ in range(count)]
        self.release = [threading.Event() for _ in range(count)]
        prefill_group, decode = Scheduler._prefill_group, Scheduler._decode

        def watched_prefill(scheduler: Scheduler, jobs: list[Any]) -> None:
            index = sum(step.startswith("prefill") for step in self.steps)
            self.steps.append(f"prefill {len(jobs)}")
            if index < count:
                self.started[index].set()
                assert self.release[index].wait(60)
            prefill_group(scheduler, jobs)

        def watched_decode(scheduler: Scheduler) -> None:
            self.steps.append(f"decode {len(scheduler.running)}")
            decode(scheduler)

        monkeypatch.setattr(Scheduler, "_prefill_group", watched_prefill)
        monkeypatch.setattr(Scheduler, "_decode", watched_decode)

    async def wait_started(self, index: int) -> None:
        while not self.started[index].is_set():
            await asyncio.sleep(0.01)


async def _queued(engine: Any, count: int) -> None:
    while engine._mailbox.queued() < count:
        await asyncio.sleep(0.01)


def test_prompts_arriving_during_a_prefill_are_prefilled_before_the_decode_step(
    tiny_dir: Path, tmp_path: Path, adapter_store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A burst whose first request finds the engine idle: the rest, queued while that one prefills, get the
    step's remaining budget at once instead of waiting a decode step."""
    held = _HeldPrefills(monkeypatch)

    async def burst(engine: Any) -> list[tuple[dict[int, str], Usage]]:
        first = asyncio.create_task(collect(engine, chat_request(TINY_NAME, "Tell me a story.")))
        await held.wait_started(0)
        rest = [
            asyncio.create_task(collect(engine, chat_request(TINY_NAME, f"Count to {i}."))) for i in range(3)
        ]
        await _queued(engine, len(rest))
        held.release[0].set()
        return await asyncio.gather(first, *rest)

    with running_engine(tiny_settings(tiny_dir, tmp_path, adapter_store)) as engine:
        results = asyncio.run(burst(engine))
    assert held.steps[:3] == ["prefill 1", "prefill 3", "decode 4"]
    assert all(usage.completion_tokens == 12 for _, usage in results)


def test_a_step_prefills_at_most_twice_before_decoding(
    tiny_dir: Path, tmp_path: Path, adapter_store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A trickle of arrivals, one during each prefill: the third waits for the running rows' decode step."""
    held = _HeldPrefills(monkeypatch, count=2)

    async def trickle(engine: Any) -> list[tuple[dict[int, str], Usage]]:
        tasks = []
        for index, prompt in enumerate(("Tell me a story.", "Count to 3.", "Name a colour.")):
            tasks.append(asyncio.create_task(collect(engine, chat_request(TINY_NAME, prompt))))
            if index:
                await _queued(engine, 1)
                held.release[index - 1].set()
            if index < 2:
                await held.wait_started(index)
        return await asyncio.gather(*tasks)

    with running_engine(tiny_settings(tiny_dir, tmp_path, adapter_store)) as engine:
        results = asyncio.run(trickle(engine))
    assert held.steps[:4] == ["prefill 1", "prefill 1", "decode 2", "prefill 1"]
    assert all(usage.completion_tokens == 12 for _, usage in results)


def test_a_stop_taken_between_prefills_still_stops_the_engine(
    tiny_dir: Path, tmp_path: Path, adapter_store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = _HeldPrefills(monkeypatch)

    async def stop_during_prefill(engine: Any) -> BaseException:
        first = asyncio.create_task(collect(engine, chat_request(TINY_NAME, "Tell me a story.")))
        await held.wait_started(0)
        stopping = threading.Thread(target=engine.stop, kwargs={"timeout": 60})
        stopping.start()
        await _queued(engine, 1)  # the stop is queued behind the running prefill
        held.release[0].set()
        await asyncio.to_thread(stopping.join, 60)
        with pytest.raises(HotloraError) as failed:
            await first
        return failed.value

    with running_engine(tiny_settings(tiny_dir, tmp_path, adapter_store)) as engine:
        error = asyncio.run(stop_during_prefill(engine))
        assert not engine._thread.is_alive()
    assert "shutting down" in str(error)
