"""The on-disk adapter store: `<root>/<name>/` folders of PEFT files plus `hotlora.json`.

Listing never fails because of one bad folder: a present-but-unusable adapter is
listed with its error, so the server can show it and keep serving the others. Folders whose names start
with "." (registration's temp dirs, editor and OS litter) and folders with invalid names are never
adapters, so a half-written adapter is never visible. Reading is `store_read`, what a write copies and
checks `store_write`, the writer lock and temporary names `store_lock`.
"""

from __future__ import annotations

import builtins  # in the class body below, `list` is `AdapterStore.list`
import os
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path

from .compat import BaseSpec
from .confine import refuse_escaping_symlinks, resolve_inside, same_entry, store_escape
from .errors import (
    AdapterError,
    AdapterExistsError,
    AdapterNotFoundError,
    AdapterPathError,
    InvalidAdapterError,
)
from .finite import check_finite
from .fsutil import exchange, fsync_dir, remove_entry, rename_noreplace, write_file_synced
from .manifest import MANIFEST_FILENAME, Manifest, manifest_json, read_manifest
from .names import is_valid_adapter_name, validate_adapter_name
from .peft_config import CONFIG_FILENAME
from .peft_files import AdapterFiles, inspect_adapter
from .private import make_private_dirs
from .store_lock import STALE_AFTER_S, TMP_PREFIX, TRASH_PREFIX, remove_stale, temp_path, writer_lock
from .store_read import StoredAdapter, adapter_entries, describe
from .store_write import (
    CopyPlan,
    check_fits,
    confined_plan,
    copy_into,
    files_for_manifest,
    registered_manifest,
    replace_manifest,
    resolved_plan,
)
from .versions import adapter_version

__all__ = ["AdapterStore", "StoredAdapter"]

LOAD_ATTEMPTS = 5


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
        for name, path in adapter_entries(self.root):
            try:
                adapters.append(describe(name, path))
            except FileNotFoundError:  # removed while listing
                continue
        return adapters

    def versions(self) -> dict[str, str]:
        """Name -> version of every adapter folder `list()` would show, from a few `stat`s (no parsing)."""
        return {name: adapter_version(path) for name, path in adapter_entries(self.root)}

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
            return describe(name, path)
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
            check_fits(files, base, source, max_rank)
        plan = resolved_plan(source)
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
                check_fits(files, base, in_store, max_rank)
            return self.get(name)

        roots = self._import_roots(allowed_roots)
        folder = resolve_inside(given, roots)
        refuse_escaping_symlinks(given, folder, roots)
        files = inspect_adapter(folder)
        if base is not None:
            check_fits(files, base, given, max_rank)
        plan = confined_plan(given, folder, roots)
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
            trash = temp_path(self.root, TRASH_PREFIX, name)
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
                    name,
                    files_for_manifest(path),
                    source="imported",
                    created=adapter.created,
                    disabled=disabled,
                )
            elif manifest.disabled == disabled:
                return self.get(name)
            else:
                manifest = manifest.model_copy(update={"disabled": disabled})
            replace_manifest(path, manifest)
        return self.get(name)

    def cleanup_stale(self, older_than_s: float = STALE_AFTER_S) -> builtins.list[Path]:
        """Remove what crashed writers left behind (".tmp-*" / ".trash-*" folders, manifest temp files)
        older than `older_than_s` seconds; return what was removed."""
        if not self.root.is_dir():
            return []
        with self._lock():
            return remove_stale(self.root, older_than_s)

    # -- internals -----------------------------------------------------------------------------------

    def _register(
        self,
        name: str,
        source: Path,
        plan: CopyPlan,
        files: AdapterFiles,
        *,
        manifest: Manifest | None,
        overwrite: bool,
        base: BaseSpec | None,
        max_rank: int | None,
    ) -> StoredAdapter:
        if not overwrite:
            self._refuse_existing(name)  # before writing anything
        text = manifest_json(registered_manifest(name, files, manifest, base)).encode()
        dest = self.root / name
        self.ensure_root()
        with self._lock():
            remove_stale(self.root, STALE_AFTER_S)
            if not overwrite:
                self._refuse_existing(name)
            tmp = temp_path(self.root, TMP_PREFIX, name, create=True)
            try:
                copied = copy_into(tmp, plan, source)  # what will be served is the copy, not the source
                if base is not None:
                    check_fits(copied, base, source, max_rank)
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
                    trash = temp_path(self.root, TRASH_PREFIX, name)
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

    def _lock(self) -> AbstractContextManager[None]:
        return writer_lock(self.root)

    def _import_roots(self, allowed_roots: Sequence[Path]) -> builtins.list[Path]:
        return [self.root.resolve()] + [Path(root).resolve() for root in allowed_roots]
