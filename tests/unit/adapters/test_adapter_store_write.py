"""The store's write side: atomic register and overwrite, what is copied, refusals that leave no trace,
writers racing one another, and the swap without renameat2.

Real PEFT adapters (built by conftest on a tiny llama) in real folders. Failures and crashes half-way are in
test_adapter_store_failures.py; delete, set_disabled and versions in test_adapter_store_changes.py.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

import pytest

import hotlora_adapters.fsutil as fsutil
import hotlora_adapters.store as store_module
from hotlora_adapters import (
    AdapterError,
    AdapterExistsError,
    AdapterStore,
    IncompatibleAdapterError,
    InvalidAdapterError,
    InvalidAdapterNameError,
    Manifest,
    read_manifest,
)

from support.store_files import entries, file_bytes, peft_bytes


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
