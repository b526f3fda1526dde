"""Writing the store: what registration copies, the copy checked as it will be served, and manifests.

Only allow-listed files are copied (PEFT's pair and harmless extras, never pickles), along paths resolved
and confined beforehand, so a symlink swapped in later is refused rather than followed. The checks run
on the copy, since the copy is what the server loads.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Sequence
from pathlib import Path

from .compat import BaseSpec, find_mismatches
from .confine import inside, outside
from .errors import AdapterPathError, IncompatibleAdapterError, InvalidAdapterError
from .finite import check_finite
from .fsutil import UnsafeSourceError, copy_file_synced, fsync_dir, remove_entry, write_file_synced
from .manifest import MANIFEST_FILENAME, Manifest, manifest_json
from .peft_config import CONFIG_FILENAME, read_adapter_config
from .peft_files import PICKLE_WEIGHT_FILENAMES, WEIGHTS_FILENAME, AdapterFiles, inspect_adapter
from .store_lock import MANIFEST_TMP_PREFIX

# What registration copies from a source folder: PEFT's two files, plus harmless extras. Never pickles.
REQUIRED_FILENAMES = (CONFIG_FILENAME, WEIGHTS_FILENAME)
EXTRA_FILENAMES = ("README.md",)
EXTRA_SUFFIXES = (".json", ".png")
REFUSED_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")

CopyPlan = list[tuple[str, Path]]  # (file name in the adapter folder, the resolved path to copy it from)


def copy_plan(folder: Path) -> list[str]:
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


def resolved_plan(folder: Path) -> CopyPlan:
    """`copy_plan(folder)` with each file's resolved path."""
    return [(filename, (folder / filename).resolve(strict=True)) for filename in copy_plan(folder)]


def confined_plan(given: Path, folder: Path, roots: Sequence[Path]) -> CopyPlan:
    """`resolved_plan` for a user-supplied folder: every file must resolve inside `roots`."""
    plan: CopyPlan = []
    for filename, real in resolved_plan(folder):
        if not inside(real, roots):  # already refused by the caller; re-checked on what is actually copied
            raise AdapterPathError(f"{given / filename} resolves to {real}, {outside(roots)}")
        plan.append((filename, real))
    return plan


def copy_into(tmp: Path, plan: CopyPlan, source: Path) -> AdapterFiles:
    """Copy the planned files into `tmp` and return the copy's files, checked (NaN/Inf refused).

    A path that changed after it was resolved (a symlink swapped in, a FIFO) is refused, not followed;
    errors name `source`, the folder the user gave.
    """
    for filename, src in plan:
        try:
            copy_file_synced(src, tmp / filename)
        except UnsafeSourceError as e:
            raise AdapterPathError(f"{source / filename}: {e.strerror}; nothing was copied") from e
    try:
        copied = inspect_adapter(tmp)
    except InvalidAdapterError as e:  # the source changed while being copied
        raise InvalidAdapterError(
            f"{e.reason} (after copying; was it modified meanwhile?)", path=source
        ) from e
    check_finite(tmp, shown_as=source)
    return copied


def check_fits(files: AdapterFiles, base: BaseSpec, shown_as: Path, max_rank: int | None) -> None:
    """`IncompatibleAdapterError` unless the adapter fits `base` (ranks up to `max_rank`)."""
    mismatches = find_mismatches(files, base, max_rank=max_rank)
    if mismatches:
        raise IncompatibleAdapterError(mismatches, subject=f"adapter at {shown_as}")


def registered_manifest(
    name: str, files: AdapterFiles, manifest: Manifest | None, base: BaseSpec | None
) -> Manifest:
    """The manifest to store: `manifest` renamed to `name` (with `base`'s fingerprint if it has none), or
    one derived from the files with source "imported"."""
    if manifest is None:
        return Manifest.for_adapter(name, files, source="imported", base=base)
    update: dict[str, object] = {"name": name}
    if base is not None and manifest.base_fingerprint is None:
        update["base_fingerprint"] = base.fingerprint()
    return manifest.model_copy(update=update)


def files_for_manifest(path: Path) -> AdapterFiles:
    """The adapter's files for building a manifest; an unusable one still has a config to describe."""
    try:
        return inspect_adapter(path)
    except InvalidAdapterError:
        return AdapterFiles(path=path, config=read_adapter_config(path), tensor_shapes={})


def replace_manifest(folder: Path, manifest: Manifest) -> None:
    """Rewrite `hotlora.json` in `folder` atomically (temp file, fsync, rename)."""
    tmp = folder / f"{MANIFEST_TMP_PREFIX}{secrets.token_hex(6)}"
    try:
        write_file_synced(tmp, manifest_json(manifest).encode())
        os.replace(tmp, folder / MANIFEST_FILENAME)
    except BaseException:
        remove_entry(tmp)
        raise
    fsync_dir(folder)
