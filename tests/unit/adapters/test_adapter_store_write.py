"""The store's write side: atomic register / overwrite / delete / set_disabled, versions and crash safety.

Real PEFT adapters (built by conftest on a tiny llama) in real folders; crashes are simulated both by
failing steps in-process and by SIGKILLing a real registering process just before (and just after) its
publishing rename.
"""

from __future__ import annotations

import errno
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import hotlora_adapters.fsutil as fsutil
import hotlora_adapters.store as store_module
import hotlora_adapters.store_write as store_write
from hotlora_adapters import (
    AdapterError,
    AdapterExistsError,
    AdapterNotFoundError,
    AdapterStore,
    BlendSource,
    IncompatibleAdapterError,
    InvalidAdapterError,
    InvalidAdapterNameError,
    Manifest,
    read_manifest,
)


@pytest.fixture
def store(tmp_path: Path) -> AdapterStore:
    return AdapterStore(tmp_path / "store")


def entries(store: AdapterStore) -> list[str]:
    """Everything in the store folder but the writers' lock file."""
    if not store.root.exists():
        return []
    return sorted(n for n in os.listdir(store.root) if n != ".lock")


def file_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def peft_bytes(folder: Path) -> dict[str, bytes]:
    return {n: (folder / n).read_bytes() for n in ("adapter_config.json", "adapter_model.safetensors")}


# -- register ------------------------------------------------------------------------------------------


def test_register_list_get(store: AdapterStore, make_adapter, tiny_base_spec) -> None:
    source = make_adapter(name="source")
    before = time.time()
    stored = store.register("piglatin", source, base=tiny_base_spec)

    assert stored.name == "piglatin" and stored.path == store.root / "piglatin"
    assert stored.error is None and stored.usable and stored.version
    assert peft_bytes(stored.path) == peft_bytes(source)
    assert [a.name for a in store.list()] == ["piglatin"]
    assert store.get("piglatin") == stored
    assert entries(store) == ["piglatin"]  # no temp folder left behind

    manifest = stored.manifest
    assert manifest is not None
    assert manifest.name == "piglatin" and manifest.source == "imported"
    assert manifest.base_fingerprint == tiny_base_spec.fingerprint()
    assert manifest.r == 4 and manifest.lora_alpha == 8
    assert manifest.target_modules == sorted(stored.config.target_modules)  # type: ignore[union-attr,arg-type]
    assert any(m.endswith("down_proj") for m in manifest.target_modules)
    assert before - 1 <= manifest.created <= time.time() + 1
    assert store.load_files("piglatin").tensor_shapes


def test_register_writes_the_given_manifest_under_the_registered_name(
    store: AdapterStore, make_adapter, tiny_base_spec
) -> None:
    source = make_adapter()
    files = store_module.inspect_adapter(source)
    manifest = Manifest.for_adapter(
        "draft", files, source="trained", recipe={"lr": 1e-4}, eval_metrics={"em": 0.9}
    )
    stored = store.register("final", source, manifest=manifest, base=tiny_base_spec)
    on_disk = read_manifest(stored.path)
    assert on_disk is not None and on_disk.name == "final" and on_disk.source == "trained"
    assert (
        on_disk.base_fingerprint == tiny_base_spec.fingerprint()
    )  # filled in from the base it was checked on
    assert on_disk.recipe == {"lr": 1e-4} and on_disk.eval_metrics == {"em": 0.9}


def test_register_copies_only_the_allow_list(store: AdapterStore, make_adapter) -> None:
    source = make_adapter()
    (source / "README.md").write_text("# pig latin")
    (source / "loss.png").write_bytes(b"\x89PNG")
    (source / "tokenizer.json").write_text("{}")
    (source / "adapter_model.bin").write_bytes(b"pickle!")
    (source / "training_args.pt").write_bytes(b"pickle!")
    (source / "optimizer.pth").write_bytes(b"pickle!")
    (source / "notes.txt").write_text("x")
    (source / ".hidden.json").write_text("{}")
    (source / "hotlora.json").write_text('{"name": "someone-elses"}')
    (source / "checkpoint-1").mkdir()
    (source / "checkpoint-1" / "adapter_config.json").write_text("{}")

    stored = store.register("pig", source)
    assert sorted(os.listdir(stored.path)) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "hotlora.json",
        "loss.png",
        "tokenizer.json",
    ]
    assert (stored.path / "README.md").read_text() == "# pig latin"
    assert stored.manifest is not None and stored.manifest.name == "pig"  # ours, not the source's


def test_registered_files_are_regular_files_even_from_symlinks(
    store: AdapterStore, make_adapter, tmp_path: Path
) -> None:
    source = make_adapter()
    blob = tmp_path / "blob.safetensors"
    (source / "adapter_model.safetensors").rename(blob)
    os.symlink(blob, source / "adapter_model.safetensors")
    stored = store.register("pig", source)
    copied = stored.path / "adapter_model.safetensors"
    assert not copied.is_symlink() and copied.read_bytes() == blob.read_bytes()


@pytest.mark.parametrize("case", ["pickle-only", "incompatible", "bad-name", "missing", "not-lora"])
def test_refusals_leave_no_trace(
    case: str, tmp_path: Path, make_adapter, tiny_spec_with, tiny_base_spec
) -> None:
    root = tmp_path / "store"
    root.mkdir()
    store = AdapterStore(root)
    source = make_adapter()
    name, base = "pig", tiny_base_spec
    expected: type[Exception] = InvalidAdapterError
    if case == "pickle-only":
        (source / "adapter_model.safetensors").rename(source / "adapter_model.bin")
    elif case == "incompatible":
        base, expected = tiny_spec_with(hidden_size=96), IncompatibleAdapterError
    elif case == "bad-name":
        name, expected = "../escape", InvalidAdapterNameError
    elif case == "missing":
        source = tmp_path / "nowhere"
    elif case == "not-lora":
        config = json.loads((source / "adapter_config.json").read_text())
        (source / "adapter_config.json").write_text(json.dumps({**config, "peft_type": "IA3"}))

    with pytest.raises(expected) as info:
        store.register(name, source, base=base)
    assert isinstance(info.value, AdapterError)
    assert os.listdir(root) == []  # refused before writing anything, not even the lock file
    assert store.list() == []
    assert not (tmp_path / "escape").exists()


def test_pickle_refusal_message(store: AdapterStore, make_adapter) -> None:
    source = make_adapter()
    (source / "adapter_model.safetensors").rename(source / "adapter_model.bin")
    with pytest.raises(InvalidAdapterError, match="pickle weights are refused"):
        store.register("pig", source)


def test_conflict_without_overwrite(store: AdapterStore, make_adapter) -> None:
    first = store.register("pig", make_adapter(name="v1"))
    snapshot = file_bytes(first.path)
    with pytest.raises(AdapterExistsError, match="already exists") as info:
        store.register("pig", make_adapter(kind="rank-pattern", name="v2"))
    assert isinstance(info.value, AdapterError)
    assert entries(store) == ["pig"]
    assert file_bytes(store.root / "pig") == snapshot
    assert store.get("pig").version == first.version


def test_conflict_with_a_non_adapter_folder(store: AdapterStore, make_adapter) -> None:
    (store.ensure_root() / "pig").mkdir()
    (store.root / "pig" / "mine.txt").write_text("keep me")
    with pytest.raises(AdapterExistsError, match="not an adapter"):
        store.register("pig", make_adapter())
    assert (store.root / "pig" / "mine.txt").read_text() == "keep me"


def test_overwrite_swaps_in_the_new_weights(store: AdapterStore, make_adapter) -> None:
    old_source, new_source = make_adapter(name="v1"), make_adapter(kind="rank-pattern", name="v2")
    assert peft_bytes(old_source) != peft_bytes(new_source)
    old = store.register("pig", old_source)
    old_inode = old.path.stat().st_ino
    new = store.register("pig", new_source, overwrite=True)

    assert peft_bytes(new.path) == peft_bytes(new_source)
    assert new.version != old.version
    assert new.path.stat().st_ino != old_inode  # a new folder, swapped in whole
    assert entries(store) == ["pig"]  # the old content is gone, no temp left
    assert new.config is not None and new.config.rank_pattern == {"v_proj": 2}


def test_overwrite_of_a_missing_name_just_registers(store: AdapterStore, make_adapter) -> None:
    stored = store.register("pig", make_adapter(), overwrite=True)
    assert stored.usable and entries(store) == ["pig"]


def test_overwrite_replaces_a_symlinked_adapter_without_touching_its_target(
    store: AdapterStore, make_adapter, tmp_path: Path
) -> None:
    target = make_adapter(name="elsewhere")
    before = file_bytes(target)
    os.symlink(target, store.ensure_root() / "pig")
    stored = store.register("pig", make_adapter(kind="rank-pattern", name="v2"), overwrite=True)
    assert not stored.path.is_symlink()
    assert file_bytes(target) == before


@pytest.fixture
def no_renameat2(monkeypatch: pytest.MonkeyPatch) -> None:
    """Behave like a system without renameat2 (old glibc, not Linux, a file system refusing the flags)."""
    monkeypatch.setattr(fsutil, "renameat2", lambda src, dst, flags: False)


def test_fallback_without_renameat2(store: AdapterStore, make_adapter, no_renameat2) -> None:
    old = store.register("pig", make_adapter(name="v1"))
    with pytest.raises(AdapterExistsError):
        store.register("pig", make_adapter(kind="dora", name="other"))
    new_source = make_adapter(kind="rank-pattern", name="v2")
    new = store.register("pig", new_source, overwrite=True)
    assert peft_bytes(new.path) == peft_bytes(new_source) and new.version != old.version
    assert entries(store) == ["pig"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="renameat2 is Linux-only")
def test_renameat2_exchange_works_here(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "x").write_text("a")
    (b / "x").write_text("b")
    if not fsutil.exchange(a, b):
        pytest.skip("renameat2(RENAME_EXCHANGE) unsupported on this file system")
    assert (a / "x").read_text() == "b" and (b / "x").read_text() == "a"
    with pytest.raises(FileExistsError):
        fsutil.rename_noreplace(a, b)
    with pytest.raises(FileNotFoundError):
        fsutil.exchange(a, tmp_path / "missing")


def test_concurrent_registrations_of_one_name(store: AdapterStore, make_adapter) -> None:
    sources = [make_adapter(name=f"src{i}") for i in range(4)]
    outcomes: list[str] = []

    def register(source: Path) -> None:
        try:
            store.register("pig", source)
            outcomes.append("ok")
        except AdapterExistsError:
            outcomes.append("exists")

    threads = [threading.Thread(target=register, args=(s,)) for s in sources]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(outcomes) == ["exists", "exists", "exists", "ok"]
    assert entries(store) == ["pig"]


def test_readers_never_see_a_mix_while_overwrites_run(store: AdapterStore, make_adapter) -> None:
    a, b = make_adapter(name="a"), make_adapter(kind="rank-pattern", name="b")
    store.register("pig", a)
    exchange_works = fsutil.exchange(a, b) and fsutil.exchange(a, b)  # swapped there and back
    done = threading.Event()
    problems: list[str] = []
    reads = 0

    def writer() -> None:
        try:
            for i in range(30):
                store.register("pig", b if i % 2 == 0 else a, overwrite=True)
        finally:
            done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    while not done.is_set():
        if exchange_works and "pig" not in store:
            problems.append("the name was missing during an overwrite")
        files = store.load_files("pig")
        down_proj = any("down_proj" in key for key in files.tensor_shapes)
        if (files.config.rank_pattern == {}) != down_proj:  # config of one adapter, weights of the other
            problems.append(
                f"mixed read: rank_pattern {files.config.rank_pattern}, down_proj weights {down_proj}"
            )
        reads += 1
    thread.join(30)
    assert not problems, problems[:3]
    assert reads > 0


# -- crashes and failures mid-way ---------------------------------------------------------------------


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


# -- delete --------------------------------------------------------------------------------------------


def test_delete(store: AdapterStore, make_adapter) -> None:
    store.register("pig", make_adapter())
    store.register("keep", make_adapter(name="keep"))
    store.delete("pig")
    with pytest.raises(AdapterNotFoundError):
        store.get("pig")
    assert [a.name for a in store.list()] == ["keep"] and entries(store) == ["keep"]
    with pytest.raises(AdapterNotFoundError, match="no adapter named 'pig'"):
        store.delete("pig")
    with pytest.raises(InvalidAdapterNameError):
        store.delete("../keep")


def test_delete_a_symlinked_adapter_keeps_its_target(store: AdapterStore, make_adapter) -> None:
    target = make_adapter(name="elsewhere")
    os.symlink(target, store.ensure_root() / "linked")
    store.delete("linked")
    assert entries(store) == [] and (target / "adapter_model.safetensors").is_file()


def test_delete_of_a_non_adapter_folder_is_not_found(store: AdapterStore) -> None:
    (store.ensure_root() / "stuff").mkdir()
    with pytest.raises(AdapterNotFoundError):
        store.delete("stuff")
    assert entries(store) == ["stuff"]


# -- set_disabled --------------------------------------------------------------------------------------


def test_set_disabled_round_trip(store: AdapterStore, make_adapter) -> None:
    stored = store.register("pig", make_adapter(), manifest=None)
    original = read_manifest(stored.path)
    off = store.set_disabled("pig", True)
    assert off.disabled and not off.usable and off.error is None
    assert [a.name for a in store.list()] == ["pig"] and store.list()[0].disabled
    assert off.version != stored.version
    on_disk = read_manifest(stored.path)
    assert on_disk is not None and original is not None
    assert on_disk.model_copy(update={"disabled": False}) == original  # nothing else changed

    assert store.set_disabled("pig", True).version == off.version  # already so: nothing written
    on = store.set_disabled("pig", False)
    assert on.usable and on.version != off.version
    assert not [n for n in os.listdir(stored.path) if n.startswith(".")]  # no manifest temp file left


def test_set_disabled_on_a_folder_without_manifest(store: AdapterStore, make_adapter) -> None:
    folder = make_adapter(name="hand-copied", parent=store.ensure_root())
    created = store.get("hand-copied").created
    off = store.set_disabled("hand-copied", True)
    assert off.disabled and off.manifest is not None
    assert off.manifest.source == "imported" and off.manifest.name == "hand-copied"
    assert off.manifest.created == created and off.manifest.r == 4
    assert store.set_disabled("hand-copied", False).usable
    assert (folder / "hotlora.json").is_file()


def test_set_disabled_refuses_to_clobber_an_unreadable_manifest(store: AdapterStore, make_adapter) -> None:
    folder = make_adapter(name="pig", parent=store.ensure_root())
    (folder / "hotlora.json").write_text("{broken")
    with pytest.raises(InvalidAdapterError, match="hotlora.json"):
        store.set_disabled("pig", True)
    assert (folder / "hotlora.json").read_text() == "{broken"


def test_set_disabled_missing(store: AdapterStore) -> None:
    with pytest.raises(AdapterNotFoundError):
        store.set_disabled("nope", True)


def test_stale_manifest_temp_files_are_cleaned(store: AdapterStore, make_adapter) -> None:
    stored = store.register("pig", make_adapter())
    leftover = stored.path / ".hotlora.json.tmp-deadbeef"
    leftover.write_text("{}")
    assert store.cleanup_stale(older_than_s=0) == [leftover]
    assert not leftover.exists()


# -- versions ------------------------------------------------------------------------------------------


def test_version_tracks_changes(store: AdapterStore, make_adapter) -> None:
    stored = store.register("pig", make_adapter())
    assert store.get("pig").version == stored.version == store.versions()["pig"] == store.version_of("pig")
    assert store.list()[0].version == stored.version  # stable while nothing changes

    # same weights again, immediately: still a new version (new folder, new inodes)
    again = store.register("pig", make_adapter(name="same"), overwrite=True)
    assert again.version != stored.version

    weights = again.path / "adapter_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data)  # rewritten in place, same size, same second
    assert store.version_of("pig") != again.version

    with pytest.raises(AdapterNotFoundError):
        store.version_of("nope")


def test_load_files_rereads_when_replaced_meanwhile(store: AdapterStore, make_adapter, monkeypatch) -> None:
    store.register("pig", make_adapter())
    new_source = make_adapter(kind="rank-pattern", name="v2")
    real_inspect = store_module.inspect_adapter
    calls: list[int] = []

    def inspect_then_replace(path: Path):  # noqa: ANN202
        files = real_inspect(path)
        if not calls:
            calls.append(1)
            store.register("pig", new_source, overwrite=True)  # a writer races the read
        return files

    monkeypatch.setattr(store_module, "inspect_adapter", inspect_then_replace)
    files = store.load_files("pig")
    assert files.config.rank_pattern == {"v_proj": 2}  # the newer adapter, read whole


def test_manifest_for_adapter(make_adapter, tiny_base_spec) -> None:
    files = store_module.inspect_adapter(make_adapter(kind="rank-pattern"))
    manifest = Manifest.for_adapter(
        "mix",
        files,
        source="blend",
        base=tiny_base_spec,
        sources=[{"name": "a", "weight": 0.7}, BlendSource(name="b", weight=0.3)],
        blend_method="ties",
        density=0.5,
        created=5,
    )
    assert manifest.base_fingerprint == tiny_base_spec.fingerprint() and manifest.created == 5
    assert manifest.target_modules == ["q_proj", "v_proj"] and manifest.r == 4
    assert [(s.name, s.weight) for s in manifest.sources] == [("a", 0.7), ("b", 0.3)]
    assert manifest.blend_method == "ties" and manifest.density == 0.5
    assert manifest.base_model  # from the config's base_model_name_or_path (or the architecture)
    fresh = Manifest.for_adapter("plain", files, source="imported")
    assert fresh.base_fingerprint is None and fresh.sources == [] and fresh.blend_method is None
