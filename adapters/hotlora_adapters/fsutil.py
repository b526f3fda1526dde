"""Durable, atomic file-system steps for the store's write side (stdlib only).

- `renameat2` through ctypes: `RENAME_EXCHANGE` swaps two directory entries in one step (an overwrite
  with no moment where the name is missing), `RENAME_NOREPLACE` publishes without clobbering. Where the
  call is missing (not Linux, old glibc, a file system that refuses the flag) the callers fall back to
  plain renames.
- fsync of files and folders, so a rename that made something visible also survives a power cut.
- reading a source without following symlinks, so what a check resolved is what gets copied.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import stat
import sys
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

from .private import create_private_file

AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
# errno values meaning "this kernel/libc/file system cannot do that rename", not "the rename failed"
_UNSUPPORTED = {errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP}
_COPY_CHUNK = 1 << 20
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_WALK_DIR = getattr(os, "O_PATH", os.O_RDONLY) | getattr(os, "O_DIRECTORY", 0) | _NOFOLLOW


class UnsafeSourceError(OSError):
    """A file to copy is no longer what was checked: a symlink now sits on its path, or it is not a
    regular file (a FIFO would block the copy, a device would never end)."""


@cache
def _libc_renameat2() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        func: Any = libc.renameat2  # glibc >= 2.28
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    func.restype = ctypes.c_int
    return func


def renameat2(src: Path, dst: Path, flags: int) -> bool:
    """`renameat2(AT_FDCWD, src, AT_FDCWD, dst, flags)`: True when done, False when unsupported here.

    Any other failure raises `OSError` with the errno (e.g. `FileExistsError` for `RENAME_NOREPLACE`
    onto an existing name, `FileNotFoundError` for `RENAME_EXCHANGE` with a missing side).
    """
    func = _libc_renameat2()
    if func is None:
        return False
    if func(AT_FDCWD, os.fsencode(src), AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in _UNSUPPORTED:
        return False
    raise OSError(err, os.strerror(err), str(src), None, str(dst))


def rename_noreplace(src: Path, dst: Path) -> None:
    """Rename `src` to `dst`; `FileExistsError` when `dst` exists (race-free where renameat2 works)."""
    if renameat2(src, dst, RENAME_NOREPLACE):
        return
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst))
    try:
        os.rename(
            src, dst
        )  # refuses a non-empty folder at `dst` (ENOTEMPTY), which is all that can race here
    except OSError as e:
        if e.errno in (errno.EEXIST, errno.ENOTEMPTY):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst)) from e
        raise


def exchange(a: Path, b: Path) -> bool:
    """Atomically swap the entries `a` and `b` (both must exist); False when unsupported here."""
    return renameat2(a, b, RENAME_EXCHANGE)


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (creations, renames) to disk. A no-op where folders cannot be opened."""
    if os.name == "nt":
        return
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_resolved(path: Path) -> int:
    """Open the regular file at `path`, an absolute path with symlinks already resolved, for reading
    without following any symlink on the way: one swapped in for the file or for any folder above it
    after the path was checked raises `UnsafeSourceError` instead of being read."""
    if not path.is_absolute():
        raise ValueError(f"{path} is not an absolute path")
    if os.open not in os.supports_dir_fd:  # no openat here: the last step at least follows no link
        return _regular(os.open(path, os.O_RDONLY | os.O_NONBLOCK | _NOFOLLOW), path)
    *folders, name = path.parts[1:]
    fd = os.open(path.anchor, _WALK_DIR)
    try:
        for folder in folders:
            fd, parent = _step(folder, fd, _WALK_DIR, path), fd
            os.close(parent)
        # O_NONBLOCK: opening a FIFO returns at once (and is refused below) instead of waiting for a writer
        return _regular(_step(name, fd, os.O_RDONLY | os.O_NONBLOCK | _NOFOLLOW, path), path)
    finally:
        os.close(fd)


def _step(name: str, dir_fd: int, flags: int, path: Path) -> int:
    try:
        return os.open(name, flags, dir_fd=dir_fd)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):  # a symlink (or no longer a folder) where one was checked
            raise UnsafeSourceError(
                e.errno, f"{name!r} changed after the path was checked", str(path)
            ) from None
        if e.errno == errno.ENOENT:  # removed since the check: the caller's to report, not a server fault
            raise UnsafeSourceError(
                e.errno, f"{name!r} disappeared after the path was checked", str(path)
            ) from None
        raise


def _regular(fd: int, path: Path) -> int:
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UnsafeSourceError(errno.EINVAL, "not a regular file", str(path))
    os.set_blocking(fd, True)
    return fd


def copy_file_synced(src: Path, dst: Path) -> None:
    """Copy the regular file `src` (absolute, symlinks resolved: see `open_resolved`) into a new file
    `dst` (0600), fsynced before returning."""
    with open(open_resolved(src), "rb") as fin, open(create_private_file(dst), "wb") as fout:
        shutil.copyfileobj(fin, fout, _COPY_CHUNK)
        fout.flush()
        os.fsync(fout.fileno())


def write_file_synced(path: Path, data: bytes) -> None:
    """Write a new file `path` (0600) with `data`, fsynced before returning."""
    with open(create_private_file(path), "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def remove_entry(path: Path) -> None:
    """Remove a file, a symlink (never what it points to) or a whole folder; a missing path is fine."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISDIR(mode):
        shutil.rmtree(path, onerror=_ignore_missing)
    else:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _ignore_missing(_func: Callable[..., Any], _path: str, exc_info: Any) -> None:
    if not isinstance(exc_info[1], FileNotFoundError):  # removed meanwhile by someone else: fine
        raise exc_info[1]
