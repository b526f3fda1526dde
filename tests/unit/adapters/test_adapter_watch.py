"""`StoreWatcher`: the store's change feed, driven by real file operations."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from hotlora_adapters import AdapterStore, StoreChange, StoreWatcher


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def kinds(changes: list[StoreChange]) -> list[tuple[str, str]]:
    return [(c.kind, c.name) for c in changes]


def test_poll_sequence(tmp_path: Path, make_adapter) -> None:
    store = AdapterStore(tmp_path / "store")
    watcher = StoreWatcher(store)
    assert watcher.poll() == []  # no store folder yet

    added = store.register("pig", make_adapter())
    [change] = watcher.poll()
    assert change == StoreChange("added", "pig", added.version)
    assert watcher.poll() == []  # nothing new

    replaced = store.register("pig", make_adapter(kind="rank-pattern", name="v2"), overwrite=True)
    assert watcher.poll() == [StoreChange("changed", "pig", replaced.version)]

    disabled = store.set_disabled("pig", True)
    assert watcher.poll() == [StoreChange("changed", "pig", disabled.version)]

    make_adapter(name="hand-copied", parent=store.root)  # copied in by hand, not through register
    shutil.copytree(store.root / "pig", store.root / ".tmp-not-an-adapter")  # hidden: never reported
    assert kinds(watcher.poll()) == [("added", "hand-copied")]

    store.delete("pig")
    shutil.rmtree(store.root / "hand-copied")
    assert watcher.poll() == [
        StoreChange("removed", "hand-copied", None),
        StoreChange("removed", "pig", None),
    ]
    assert watcher.snapshot == {}


def test_first_poll_reports_everything_as_added(tmp_path: Path, make_adapter) -> None:
    store = AdapterStore(tmp_path / "store")
    store.register("b", make_adapter(name="b"))
    store.register("a", make_adapter(name="a"))
    watcher = StoreWatcher(store)
    assert kinds(watcher.poll()) == [("added", "a"), ("added", "b")]
    assert watcher.snapshot == store.versions()


def test_interval_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        StoreWatcher(AdapterStore(tmp_path), interval=0)


def test_background_thread_survives_a_failing_callback(tmp_path: Path, make_adapter) -> None:
    store = AdapterStore(tmp_path / "store")
    watcher = StoreWatcher(store, interval=0.02)
    seen: list[StoreChange] = []
    calls = 0

    def callback(changes: list[StoreChange]) -> None:
        nonlocal calls
        calls += 1
        seen.extend(changes)
        if calls == 1:
            raise RuntimeError("consumer bug")

    thread = watcher.start(callback)
    try:
        assert thread.daemon and thread.is_alive()
        with pytest.raises(RuntimeError, match="already running"):
            watcher.start(callback)
        store.register("pig", make_adapter())
        assert wait_for(lambda: kinds(seen) == [("added", "pig")])
        store.register("yoda", make_adapter(name="yoda"))  # delivered after the callback raised
        assert wait_for(lambda: kinds(seen) == [("added", "pig"), ("added", "yoda")])
        store.delete("pig")
        assert wait_for(lambda: kinds(seen)[-1:] == [("removed", "pig")])
        assert thread.is_alive()
    finally:
        watcher.stop()
    assert not thread.is_alive()


def test_run_until_stopped_and_survives_a_failing_poll(tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "store"
    root.write_text("not a folder")  # every poll fails (AdapterError)
    watcher = StoreWatcher(AdapterStore(root), interval=0.01)
    stop = threading.Event()
    batches: list[list[StoreChange]] = []
    thread = threading.Thread(target=watcher.run, args=(batches.append, stop))
    thread.start()
    time.sleep(0.1)
    assert thread.is_alive() and batches == []
    root.unlink()
    root.mkdir()
    (root / "x").mkdir()
    (root / "x" / "adapter_config.json").write_text("{}")  # listed (with an error), so reported
    assert wait_for(
        lambda: batches == [[StoreChange("added", "x", batches[0][0].version)]] if batches else False
    )
    stop.set()
    thread.join(5)
    assert not thread.is_alive()


def test_a_new_adapter_is_noticed_within_two_seconds(tmp_path: Path, make_adapter) -> None:
    store = AdapterStore(tmp_path / "store")
    watcher = StoreWatcher(store)  # the default interval
    got = threading.Event()
    watcher.poll()
    watcher.start(lambda changes: got.set())
    try:
        started = time.monotonic()
        store.register("pig", make_adapter())
        assert got.wait(2.0)
        assert time.monotonic() - started < 2.0
    finally:
        watcher.stop()
