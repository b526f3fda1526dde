"""The store's changes to a registered adapter: delete, set_disabled, and the versions that follow them.

Real PEFT adapters (built by conftest on a tiny llama) in real folders.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import hotlora_adapters.store as store_module
from hotlora_adapters import (
    AdapterNotFoundError,
    AdapterStore,
    BlendSource,
    InvalidAdapterError,
    InvalidAdapterNameError,
    Manifest,
    read_manifest,
)

from support.store_files import entries

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
