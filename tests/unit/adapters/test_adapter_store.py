import json
import os
from pathlib import Path

import pytest

from hotlora_adapters import (
    AdapterNotFoundError,
    AdapterPathError,
    AdapterStore,
    InvalidAdapterError,
    InvalidAdapterNameError,
    Manifest,
    adapter_version,
    manifest_json,
)


def _manifest(name: str, **changes) -> str:
    fields = dict(
        name=name,
        base_model="tiny",
        r=4,
        lora_alpha=8,
        target_modules=["q_proj"],
        created=1_234,
        source="imported",
    )
    return manifest_json(Manifest(**{**fields, **changes}))


@pytest.fixture
def store(tmp_path: Path, make_adapter) -> AdapterStore:
    root = tmp_path / "store"
    root.mkdir()
    good = make_adapter(name="good", parent=root)
    (good / "hotlora.json").write_text(_manifest("good"))
    make_adapter(name="no-manifest", parent=root)
    off = make_adapter(name="off", parent=root)
    (off / "hotlora.json").write_text(_manifest("off", disabled=True))
    broken = make_adapter(name="broken", parent=root)
    (broken / "adapter_model.safetensors").write_bytes(b"\x00" * 4)
    pickled = make_adapter(name="pickled", parent=root)
    (pickled / "adapter_model.safetensors").rename(pickled / "adapter_model.bin")
    bad_json = make_adapter(name="bad-json", parent=root)
    (bad_json / "adapter_config.json").write_text("{")
    bad_manifest = make_adapter(name="bad-manifest", parent=root)
    (bad_manifest / "hotlora.json").write_text("[]")
    make_adapter(name=".tmp-half-written", parent=root)
    make_adapter(name=".hidden", parent=root)
    make_adapter(name="Upper", parent=root)
    make_adapter(name="has space", parent=root)
    (root / "not-an-adapter").mkdir()
    (root / "stray-file.txt").write_text("x")
    return AdapterStore(root)


def test_listing(store: AdapterStore) -> None:
    listed = {a.name: a for a in store.list()}
    assert list(listed) == ["bad-json", "bad-manifest", "broken", "good", "no-manifest", "off", "pickled"]

    good = listed["good"]
    assert good.error is None and good.usable and not good.disabled
    assert good.manifest is not None and good.manifest.source == "imported" and good.created == 1_234
    assert good.config is not None and good.config.r == 4
    assert good.path == store.root / "good"
    assert good.size_bytes == sum(f.stat().st_size for f in good.path.iterdir())

    no_manifest = listed["no-manifest"]
    assert no_manifest.manifest is None and no_manifest.error is None
    assert no_manifest.created == int(no_manifest.path.stat().st_mtime)

    assert listed["off"].disabled and listed["off"].error is None and not listed["off"].usable
    assert "not a valid safetensors file" in (listed["broken"].error or "")
    assert "pickle weights are refused" in (listed["pickled"].error or "")
    assert listed["bad-json"].config is None and "not valid JSON" in (listed["bad-json"].error or "")
    assert listed["bad-manifest"].config is not None and "hotlora.json" in (
        listed["bad-manifest"].error or ""
    )
    assert not any(a.usable for name, a in listed.items() if name not in ("good", "no-manifest"))


def test_get_and_load_files(store: AdapterStore) -> None:
    assert store.get("good").manifest is not None
    assert "good" in store and "missing" not in store and "../good" not in store
    files = store.load_files("good")
    assert files.path == store.root / "good" and files.tensor_shapes
    assert store.get("broken").error is not None  # get lists, it does not raise for unusable
    with pytest.raises(InvalidAdapterError, match="pickle weights are refused"):
        store.load_files("pickled")


def test_get_missing_names_the_store(store: AdapterStore) -> None:
    with pytest.raises(AdapterNotFoundError, match=f"no adapter named 'nope' in the store at {store.root}"):
        store.get("nope")
    with pytest.raises(AdapterNotFoundError):
        store.get("not-an-adapter")  # a folder without adapter_config.json is not an adapter
    with pytest.raises(AdapterNotFoundError):
        store.load_files("nope")


@pytest.mark.parametrize("name", ["../store", ".hidden", "Upper", "", "a/b"])
def test_get_validates_the_name_first(store: AdapterStore, name: str) -> None:
    with pytest.raises(InvalidAdapterNameError):
        store.get(name)


def test_missing_root_lists_nothing_and_is_not_created(tmp_path: Path) -> None:
    store = AdapterStore(tmp_path / "nowhere")
    assert store.list() == []
    assert not store.root.exists()
    assert store.ensure_root().is_dir()


def test_entries_reaching_outside_the_store_are_listed_with_the_reason(tmp_path: Path, make_adapter) -> None:
    """The import rule holds for the store's own entries: they, and every link in them, stay in the store."""
    target = make_adapter(name="elsewhere")
    root = tmp_path / "store"
    root.mkdir()
    os.symlink(target, root / "linked")
    make_adapter(name="real", parent=root)
    os.symlink(root / "real", root / "alias")  # within the store: fine
    leaky = make_adapter(name="leaky", parent=root)
    (leaky / "adapter_model.safetensors").unlink()
    os.symlink(target / "adapter_model.safetensors", leaky / "adapter_model.safetensors")
    store = AdapterStore(root)

    listed = {a.name: a for a in store.list()}
    where = f"outside the adapter store ({root.resolve()}); adapters must be copied into it, not linked"
    assert listed["linked"].error == f"linked is a symlink to {target.resolve()}, {where}"
    assert listed["linked"].config is None and not listed["linked"].usable
    assert (
        listed["leaky"].error
        == f"leaky/adapter_model.safetensors is a symlink to {target.resolve()}/adapter_model.safetensors, {where}"
    )
    assert listed["alias"].error is None and listed["real"].error is None
    with pytest.raises(AdapterPathError, match="outside the adapter store"):
        store.set_disabled("linked", True)  # would write hotlora.json outside
    with pytest.raises(AdapterPathError, match="outside the adapter store"):
        store.import_adapter(root / "linked")
    assert not (target / "hotlora.json").exists()
    store.delete("linked")  # the link goes, what it points to stays
    assert not os.path.lexists(root / "linked") and (target / "adapter_model.safetensors").is_file()


def test_versions_follow_the_content_where_metadata_cannot_tell(
    tmp_path: Path, make_adapter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a file system whose `stat` tells nothing but sizes (inode numbers reused, mtimes copied, ctime
    coarse or mirroring mtime), other weights of the same size still make another version."""
    root = tmp_path / "store"
    folder = make_adapter(name="x", parent=root)
    real = os.stat
    monkeypatch.setattr(os, "stat", lambda path, *a, **k: os.stat_result([*real(path, *a, **k)[:7], 0, 0, 0]))
    version = adapter_version(folder)
    assert adapter_version(folder) == version and AdapterStore(root).versions() == {"x": version}
    weights = folder / "adapter_model.safetensors"
    data = weights.read_bytes()
    start = 8 + int.from_bytes(data[:8], "little")  # the tensors, after the header
    weights.write_bytes(data[:start] + bytes(b ^ 0x55 for b in data[start:]))  # other values, same size
    assert adapter_version(folder) != version


def test_manifest_name_need_not_match_folder(tmp_path: Path, make_adapter) -> None:
    root = tmp_path / "store"
    copy = make_adapter(name="copy", parent=root)
    (copy / "hotlora.json").write_text(_manifest("original"))
    [listed] = AdapterStore(root).list()
    assert listed.name == "copy" and listed.manifest is not None and listed.manifest.name == "original"
    assert listed.error is None


def test_recipe_and_metrics_survive(tmp_path: Path, make_adapter) -> None:
    root = tmp_path / "store"
    a = make_adapter(name="trained", parent=root)
    (a / "hotlora.json").write_text(
        _manifest("trained", source="trained", recipe={"lr": 1e-4}, eval_metrics={"em": 0.5})
    )
    manifest = AdapterStore(root).get("trained").manifest
    assert manifest is not None and manifest.recipe == {"lr": 1e-4} and manifest.eval_metrics == {"em": 0.5}
    assert json.loads((a / "hotlora.json").read_text())["source"] == "trained"
