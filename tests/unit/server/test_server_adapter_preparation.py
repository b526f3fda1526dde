"""Cold adapters and blends are prepared beside the running batch (`engine/preparing.py`, `staging.py`).

While a cold adapter or blend is read and built by PEFT in the preparing thread, the engine thread keeps
decoding the running streams; the request that needs it waits for it alone, and is then served exactly as
if the adapter had been loaded by PEFT into the served model itself. A preparation that fails fails only
its requests, with the error they got before, and leaves the pool as it was.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from support.tiny_server import (
    ADAPTER_NAME,
    TINY_NAME,
    chat_request,
    collect,
    running_engine,
    save_tiny_adapter,
    tiny_settings,
)

STEPS_DURING_PREPARATION = 5  # decode steps the running stream must get while a preparation is held


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("home")


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory, real_tokenizer: Any) -> Path:
    """Adapters to register: `cold` and `other` (r=8, all linear layers), and `odd`."""
    folder = tmp_path_factory.mktemp("library")
    save_tiny_adapter(folder / "cold", real_tokenizer, seed=5, r=8, target_modules="all-linear")
    save_tiny_adapter(folder / "other", real_tokenizer, seed=6, r=8, target_modules="all-linear")
    save_tiny_adapter(  # r=4; the registry counts the rank of a pattern that selects nothing, PEFT does not
        folder / "odd", real_tokenizer, seed=7, r=4, target_modules="all-linear", rank_pattern={"nothing": 8}
    )
    return folder


@pytest.fixture
def engine(tiny_dir: Path, adapter_store: Path, home: Path, library: Path, tmp_path: Path) -> Iterator[Any]:
    """A fresh engine whose store holds the warm adapter (loaded first: the model is wrapped by PEFT) and
    the library's adapters, not loaded."""
    from hotlora_adapters import AdapterStore

    store = tmp_path / "store"
    store.mkdir()
    shutil.copytree(adapter_store / ADAPTER_NAME, store / "warm")
    for source in library.iterdir():
        AdapterStore(store).register(source.name, source)
    with running_engine(tiny_settings(tiny_dir, home, store, max_blend_rank=16)) as running:
        asyncio.run(collect(running, chat_request("warm", "Hello")))
        yield running


def _held(engine: Any, monkeypatch: pytest.MonkeyPatch, method: str) -> list[bool]:
    """Make `Skeleton.<method>` (the preparing thread's PEFT work) wait, before it runs, until the engine
    has run `STEPS_DURING_PREPARATION` more decode steps; the list gets, per preparation, whether it did.
    Were the preparation in the engine thread, no step could run meanwhile."""
    from hotlora_server.engine.staging import Skeleton

    original: Callable[..., Any] = getattr(Skeleton, method)
    advanced: list[bool] = []

    def held(self: Any, *args: Any) -> Any:
        stats = engine._scheduler.stats
        goal = stats.decode_steps + STEPS_DURING_PREPARATION
        deadline = time.monotonic() + 30
        while stats.decode_steps < goal and time.monotonic() < deadline:
            time.sleep(0.005)
        advanced.append(stats.decode_steps >= goal)
        return original(self, *args)

    monkeypatch.setattr(Skeleton, method, held)
    return advanced


def _beside_a_stream(engine: Any, request: Any) -> tuple[Any, Any]:
    """Run `request` while a long base stream is decoding; both results."""
    stream_request = chat_request(TINY_NAME, "go on and on", max_tokens=80, ignore_eos=True)

    async def scenario() -> tuple[Any, Any]:
        stream = asyncio.create_task(collect(engine, stream_request))
        while engine._scheduler.stats.decode_steps < 2:
            await asyncio.sleep(0.01)
        answer = await collect(engine, request)
        return await stream, answer

    return asyncio.run(scenario())


def _blend(*components: tuple[str, float], method: str = "cat") -> Any:
    from hotlora_server.types import BlendSpec

    blend = BlendSpec(components=components, method=method)  # type: ignore[arg-type]
    return dataclasses.replace(chat_request(blend.label(), "Tell me a story."), blend=blend)


def test_a_stream_keeps_decoding_while_a_cold_adapter_is_prepared(
    engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stream decodes while `cold` is prepared, and its output is what it is alone; `cold` is then
    served with the tokens PEFT's own load into the served model gives."""
    alone = asyncio.run(
        collect(engine, chat_request(TINY_NAME, "go on and on", max_tokens=80, ignore_eos=True))
    )
    advanced = _held(engine, monkeypatch, "adapter")
    request = chat_request("cold", "Tell me a story.")
    streamed, prepared = _beside_a_stream(engine, request)
    assert advanced == [True]
    assert streamed == alone
    assert prepared[1].completion_tokens > 0
    monkeypatch.undo()

    def reload(pool: Any) -> None:  # dropped, then loaded by PEFT into the served model itself
        pool.invalidate("cold")
        pool.load("cold")

    asyncio.run(engine.call(reload))
    assert asyncio.run(collect(engine, request)) == prepared


def test_a_load_through_the_api_is_prepared_beside_the_batch(
    engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`POST /v1/adapters` (the engine's `load_adapter`) has the adapter prepared while a stream decodes,
    and answers once it is in memory."""
    advanced = _held(engine, monkeypatch, "adapter")

    async def scenario() -> Any:
        stream = asyncio.create_task(
            collect(engine, chat_request(TINY_NAME, "go on", max_tokens=80, ignore_eos=True))
        )
        while engine._scheduler.stats.decode_steps < 2:
            await asyncio.sleep(0.01)
        info = await engine.load_adapter("cold")
        await stream
        return info

    assert asyncio.run(scenario()).status == "resident"
    assert advanced == [True]


def test_a_blend_is_built_beside_the_batch(engine: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A `cat` blend of two cold adapters is built while the stream decodes, without loading its sources
    into the model, and serves the tokens of the same blend built there by PEFT."""
    request = _blend(("cold", 0.7), ("other", 0.3))
    advanced = _held(engine, monkeypatch, "blend")
    loads = engine._pool.stats.loads
    _, prepared = _beside_a_stream(engine, request)
    assert advanced == [True]
    assert engine._pool.stats.loads == loads
    monkeypatch.undo()

    def rebuild(pool: Any) -> None:  # the same blend, built by PEFT in the served model
        for resident in [r for r in pool._resident.values() if r.kind == "blend"]:
            pool._drop(resident)
        pool._build_blend(request.blend)

    asyncio.run(engine.call(rebuild))
    assert asyncio.run(collect(engine, request)) == prepared


def test_a_reregistered_adapter_is_prepared_again(engine: Any, library: Path, tmp_path: Path) -> None:
    """Re-registering `cold` with other weights: the next request is served with the new ones."""
    from hotlora_adapters import AdapterStore

    request = chat_request("cold", "Tell me a story.")
    before = asyncio.run(collect(engine, request))
    store = AdapterStore(engine._settings.adapters_dir)
    store.register("cold", library / "other", overwrite=True)
    expected = asyncio.run(collect(engine, dataclasses.replace(request, model="other")))
    assert asyncio.run(collect(engine, request)) == expected != before


def test_a_failing_preparation_fails_only_its_requests(engine: Any) -> None:
    """A `linear` blend that the registry lets through (equal ranks as it counts them) but PEFT refuses
    (unequal ranks as PEFT counts them) fails in the preparing thread: its request gets the 400 it got
    when PEFT built blends in the engine thread, a stream beside it is unharmed, and nothing is added to
    the pool or left in the served model."""
    from hotlora_server.errors import InvalidRequestError

    pool = engine._pool
    before = (dict(pool._resident), set(pool.model.peft_config), pool.stats.built)
    alone = asyncio.run(
        collect(engine, chat_request(TINY_NAME, "go on and on", max_tokens=80, ignore_eos=True))
    )
    request = _blend(("odd", 0.5), ("other", 0.5), method="linear")

    async def scenario() -> tuple[Any, BaseException | None]:
        stream = asyncio.create_task(
            collect(engine, chat_request(TINY_NAME, "go on and on", max_tokens=80, ignore_eos=True))
        )
        while engine._scheduler.stats.decode_steps < 2:
            await asyncio.sleep(0.01)
        try:
            await collect(engine, request)
        except InvalidRequestError as exc:
            return await stream, exc
        return await stream, None

    streamed, error = asyncio.run(scenario())
    assert isinstance(error, InvalidRequestError) and error.param == "model"
    assert "cannot blend odd*0.5+other*0.5 with 'linear'" in str(error) and "same r" in str(error)
    assert streamed == alone
    assert (dict(pool._resident), set(pool.model.peft_config), pool.stats.built) == before


def _preparing(turns: Any, work: Callable[[], None]) -> tuple[Any, Any]:
    """`work` run as a preparation in its own thread; the thread and an event set once it runs."""
    import threading

    running = threading.Event()

    def prepare() -> None:
        with turns.preparation():
            running.set()
            work()

    thread = threading.Thread(target=prepare, daemon=True)
    thread.start()
    assert running.wait(10)
    return thread, running


def test_a_preparation_pauses_while_the_engine_thread_steps() -> None:
    import threading

    from hotlora_server.engine.preparing import Turns

    turns, calls, done = Turns(), [0], threading.Event()

    def work() -> None:
        while not done.is_set():  # a C call: a pause point
            calls[0] += 1

    thread, _ = _preparing(turns, work)
    with turns.step(0.0):
        time.sleep(0.05)  # it reaches a pause point
        before = calls[0]
        time.sleep(0.2)
        assert calls[0] == before
    time.sleep(0.05)
    assert calls[0] > before  # on again between steps
    done.set()
    thread.join(10)
    assert not thread.is_alive()


def test_a_step_waiting_for_a_lock_a_paused_preparation_holds_is_not_a_deadlock() -> None:
    import threading

    from hotlora_server.engine.preparing import WAIT_LIMIT, Turns

    turns, lock, holding = Turns(), threading.Lock(), threading.Event()

    def work() -> None:
        with lock:
            holding.set()
            time.sleep(0.1)  # the step starts meanwhile; then the preparation pauses, holding the lock

    thread, _ = _preparing(turns, work)
    assert holding.wait(10)
    started = time.monotonic()
    with turns.step(0.0), lock:
        waited = time.monotonic() - started
    thread.join(10)
    assert not thread.is_alive() and waited >= WAIT_LIMIT  # it went on after its longest wait


def test_the_engine_thread_waiting_for_a_preparation_in_a_step_lets_it_run() -> None:
    """A management call in a step may wait for a preparation (`Preparations.take`): it must not pause."""
    import threading

    from hotlora_server.engine.preparing import Turns

    turns, go, done = Turns(), threading.Event(), threading.Event()

    def work() -> None:
        go.wait()
        for _ in range(100):  # a hundred pause points, each up to WAIT_LIMIT if it paused
            time.monotonic()
        done.set()

    thread, _ = _preparing(turns, work)
    with turns.step(0.0), turns.engine_waits():
        go.set()
        assert done.wait(5)
    thread.join(10)
