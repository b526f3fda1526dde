"""The on-disk adapter store: `<root>/<name>/` folders of PEFT files plus `hotlora.json`.

Read-only for now. Listing never fails because of one bad folder: a present-but-unusable adapter is
listed with its error, so the server can show it and keep serving the others. Folders whose names start
with "." (registration's temp dirs, editor and OS litter) and folders with invalid names are never
adapters, so a half-written adapter is never visible.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import AdapterError, AdapterNotFoundError, InvalidAdapterError
from .manifest import Manifest, read_manifest
from .names import is_valid_adapter_name, validate_adapter_name
from .peft_config import CONFIG_FILENAME, AdapterConfig, read_adapter_config
from .peft_files import AdapterFiles, inspect_adapter

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoredAdapter:
    """One adapter folder in the store, as listed.

    `error` is None for a usable adapter, else why it cannot be used; `config` is None only when
    `adapter_config.json` itself is unreadable. Compatibility with a particular base is not judged here.
    """

    name: str
    path: Path
    config: AdapterConfig | None
    manifest: Manifest | None
    size_bytes: int
    created: int
    disabled: bool
    error: str | None = None

    @property
    def usable(self) -> bool:
        """Listed without error and not disabled: may be served."""
        return self.error is None and not self.disabled


class AdapterStore:
    """The adapters under one root folder; the root is created only when something is written."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"AdapterStore({str(self.root)!r})"

    def ensure_root(self) -> Path:
        """Create the root folder if needed and return it."""
        self.root.mkdir(parents=True, exist_ok=True)
        return self.root

    def path_for(self, name: str) -> Path:
        """The folder of adapter `name` (validated), whether or not it exists."""
        return self.root / validate_adapter_name(name)

    def list(self) -> list[StoredAdapter]:
        """Every adapter folder in name order, unusable ones with their error; [] if the root is missing."""
        try:
            entries = sorted(os.scandir(self.root), key=lambda e: e.name)
        except FileNotFoundError:
            return []
        except NotADirectoryError:
            raise AdapterError(f"adapter store {self.root} is not a folder") from None
        adapters: list[StoredAdapter] = []
        for entry in entries:
            if entry.name.startswith(".") or not _is_dir(entry):
                continue
            if not is_valid_adapter_name(entry.name):
                logger.debug("skipping %s: not a valid adapter name", entry.path)
                continue
            path = Path(entry.path)
            if not (path / CONFIG_FILENAME).is_file():
                continue
            try:
                adapters.append(_describe(entry.name, path))
            except FileNotFoundError:  # removed while listing
                continue
        return adapters

    def get(self, name: str) -> StoredAdapter:
        """The adapter `name`; `InvalidAdapterNameError` for a bad name, `AdapterNotFoundError` if absent."""
        path = self.path_for(name)
        if not (path / CONFIG_FILENAME).is_file():
            raise AdapterNotFoundError(f"no adapter named {name!r} in the store at {self.root}")
        try:
            return _describe(name, path)
        except FileNotFoundError:
            raise AdapterNotFoundError(f"no adapter named {name!r} in the store at {self.root}") from None

    def __contains__(self, name: object) -> bool:
        return is_valid_adapter_name(name) and (self.root / str(name) / CONFIG_FILENAME).is_file()

    def load_files(self, name: str) -> AdapterFiles:
        """Validated files of adapter `name`, ready to hand to PEFT; raises if missing or unusable."""
        path = self.get(name).path
        return inspect_adapter(path)


def _describe(name: str, path: Path) -> StoredAdapter:
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
    )


def _mtime(path: Path) -> int:
    try:
        return int(path.stat().st_mtime)
    except FileNotFoundError:
        raise
    except OSError:
        return 0


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _tree_size(path: Path) -> int:
    total = 0
    for dirpath, _dirnames, filenames in os.walk(path):
        for filename in filenames:
            try:
                total += os.lstat(os.path.join(dirpath, filename)).st_size
            except OSError:
                continue
    return total
