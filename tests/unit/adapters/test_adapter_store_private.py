"""The store is its user's alone, and an import copies exactly what it checked.

Folders are created 0700 and files 0600 whatever the umask, and the lock file is 0600: anyone who can
open it can `flock` it and hang every writer. An import resolves and confines its source's paths, then
reads them without following symlinks, so a link (or a FIFO) swapped in after the check is refused.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import hotlora_adapters.store_write as store_write
from hotlora_adapters import AdapterPathError, AdapterStore


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def loose_umask() -> Iterator[None]:
    """A umask that lets the group write (Ubuntu's default for users with their own group)."""
    before = os.umask(0o002)
    yield
    os.umask(before)


def test_folders_are_0700_and_files_0600_whatever_the_umask(
    tmp_path: Path, make_adapter, loose_umask
) -> None:
    home = tmp_path / "home"  # missing, like a first start's $HOTLORA_HOME
    store = AdapterStore(home / "adapters")
    stored = store.register("pig", make_adapter())
    assert mode(home) == mode(store.root) == mode(stored.path) == 0o700
    modes = {name: mode(stored.path / name) for name in os.listdir(stored.path)}
    assert {"adapter_config.json", "adapter_model.safetensors", "hotlora.json", "README.md"} <= set(modes)
    assert set(modes.values()) == {0o600}, modes
    assert mode(store.root / ".lock") == 0o600
    store.set_disabled("pig", True)  # rewrites the manifest
    assert mode(stored.path / "hotlora.json") == 0o600


def test_an_existing_folder_is_left_as_it_is(tmp_path: Path, make_adapter) -> None:
    root = tmp_path / "shared-store"
    root.mkdir(mode=0o750)
    os.chmod(root, 0o750)
    AdapterStore(root).register("pig", make_adapter())
    assert mode(root) == 0o750  # the user chose it; what the store creates inside is private
    assert mode(root / "pig") == 0o700


def test_a_lock_file_others_could_open_is_narrowed(tmp_path: Path, make_adapter) -> None:
    store = AdapterStore(tmp_path / "store")
    store.ensure_root()
    lock = store.root / ".lock"
    lock.touch()
    os.chmod(lock, 0o644)  # as earlier versions created it: any local user could flock it
    store.register("pig", make_adapter())
    assert mode(lock) == 0o600


def test_a_symlinked_lock_file_is_not_followed(tmp_path: Path, make_adapter) -> None:
    store = AdapterStore(tmp_path / "store")
    store.ensure_root()
    victim = tmp_path / "victim"
    victim.write_text("keep")
    os.chmod(victim, 0o644)
    os.symlink(victim, store.root / ".lock")
    with pytest.raises(OSError) as caught:
        store.register("pig", make_adapter())
    assert caught.value.errno == errno.ELOOP
    assert victim.read_text() == "keep" and mode(victim) == 0o644
    assert store.list() == []


# -- an import reads what it checked --------------------------------------------------------------------


@pytest.fixture
def roots(tmp_path: Path) -> tuple[Path, Path]:
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    (outside / "secret.txt").write_text("the server's secret")
    return allowed, outside


def swap_before_copying(monkeypatch: pytest.MonkeyPatch, swap: Callable[[], None]) -> None:
    """Run `swap` after the import checked its source, just before the first file is read."""
    real_copy = store_write.copy_file_synced
    done: list[bool] = []

    def copy(src: Path, dst: Path) -> None:
        if not done:
            done.append(True)
            swap()
        real_copy(src, dst)

    monkeypatch.setattr(store_write, "copy_file_synced", copy)


def test_a_file_swapped_for_a_symlink_after_the_check_is_refused(
    tmp_path: Path, roots: tuple[Path, Path], make_adapter, monkeypatch: pytest.MonkeyPatch
) -> None:
    allowed, outside = roots
    source = make_adapter(name="pig", parent=allowed)
    (source / "README.md").write_text("# pig")  # an extra: copied too

    def swap() -> None:
        (source / "README.md").unlink()
        os.symlink(outside / "secret.txt", source / "README.md")

    swap_before_copying(monkeypatch, swap)
    store = AdapterStore(tmp_path / "store")
    with pytest.raises(AdapterPathError, match="README.md"):
        store.import_adapter(source, allowed_roots=[allowed])
    assert store.list() == [] and [p.name for p in store.root.iterdir()] == [".lock"]


def test_a_folder_swapped_for_a_symlink_after_the_check_is_refused(
    tmp_path: Path, roots: tuple[Path, Path], make_adapter, monkeypatch: pytest.MonkeyPatch
) -> None:
    allowed, outside = roots
    source = make_adapter(name="pig", parent=allowed)
    lookalike = make_adapter(name="pig", parent=outside)  # same files, plus the secret as an extra
    (lookalike / "README.md").write_text("the server's secret")
    (source / "README.md").write_text("# pig")

    def swap() -> None:  # every file's resolved path now runs through a link out of the allowed root
        source.rename(allowed / ".moved")
        os.symlink(lookalike, source)

    swap_before_copying(monkeypatch, swap)
    store = AdapterStore(tmp_path / "store")
    with pytest.raises(AdapterPathError, match="changed after the path was checked"):
        store.import_adapter(source, allowed_roots=[allowed])
    assert store.list() == []


def test_a_source_removed_after_the_check_is_refused_not_a_fault(
    tmp_path: Path, roots: tuple[Path, Path], make_adapter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that deletes its folder while the import copies it gets a clear refusal (a 4xx), not a 500."""
    import shutil

    allowed, _ = roots
    source = make_adapter(name="pig", parent=allowed)
    swap_before_copying(monkeypatch, lambda: shutil.rmtree(source))
    store = AdapterStore(tmp_path / "store")
    with pytest.raises(AdapterPathError, match="disappeared after the path was checked"):
        store.import_adapter(source, allowed_roots=[allowed])
    assert store.list() == []


def test_a_fifo_swapped_in_after_the_check_is_refused_at_once(
    tmp_path: Path, roots: tuple[Path, Path], make_adapter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opening a FIFO waits for a writer: the store's writer would hang holding the lock."""
    allowed, _ = roots
    source = make_adapter(name="pig", parent=allowed)
    (source / "README.md").write_text("# pig")
    fifo = source / "README.md"

    def swap() -> None:
        fifo.unlink()
        os.mkfifo(fifo)

    swap_before_copying(monkeypatch, swap)
    store = AdapterStore(tmp_path / "store")
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            store.import_adapter(source, allowed_roots=[allowed])
            outcome.append(None)
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            outcome.append(e)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(30)
    if worker.is_alive():  # unblock the stuck open so the thread ends, then fail
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(30)
        pytest.fail("the import blocked opening a FIFO")
    assert isinstance(outcome[0], AdapterPathError) and "not a regular file" in str(outcome[0])
    assert store.list() == []
