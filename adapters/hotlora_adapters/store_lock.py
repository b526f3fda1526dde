"""The store's writer lock, its hidden temporary names, and the removal of what crashed writers left.

Writers in several processes take one `flock` on `<root>/.lock`, so their changes never interleave;
readers never lock. Temporary entries start with "." and so are never listed as adapters.
"""

from __future__ import annotations

import importlib
import logging
import os
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

from .fsutil import remove_entry
from .manifest import MANIFEST_FILENAME
from .names import is_valid_adapter_name
from .private import PRIVATE_DIR_MODE, make_private_dirs, open_lock_file
from .store_read import is_dir


def _load_fcntl() -> ModuleType | None:
    try:
        return importlib.import_module("fcntl")
    except ImportError:  # not POSIX: no cross-process writer lock
        return None


_fcntl = _load_fcntl()

logger = logging.getLogger(__name__)

TMP_PREFIX = ".tmp-"
TRASH_PREFIX = ".trash-"
LOCK_FILENAME = ".lock"
MANIFEST_TMP_PREFIX = f".{MANIFEST_FILENAME}.tmp-"
STALE_AFTER_S = 3600.0


@contextmanager
def writer_lock(root: Path) -> Iterator[None]:
    """Hold the store's exclusive writer lock (creating the root, private, if needed)."""
    make_private_dirs(root)
    fd = open_lock_file(root / LOCK_FILENAME)
    try:
        if _fcntl is not None:
            _fcntl.flock(fd, _fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the flock


def temp_path(root: Path, prefix: str, name: str, *, create: bool = False) -> Path:
    """A fresh hidden path `<root>/<prefix><name>-<random>`; with `create`, made as a private folder."""
    while True:
        path = root / f"{prefix}{name}-{secrets.token_hex(6)}"
        if not create:
            if not os.path.lexists(path):
                return path
            continue
        try:
            os.mkdir(path, PRIVATE_DIR_MODE)  # it becomes the adapter's folder
        except FileExistsError:
            continue
        return path


def remove_stale(root: Path, older_than_s: float) -> list[Path]:
    """Remove temp folders and manifest temp files older than `older_than_s` seconds (the caller holds
    the writer lock); return what was removed."""
    removed: list[Path] = []
    now = time.time()
    for path in _stale_candidates(root):
        try:
            age = now - os.lstat(path).st_mtime
        except FileNotFoundError:
            continue
        if age < older_than_s:
            continue
        try:
            remove_entry(path)
        except OSError as e:
            logger.warning("could not remove stale %s: %s", path, e)
            continue
        logger.info("removed %s, left behind by an interrupted store write", path)
        removed.append(path)
    return removed


def _stale_candidates(root: Path) -> list[Path]:
    candidates: list[Path] = []
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        return []
    for entry in entries:
        if entry.name.startswith((TMP_PREFIX, TRASH_PREFIX)):
            candidates.append(Path(entry.path))
        elif is_valid_adapter_name(entry.name) and is_dir(entry):
            try:
                children = list(os.scandir(entry.path))
            except OSError:
                continue
            candidates += [Path(c.path) for c in children if c.name.startswith(MANIFEST_TMP_PREFIX)]
    return candidates
