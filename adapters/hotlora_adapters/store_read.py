"""Reading the store: which folders are adapters, and each one described as a `StoredAdapter`.

Reads take no lock: writers publish with one rename, so a folder is read whole as one version or another.
A present-but-unusable adapter is described with its error rather than raising, so one bad folder never
hides the others.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from .confine import store_escape
from .errors import AdapterError, InvalidAdapterError
from .manifest import Manifest, read_manifest
from .names import is_valid_adapter_name
from .peft_config import CONFIG_FILENAME, AdapterConfig, read_adapter_config
from .peft_files import inspect_adapter
from .versions import adapter_version

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoredAdapter:
    """One adapter folder in the store, as listed.

    `error` is None for a usable adapter, else why it cannot be used; `config` is None only when
    `adapter_config.json` itself is unreadable, or the entry reaches outside the store (then nothing of it
    is read). Compatibility with a particular base is not judged here. `version` changes whenever the
    adapter's files change, content included (see `versions`); it is taken before the files are read, so
    a change racing the listing shows up as a newer version on the next look.
    """

    name: str
    path: Path
    config: AdapterConfig | None
    manifest: Manifest | None
    size_bytes: int
    created: int
    disabled: bool
    error: str | None = None
    version: str = ""

    @property
    def usable(self) -> bool:
        """Listed without error and not disabled: may be served."""
        return self.error is None and not self.disabled


def adapter_entries(root: Path) -> list[tuple[str, Path]]:
    """(name, folder) of every adapter under `root`, in name order: folders with a valid name and an
    `adapter_config.json`, never hidden ones; [] if `root` is missing."""
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except FileNotFoundError:
        return []
    except NotADirectoryError:
        raise AdapterError(f"adapter store {root} is not a folder") from None
    found: list[tuple[str, Path]] = []
    for entry in entries:
        if entry.name.startswith(".") or not is_dir(entry):
            continue
        if not is_valid_adapter_name(entry.name):
            logger.debug("skipping %s: not a valid adapter name", entry.path)
            continue
        path = Path(entry.path)
        if (path / CONFIG_FILENAME).is_file():
            found.append((entry.name, path))
    return found


def describe(name: str, path: Path) -> StoredAdapter:
    """The adapter folder `path` as listed; `FileNotFoundError` if it vanished meanwhile."""
    version = adapter_version(path)  # before reading: a change racing this read shows up as a newer version
    escape = store_escape(path, path.parent)
    if escape is not None:  # listed with the reason; nothing outside the store is read
        created = int(os.lstat(path).st_mtime)
        return StoredAdapter(
            name,
            path,
            None,
            None,
            size_bytes=0,
            created=created,
            disabled=False,
            error=escape,
            version=version,
        )
    errors: list[str] = []
    config: AdapterConfig | None = None
    manifest: Manifest | None = None
    try:
        config = read_adapter_config(path)
        inspect_adapter(path)
    except InvalidAdapterError as e:
        errors.append(e.reason)
    try:
        manifest = read_manifest(path)
    except InvalidAdapterError as e:
        errors.append(e.reason)
    created = manifest.created if manifest is not None else _mtime(path)
    return StoredAdapter(
        name=name,
        path=path,
        config=config,
        manifest=manifest,
        size_bytes=_tree_size(path),
        created=created,
        disabled=manifest.disabled if manifest is not None else False,
        error="; ".join(errors) or None,
        version=version,
    )


def is_dir(entry: os.DirEntry[str]) -> bool:
    """`entry.is_dir()`, False where that cannot be told."""
    try:
        return entry.is_dir()
    except OSError:
        return False


def _mtime(path: Path) -> int:
    try:
        return int(path.stat().st_mtime)
    except FileNotFoundError:
        raise
    except OSError:
        return 0


def _tree_size(path: Path) -> int:
    total = 0
    for dirpath, _dirnames, filenames in os.walk(path):
        for filename in filenames:
            try:
                total += os.lstat(os.path.join(dirpath, filename)).st_size
            except OSError:
                continue
    return total
