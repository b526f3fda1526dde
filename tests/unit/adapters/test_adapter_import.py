"""`AdapterStore.import_adapter`: a user-supplied path is read only inside the store or an allowed root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hotlora_adapters import (
    AdapterError,
    AdapterExistsError,
    AdapterPathError,
    AdapterStore,
    IncompatibleAdapterError,
    InvalidAdapterError,
    InvalidAdapterNameError,
)


@pytest.fixture
def store(tmp_path: Path) -> AdapterStore:
    return AdapterStore(tmp_path / "store")


@pytest.fixture
def allowed(tmp_path: Path) -> Path:
    folder = tmp_path / "allowed"
    folder.mkdir()
    return folder


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    folder = tmp_path / "outside"
    folder.mkdir()
    return folder


def visible(store: AdapterStore) -> list[str]:
    return sorted(n for n in os.listdir(store.root) if n != ".lock") if store.root.exists() else []


def test_import_from_an_allowed_root(
    store: AdapterStore, allowed: Path, make_adapter, tiny_base_spec
) -> None:
    source = make_adapter(name="piglatin", parent=allowed)
    stored = store.import_adapter(source, allowed_roots=[allowed], base=tiny_base_spec)
    assert stored.name == "piglatin" and stored.path == store.root / "piglatin" and stored.usable
    assert stored.manifest is not None and stored.manifest.source == "imported"
    assert stored.manifest.base_fingerprint == tiny_base_spec.fingerprint()
    assert (stored.path / "adapter_model.safetensors").read_bytes() == (
        source / "adapter_model.safetensors"
    ).read_bytes()
    assert source.is_dir()  # a copy: the source stays


def test_import_under_another_name_and_overwrite(store: AdapterStore, allowed: Path, make_adapter) -> None:
    source = make_adapter(name="checkpoint-500", parent=allowed)
    assert store.import_adapter(source, "pig", allowed_roots=[allowed]).name == "pig"
    with pytest.raises(AdapterExistsError):
        store.import_adapter(source, "pig", allowed_roots=[allowed])
    other = make_adapter(kind="rank-pattern", name="other", parent=allowed)
    replaced = store.import_adapter(other, "pig", allowed_roots=[allowed], overwrite=True)
    assert replaced.config is not None and replaced.config.rank_pattern == {"v_proj": 2}


def test_import_of_the_stores_own_folder_only_validates(
    store: AdapterStore, make_adapter, tiny_spec_with
) -> None:
    folder = make_adapter(name="hand-copied", parent=store.ensure_root())
    inode = folder.stat().st_ino
    stored = store.import_adapter(folder)
    assert stored.name == "hand-copied" and stored.path.stat().st_ino == inode
    assert stored.manifest is None  # untouched, not re-registered
    assert visible(store) == ["hand-copied"]
    with pytest.raises(IncompatibleAdapterError):
        store.import_adapter(folder, base=tiny_spec_with(hidden_size=96))


def test_import_from_elsewhere_in_the_store_copies(store: AdapterStore, make_adapter) -> None:
    make_adapter(name="pig", parent=store.ensure_root())
    copy = store.import_adapter(store.root / "pig", "pig-copy")
    assert copy.path == store.root / "pig-copy" and visible(store) == ["pig", "pig-copy"]


def test_outside_is_refused(store: AdapterStore, allowed: Path, outside: Path, make_adapter) -> None:
    source = make_adapter(name="pig", parent=outside)
    with pytest.raises(AdapterPathError) as info:
        store.import_adapter(source, allowed_roots=[allowed])
    message = str(info.value)
    assert message.startswith(f"{source}, which is outside the folders adapters may be imported from")
    assert str(allowed.resolve()) in message and str(store.root.resolve()) in message
    assert isinstance(info.value, AdapterError)
    assert visible(store) == []


def test_dot_dot_out_of_an_allowed_root_is_refused(
    store: AdapterStore, allowed: Path, outside: Path, make_adapter
) -> None:
    make_adapter(name="pig", parent=outside)
    with pytest.raises(AdapterPathError):
        store.import_adapter(allowed / ".." / "outside" / "pig", allowed_roots=[allowed])
    with pytest.raises(AdapterPathError):
        store.import_adapter(store.root / ".." / "outside" / "pig")
    assert visible(store) == []


def test_symlink_in_an_allowed_root_pointing_outside_is_refused(
    store: AdapterStore, allowed: Path, outside: Path, make_adapter
) -> None:
    target = make_adapter(name="pig", parent=outside)
    os.symlink(target, allowed / "pig")
    with pytest.raises(AdapterPathError, match="resolves to"):
        store.import_adapter(allowed / "pig", allowed_roots=[allowed])
    assert visible(store) == []


def test_symlinked_weights_pointing_outside_are_refused(
    store: AdapterStore, allowed: Path, outside: Path, make_adapter
) -> None:
    source = make_adapter(name="pig", parent=allowed)
    secret = outside / "weights.safetensors"
    (source / "adapter_model.safetensors").rename(secret)
    os.symlink(secret, source / "adapter_model.safetensors")
    with pytest.raises(AdapterPathError, match="adapter_model.safetensors is a symlink"):
        store.import_adapter(source, allowed_roots=[allowed])
    assert visible(store) == []


def test_symlinked_config_pointing_outside_is_refused(
    store: AdapterStore, allowed: Path, outside: Path, make_adapter
) -> None:
    source = make_adapter(name="pig", parent=allowed)
    (source / "adapter_config.json").rename(outside / "adapter_config.json")
    os.symlink(outside / "adapter_config.json", source / "adapter_config.json")
    with pytest.raises(AdapterPathError, match="adapter_config.json is a symlink"):
        store.import_adapter(source, allowed_roots=[allowed])


def test_any_escaping_symlink_inside_the_folder_is_refused(
    store: AdapterStore, allowed: Path, make_adapter
) -> None:
    source = make_adapter(name="pig", parent=allowed)
    (source / "runs").mkdir()
    os.symlink("/etc", source / "runs" / "etc")
    with pytest.raises(AdapterPathError, match="runs/etc is a symlink"):
        store.import_adapter(source, allowed_roots=[allowed])
    os.unlink(source / "runs" / "etc")
    os.symlink("/nonexistent/dangling", source / "dangling.png")
    with pytest.raises(AdapterPathError, match="dangling.png is a symlink"):
        store.import_adapter(source, allowed_roots=[allowed])


def test_symlinks_within_the_allowed_roots_are_fine(
    store: AdapterStore, allowed: Path, tmp_path: Path, make_adapter
) -> None:
    blobs = allowed / "blobs"
    blobs.mkdir()
    source = make_adapter(name="pig", parent=allowed)
    (source / "adapter_model.safetensors").rename(blobs / "w")
    os.symlink(blobs / "w", source / "adapter_model.safetensors")
    os.symlink(source, allowed / "latest")
    link_root = tmp_path / "allowed-link"
    os.symlink(allowed, link_root)  # an allowed root given through a symlink is resolved too

    stored = store.import_adapter(allowed / "latest", allowed_roots=[link_root])
    assert stored.name == "latest"  # the name as given, not the link's target
    copied = stored.path / "adapter_model.safetensors"
    assert not copied.is_symlink() and copied.read_bytes() == (blobs / "w").read_bytes()


def test_missing_paths(store: AdapterStore, allowed: Path, outside: Path) -> None:
    with pytest.raises(InvalidAdapterError, match="no such adapter folder"):
        store.import_adapter(allowed / "nope", allowed_roots=[allowed])
    with pytest.raises(AdapterPathError):  # outside: refused without saying whether it exists
        store.import_adapter(outside / "nope", allowed_roots=[allowed])


def test_a_nul_byte_in_the_path_is_refused_as_a_path_error(store: AdapterStore, allowed: Path) -> None:
    # the OS cannot even be asked about such a path: os.stat raises ValueError, not OSError
    with pytest.raises(AdapterPathError, match="NUL character"):
        store.import_adapter(allowed / "pig\x00x", "pig", allowed_roots=[allowed])
    assert visible(store) == []


def test_a_file_is_not_a_folder(store: AdapterStore, allowed: Path) -> None:
    (allowed / "pig").write_text("x")
    with pytest.raises(InvalidAdapterError, match="not a folder"):
        store.import_adapter(allowed / "pig", allowed_roots=[allowed])


def test_default_name_must_be_valid(store: AdapterStore, allowed: Path, make_adapter) -> None:
    source = make_adapter(name="My Adapter", parent=allowed)
    with pytest.raises(InvalidAdapterNameError):
        store.import_adapter(source, allowed_roots=[allowed])
    assert store.import_adapter(source, "my-adapter", allowed_roots=[allowed]).name == "my-adapter"


def test_unusable_sources_are_refused(store: AdapterStore, allowed: Path, make_adapter) -> None:
    source = make_adapter(name="pig", parent=allowed)
    (source / "adapter_model.safetensors").rename(source / "adapter_model.bin")
    with pytest.raises(InvalidAdapterError, match="pickle weights are refused"):
        store.import_adapter(source, allowed_roots=[allowed])
    assert visible(store) == []
