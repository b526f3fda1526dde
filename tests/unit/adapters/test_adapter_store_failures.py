"""The store's writes failing or crashing half-way: the old adapter stays whole, a new one never half
appears, and the leftovers are cleaned.

Crashes are simulated both by failing steps in-process and by SIGKILLing a real registering process just
before (and just after) its publishing rename.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import hotlora_adapters.store as store_module
import hotlora_adapters.store_write as store_write
from hotlora_adapters import AdapterStore

from support.store_files import entries, file_bytes, peft_bytes


def test_failure_while_copying_leaves_the_old_adapter(store: AdapterStore, make_adapter, monkeypatch) -> None:
    old = store.register("pig", make_adapter(name="v1"))
    snapshot = file_bytes(old.path)
    real_copy = store_write.copy_file_synced
    copied: list[str] = []

    def failing_copy(src: Path, dst: Path) -> None:
        if copied:
            raise OSError(errno.ENOSPC, "No space left on device")
        copied.append(dst.name)
        real_copy(src, dst)

    monkeypatch.setattr(store_write, "copy_file_synced", failing_copy)
    with pytest.raises(OSError, match="No space"):
        store.register("pig", make_adapter(kind="rank-pattern", name="v2"), overwrite=True)
    with pytest.raises(OSError, match="No space"):
        store.register("new", make_adapter(kind="rank-pattern", name="v3"))
    assert copied  # it did fail half-way
    assert entries(store) == ["pig"]  # the temp folders were removed
    assert file_bytes(store.root / "pig") == snapshot
    assert store.get("pig").version == old.version


def test_failure_of_the_swap_leaves_the_old_adapter(store: AdapterStore, make_adapter, monkeypatch) -> None:
    old = store.register("pig", make_adapter(name="v1"))
    snapshot = file_bytes(old.path)

    def broken_exchange(a: Path, b: Path) -> bool:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(store_module, "exchange", broken_exchange)
    with pytest.raises(OSError, match="Input/output"):
        store.register("pig", make_adapter(kind="rank-pattern", name="v2"), overwrite=True)
    assert entries(store) == ["pig"] and file_bytes(store.root / "pig") == snapshot


def test_fallback_swap_failing_half_way_restores_the_old_adapter(
    store: AdapterStore, make_adapter, monkeypatch, no_renameat2
) -> None:
    old = store.register("pig", make_adapter(name="v1"))
    snapshot = file_bytes(old.path)
    real_rename = os.rename

    def rename(src, dst):  # noqa: ANN001 - os.rename's signature
        if Path(src).name.startswith(".tmp-"):  # moving the new folder in
            raise OSError(errno.EIO, "Input/output error")
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OSError, match="Input/output"):
        store.register("pig", make_adapter(kind="rank-pattern", name="v2"), overwrite=True)
    monkeypatch.undo()
    assert entries(store) == ["pig"] and file_bytes(store.root / "pig") == snapshot


CRASHING_REGISTER = """
import sys, time
from pathlib import Path
import hotlora_adapters.store as store_module

real_publish = store_module.AdapterStore._publish
when = sys.argv[5]

def publish(self, tmp, dest, name, overwrite):
    if when == "before":
        print("ready", flush=True)
        time.sleep(120)
    old = real_publish(self, tmp, dest, name, overwrite)
    if when == "after":
        print("ready", flush=True)
        time.sleep(120)
    return old

store_module.AdapterStore._publish = publish
store_module.AdapterStore(Path(sys.argv[1])).register(sys.argv[2], Path(sys.argv[3]), overwrite=sys.argv[4] == "1")
"""


def run_and_kill(store: AdapterStore, name: str, source: Path, *, overwrite: bool, when: str) -> None:
    """Register in a real process and SIGKILL it at the hook point (`before`/`after` the publishing rename)."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            CRASHING_REGISTER,
            str(store.root),
            name,
            str(source),
            "1" if overwrite else "0",
            when,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        assert ready, "the registering process never reached the hook"
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert line.strip() == "ready", proc.stderr.read()  # type: ignore[union-attr]
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_killed_before_publishing_a_new_name(store: AdapterStore, make_adapter) -> None:
    store.register("keep", make_adapter(name="keep"))
    run_and_kill(store, "pig", make_adapter(name="v1"), overwrite=False, when="before")

    assert [a.name for a in store.list()] == ["keep"]  # nothing new is visible
    assert "pig" not in store and store.versions().keys() == {"keep"}
    leftovers = [n for n in entries(store) if n.startswith(".tmp-pig-")]
    assert len(leftovers) == 1  # the complete-but-unpublished copy, hidden
    assert store.cleanup_stale(older_than_s=3600) == []  # too fresh to be judged stale
    assert [p.name for p in store.cleanup_stale(older_than_s=0)] == leftovers
    assert entries(store) == ["keep"]


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_killed_before_the_swap_keeps_the_complete_old_adapter(store: AdapterStore, make_adapter) -> None:
    old = store.register("pig", make_adapter(name="v1"))
    snapshot = file_bytes(old.path)
    run_and_kill(store, "pig", make_adapter(kind="rank-pattern", name="v2"), overwrite=True, when="before")

    [listed] = store.list()
    assert listed.name == "pig" and listed.error is None and listed.version == old.version
    assert file_bytes(listed.path) == snapshot
    store.cleanup_stale(older_than_s=0)
    assert entries(store) == ["pig"]


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_killed_after_the_swap_shows_the_complete_new_adapter(store: AdapterStore, make_adapter) -> None:
    old = store.register("pig", make_adapter(name="v1"))
    new_source = make_adapter(kind="rank-pattern", name="v2")
    run_and_kill(store, "pig", new_source, overwrite=True, when="after")

    [listed] = store.list()
    assert listed.error is None and listed.version != old.version
    assert peft_bytes(listed.path) == peft_bytes(new_source)
    assert any(n.startswith(".tmp-pig-") for n in entries(store))  # the old content, not yet deleted
    store.cleanup_stale(older_than_s=0)
    assert entries(store) == ["pig"]


def test_register_cleans_stale_leftovers(store: AdapterStore, make_adapter) -> None:
    root = store.ensure_root()
    stale = make_adapter(name=".tmp-old-crash", parent=root)
    trash = root / ".trash-gone-123"
    trash.mkdir()
    fresh = root / ".tmp-in-progress"
    fresh.mkdir()
    hour_ago = time.time() - 7200
    for path in (stale, trash):
        os.utime(path, (hour_ago, hour_ago))
    store.register("pig", make_adapter())
    assert entries(store) == [".tmp-in-progress", "pig"]
    assert fresh.exists()


def test_cleanup_stale_on_a_missing_store(tmp_path: Path) -> None:
    store = AdapterStore(tmp_path / "nowhere")
    assert store.cleanup_stale(older_than_s=0) == []
    assert not store.root.exists()
