"""The on-disk adapter store: `<root>/<name>/` folders of PEFT files plus `hotlora.json`.

Listing never fails because of one bad folder: a present-but-unusable adapter is
listed with its error, so the server can show it and keep serving the others. Folders whose names start
with "." (registration's temp dirs, editor and OS litter) and folders with invalid names are never
adapters, so a half-written adapter is never visible.
"""

from __future__ import annotations

import importlib
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from .compat import BaseSpec, find_mismatches
from .confine import inside, outside, refuse_escaping_symlinks, resolve_inside, same_entry, store_escape
from .errors import (
    AdapterError,
    AdapterExistsError,
    AdapterNotFoundError,
    AdapterPathError,
    IncompatibleAdapterError,
    InvalidAdapterError,
)
from .finite import check_finite
from .fsutil import (
    UnsafeSourceError,
    copy_file_synced,
    exchange,
    fsync_dir,
    remove_entry,
    rename_noreplace,
    write_file_synced,
)
from .manifest import MANIFEST_FILENAME, Manifest, manifest_json, read_manifest
from .names import is_valid_adapter_name, validate_adapter_name
from .peft_config import CONFIG_FILENAME, AdapterConfig, read_adapter_config
from .peft_files import PICKLE_WEIGHT_FILENAMES, WEIGHTS_FILENAME, AdapterFiles, inspect_adapter
from .private import PRIVATE_DIR_MODE, make_private_dirs, open_lock_file
from .versions import adapter_version



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
LOAD_ATTEMPTS = 5
# What registration copies from a source folder: PEFT's two files, plus harmless extras. Never pickles.
REQUIRED_FILENAMES = (CONFIG_FILENAME, WEIGHTS_FILENAME)
EXTRA_FILENAMES = ("README.md",)
EXTRA_SUFFIXES = (".json", ".png")
REFUSED_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


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


class AdapterStore:
    """The adapters under one root folder; the root is created only when something is written.

    Reads never lock. Writes (`register`, `import_adapter`, `delete`, `set_disabled`, `cleanup_stale`)
    take an exclusive `flock` on `<root>/.lock`, so writers in several processes do not interleave, and
    each makes its change visible with one rename: a reader sees the old adapter or the new one, never a
    half-written folder or a mix of old and new files. What it creates is this user's alone (folders
    0700, files and the lock 0600): anyone who can open the lock file can hold it.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"AdapterStore({str(self.root)!r})"

    def ensure_root(self) -> Path:
        """Create the root folder (and its missing parents) if needed, readable by this user only, and
        return it."""
        return make_private_dirs(self.root)

    def path_for(self, name: str) -> Path:
        """The folder of adapter `name` (validated), whether or not it exists."""
        return self.root / validate_adapter_name(name)

    # -- reading -------------------------------------------------------------------------------------

    def list(self) -> list[StoredAdapter]:
        """Every adapter folder in name order, unusable ones with their error; [] if the root is missing."""
        adapters: list[StoredAdapter] = []
        for name, path in self._adapter_entries():
            try:
                adapters.append(_describe(name, path))
            except FileNotFoundError:  # removed while listing
                continue
        return adapters

    def versions(self) -> dict[str, str]:
        """Name -> version of every adapter folder `list()` would show, from a few `stat`s (no parsing)."""
        return {name: adapter_version(path) for name, path in self._adapter_entries()}

    def version_of(self, name: str) -> str:
        """The current version of adapter `name` (cheap; compare with `StoredAdapter.version`)."""
        path = self.path_for(name)
        if not (path / CONFIG_FILENAME).is_file():
            raise self._not_found(name)
        return adapter_version(path)

    def get(self, name: str) -> StoredAdapter:
        """The adapter `name`; `InvalidAdapterNameError` for a bad name, `AdapterNotFoundError` if absent."""
        path = self.path_for(name)
        if not (path / CONFIG_FILENAME).is_file():
            raise self._not_found(name)
        try:
            return _describe(name, path)
        except FileNotFoundError:
            raise self._not_found(name) from None

    def __contains__(self, name: object) -> bool:
        return is_valid_adapter_name(name) and (self.root / str(name) / CONFIG_FILENAME).is_file()

    def load_files(self, name: str, check: Callable[[AdapterFiles], None] | None = None) -> AdapterFiles:
        """Validated files of adapter `name`, ready to hand to PEFT; raises if missing or unusable.

        Unlike `list`, which reads headers only, this reads the weights too and refuses NaN/Inf values;
        `check` (e.g. the fit to a base) runs on the header first, so a refused file's data is never read.
        Read again if the adapter was replaced while being read, so config and header are of one version.
        Callers that then hand `files.path` to PEFT can do the same: compare `version_of(name)` before and
        after loading, and load again when it changed.
        """
        path = self.get(name).path
        for _attempt in range(LOAD_ATTEMPTS):
            before = adapter_version(path)
            try:
                files = inspect_adapter(path)
                if check is not None:
                    check(files)
                check_finite(path)
            except InvalidAdapterError:
                if adapter_version(path) != before:
                    continue  # replaced or deleted mid-read: look again
                raise
            if adapter_version(path) == before:
                return files
        raise AdapterError(f"adapter {name!r} kept changing while being read; try again")

    # -- writing -------------------------------------------------------------------------------------

    def register(
        self,
        name: str,
        source: Path,
        *,
        manifest: Manifest | None = None,
        overwrite: bool = False,
        base: BaseSpec | None = None,
        max_rank: int | None = None,
    ) -> StoredAdapter:
        """Copy the PEFT adapter folder `source` into the store as `name`, atomically.

        Validates the name, the files (`inspect_adapter`) and, with `base`, the fit (`check_compatible`,
        ranks up to `max_rank`) before writing anything. Copies `adapter_config.json`,
        `adapter_model.safetensors` and harmless extras (README.md, *.json, *.png; never pickles) into a
        hidden temp folder in the store, refuses NaN/Inf weights in that copy (what would be served), writes
        `hotlora.json` (`manifest` with its name set to `name` and, if it has none, `base`'s
        fingerprint; else one derived from the config with source "imported"), fsyncs, and publishes with
        one rename. An existing `name` raises `AdapterExistsError` unless `overwrite`, which swaps old for
        new in one step (`renameat2(RENAME_EXCHANGE)`, else rename-away + rename-in) and then deletes the
        old files.
        """
        validate_adapter_name(name)
        source = Path(source)
        files = inspect_adapter(source)
        if base is not None:
            _check_fits(files, base, source, max_rank)
        plan = [(filename, (source / filename).resolve(strict=True)) for filename in _copy_plan(source)]
        return self._register(
            name, source, plan, files, manifest=manifest, overwrite=overwrite, base=base, max_rank=max_rank
        )

    def import_adapter(
        self,
        path: Path,
        name: str | None = None,
        *,
        allowed_roots: Sequence[Path] = (),
        overwrite: bool = False,
        base: BaseSpec | None = None,
        max_rank: int | None = None,
    ) -> StoredAdapter:
        """Register a copy of the adapter folder at `path` (a user-supplied path) as `name`.

        `path` must resolve (symlinks followed) inside the store or one of `allowed_roots`, and so must
        every symlink inside the folder; else `AdapterPathError`. The files are then read along their
        resolved paths without following any symlink, so a link swapped in after the check is refused
        rather than followed out of the roots. `name` defaults to the folder's name.
        A path that already is `<store>/<name>` is only validated (and checked against `base`).
        """
        given = Path(path)
        if "\x00" in str(given):  # the OS refuses such a path with a ValueError, not an OSError
            raise AdapterPathError(f"the path {str(given)!r} contains a NUL character")
        if name is None:
            name = Path(os.path.abspath(given)).name
        validate_adapter_name(name)
        in_store = self.root / name
        if same_entry(given, in_store):
            escape = store_escape(in_store, self.root)
            if escape is not None:
                raise AdapterPathError(escape)
            files = inspect_adapter(in_store)
            check_finite(in_store)
            if base is not None:
                _check_fits(files, base, in_store, max_rank)
            return self.get(name)

        roots = self._import_roots(allowed_roots)
        folder = resolve_inside(given, roots)
        refuse_escaping_symlinks(given, folder, roots)
        files = inspect_adapter(folder)
        if base is not None:
            _check_fits(files, base, given, max_rank)
        plan: list[tuple[str, Path]] = []
        for filename in _copy_plan(folder):
            real = (folder / filename).resolve(strict=True)
            if not inside(real, roots):  # already refused above; re-checked on what is actually copied
                raise AdapterPathError(f"{given / filename} resolves to {real}, {outside(roots)}")
            plan.append((filename, real))
        return self._register(
            name, given, plan, files, manifest=None, overwrite=overwrite, base=base, max_rank=max_rank
        )

    def delete(self, name: str) -> None:
        """Remove adapter `name` atomically (renamed out of sight, then deleted); `AdapterNotFoundError` if absent.

        A symlinked adapter folder loses its link only; what it points to is left alone.
        """
        path = self.path_for(name)
        if not (path / CONFIG_FILENAME).is_file():
            raise self._not_found(name)
        with self._lock():
            trash = self._temp_path(TRASH_PREFIX, name)
            try:
                os.rename(path, trash)
            except FileNotFoundError:
                raise self._not_found(name) from None
            fsync_dir(self.root)
            remove_entry(trash)

    def set_disabled(self, name: str, disabled: bool) -> StoredAdapter:
        """Mark adapter `name` disabled (listed, never served) or enabled, by rewriting `hotlora.json`
        atomically; a folder without a manifest gets one (source "imported")."""
        adapter = self.get(name)
        path = adapter.path
        escape = store_escape(path, self.root)
        if escape is not None:  # its manifest would be written outside the store
            raise AdapterPathError(escape)
        with self._lock():
            manifest = read_manifest(path)  # an unreadable manifest raises rather than being clobbered
            if manifest is None:
                manifest = Manifest.for_adapter(
                    name, _files_for_manifest(path), source="imported", created=adapter.created, disabled=disabled
                )
            elif manifest.disabled == disabled:
                return self.get(name)
            else:
                manifest = manifest.model_copy(update={"disabled": disabled})
            _replace_manifest(path, manifest)
        return self.get(name)

    def cleanup_stale(self, older_than_s: float = STALE_AFTER_S) -> list[Path]:
        """Remove what crashed writers left behind (".tmp-*" / ".trash-*" folders, manifest temp files)
        older than `older_than_s` seconds; return what was removed."""
        if not self.root.is_dir():
            return []
        with self._lock():
            return self._cleanup_stale(older_than_s)

    # -- internals -----------------------------------------------------------------------------------

    def _register(
        self,
        name: str,
        source: Path,
        plan: list[tuple[str, Path]],
        files: AdapterFiles,
        *,
        manifest: Manifest | None,
        overwrite: bool,
        base: BaseSpec | None,
        max_rank: int | None,
    ) -> StoredAdapter:
        if not overwrite:
            self._refuse_existing(name)  # before writing anything
        if manifest is None:
            manifest = Manifest.for_adapter(name, files, source="imported", base=base)
        else:
            update: dict[str, object] = {"name": name}
            if base is not None and manifest.base_fingerprint is None:
                update["base_fingerprint"] = base.fingerprint()
            manifest = manifest.model_copy(update=update)
        text = manifest_json(manifest).encode()
        dest = self.root / name
        self.ensure_root()
        with self._lock():
            self._cleanup_stale(STALE_AFTER_S)
            if not overwrite:
                self._refuse_existing(name)
            tmp = self._temp_path(TMP_PREFIX, name, create=True)
            try:
                _copy_planned(plan, tmp, source)
                copied = _inspect_copy(tmp, source)  # what will be served is the copy, not the source
                check_finite(tmp, shown_as=source)
                if base is not None:
                    _check_fits(copied, base, source, max_rank)
                write_file_synced(tmp / MANIFEST_FILENAME, text)
                fsync_dir(tmp)
                old = self._publish(tmp, dest, name, overwrite)
            except BaseException:
                remove_entry(tmp)
                raise
            fsync_dir(self.root)
            if old is not None:
                remove_entry(old)
        return self.get(name)

    def _publish(self, tmp: Path, dest: Path, name: str, overwrite: bool) -> Path | None:
        """Make `tmp` visible as `dest` in one rename; return where the replaced old content now is."""
        if overwrite:
            try:
                if exchange(tmp, dest):
                    return tmp  # the old content now lives under the temp name
            except FileNotFoundError:
                pass  # nothing to replace (any more): publish as new
            else:
                if os.path.lexists(dest):  # no renameat2 here: move the old one away, then the new one in
                    trash = self._temp_path(TRASH_PREFIX, name)
                    os.rename(dest, trash)
                    try:
                        os.rename(tmp, dest)
                    except BaseException:
                        os.rename(trash, dest)
                        raise
                    return trash
        try:
            rename_noreplace(tmp, dest)
        except FileExistsError:
            raise self._exists(name) from None
        return None

    def _refuse_existing(self, name: str) -> None:
        if os.path.lexists(self.root / name):
            raise self._exists(name)

    def _exists(self, name: str) -> AdapterExistsError:
        path = self.root / name
        if (path / CONFIG_FILENAME).is_file():
            return AdapterExistsError(
                f"an adapter named {name!r} already exists in the store at {self.root}; "
                "delete it first or ask to overwrite it"
            )
        return AdapterExistsError(
            f"{path} already exists and is not an adapter; remove it or choose another name"
        )

    def _not_found(self, name: str) -> AdapterNotFoundError:
        return AdapterNotFoundError(f"no adapter named {name!r} in the store at {self.root}")

    def _temp_path(self, prefix: str, name: str, *, create: bool = False) -> Path:
        while True:
            path = self.root / f"{prefix}{name}-{secrets.token_hex(6)}"
            if not create:
                if not os.path.lexists(path):
                    return path
                continue
            try:
                os.mkdir(path, PRIVATE_DIR_MODE)  # it becomes the adapter's folder
            except FileExistsError:
                continue
            return path

    @contextmanager
    def _lock(self) -> Iterator[None]:
        self.ensure_root()
        fd = open_lock_file(self.root / LOCK_FILENAME)
        try:
            if _fcntl is not None:
                _fcntl.flock(fd, _fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the flock

    def _cleanup_stale(self, older_than_s: float) -> list[Path]:
        candidates: list[Path] = []
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            return []
        for entry in entries:
            if entry.name.startswith((TMP_PREFIX, TRASH_PREFIX)):
                candidates.append(Path(entry.path))
            elif is_valid_adapter_name(entry.name) and _is_dir(entry):
                try:
                    children = list(os.scandir(entry.path))
                except OSError:
                    continue
                candidates += [Path(c.path) for c in children if c.name.startswith(MANIFEST_TMP_PREFIX)]
        removed: list[Path] = []
        now = time.time()
        for path in candidates:
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

    def _import_roots(self, allowed_roots: Sequence[Path]) -> list[Path]:
        return [self.root.resolve()] + [Path(root).resolve() for root in allowed_roots]

    def _adapter_entries(self) -> list[tuple[str, Path]]:
        try:
            entries = sorted(os.scandir(self.root), key=lambda e: e.name)
        except FileNotFoundError:
            return []
        except NotADirectoryError:
            raise AdapterError(f"adapter store {self.root} is not a folder") from None
        found: list[tuple[str, Path]] = []
        for entry in entries:
            if entry.name.startswith(".") or not _is_dir(entry):
                continue
            if not is_valid_adapter_name(entry.name):
                logger.debug("skipping %s: not a valid adapter name", entry.path)
                continue
            path = Path(entry.path)
            if (path / CONFIG_FILENAME).is_file():
                found.append((entry.name, path))
        return found


def _copy_plan(folder: Path) -> list[str]:
    """The file names registration copies from `folder`: the PEFT pair, then allowed extras; no pickles."""
    names = list(REQUIRED_FILENAMES)
    extras: list[str] = []
    for entry in os.scandir(folder):
        filename = entry.name
        if filename in names or filename == MANIFEST_FILENAME or filename.startswith("."):
            continue
        lowered = filename.lower()
        if filename in PICKLE_WEIGHT_FILENAMES or lowered.endswith(REFUSED_SUFFIXES):
            continue
        if filename not in EXTRA_FILENAMES and not lowered.endswith(EXTRA_SUFFIXES):
            continue
        try:
            if entry.is_file():  # a regular file (symlinks followed): no folders, FIFOs, devices
                extras.append(filename)
        except OSError:
            continue
    return names + sorted(extras)


def _copy_planned(plan: list[tuple[str, Path]], tmp: Path, source: Path) -> None:
    """Copy each planned file (a resolved path, confined where it came from a user) into `tmp`. A path
    that changed after it was resolved (a symlink swapped in, a FIFO) is refused, not followed."""
    for filename, src in plan:
        try:
            copy_file_synced(src, tmp / filename)
        except UnsafeSourceError as e:
            raise AdapterPathError(f"{source / filename}: {e.strerror}; nothing was copied") from e


def _inspect_copy(copy: Path, source: Path) -> AdapterFiles:
    try:
        return inspect_adapter(copy)
    except InvalidAdapterError as e:  # the source changed while being copied
        raise InvalidAdapterError(f"{e.reason} (after copying; was it modified meanwhile?)", path=source) from e


def _check_fits(files: AdapterFiles, base: BaseSpec, shown_as: Path, max_rank: int | None) -> None:
    mismatches = find_mismatches(files, base, max_rank=max_rank)
    if mismatches:
        raise IncompatibleAdapterError(mismatches, subject=f"adapter at {shown_as}")


def _files_for_manifest(path: Path) -> AdapterFiles:
    """The adapter's files for building a manifest; an unusable one still has a config to describe."""
    try:
        return inspect_adapter(path)
    except InvalidAdapterError:
        return AdapterFiles(path=path, config=read_adapter_config(path), tensor_shapes={})


def _replace_manifest(folder: Path, manifest: Manifest) -> None:
    tmp = folder / f"{MANIFEST_TMP_PREFIX}{secrets.token_hex(6)}"
    try:
        write_file_synced(tmp, manifest_json(manifest).encode())
        os.replace(tmp, folder / MANIFEST_FILENAME)
    except BaseException:
        remove_entry(tmp)
        raise
    fsync_dir(folder)


def _describe(name: str, path: Path) -> StoredAdapter:
    version = adapter_version(path)  # before reading: a change racing this read shows up as a newer version
    escape = store_escape(path, path.parent)
    if escape is not None:  # listed with the reason; nothing outside the store is read
        created = int(os.lstat(path).st_mtime)
        return StoredAdapter(name, path, None, None, size_bytes=0, created=created, disabled=False, error=escape,
                             version=version)  # fmt: skip
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
