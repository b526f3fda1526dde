"""What hotlora keeps under `$HOTLORA_HOME` belongs to the user running it: folders 0700, files 0600.

Other local users must not read adapters or converted models, replace a library the server loads, or
hold the store's lock. New folders and files get these modes whatever the umask; things that already
exist are judged by `foreign_or_writable` before they are trusted.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
_SHARED_WRITE = stat.S_IWGRP | stat.S_IWOTH
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def make_private_dirs(path: Path) -> Path:
    """Create `path` and its missing parents as 0700 folders (`mkdir -p -m 700` for every level, which
    `Path.mkdir` does not do for parents); folders that already exist are left as they are."""
    path = Path(path)
    missing: list[Path] = []
    at = path
    while not os.path.lexists(at) and at.parent != at:
        missing.append(at)
        at = at.parent
    for folder in reversed(missing):
        try:
            os.mkdir(folder, PRIVATE_DIR_MODE)
        except FileExistsError:
            continue  # made meanwhile by another process: not ours to change
        os.chmod(folder, PRIVATE_DIR_MODE)  # the umask may have taken owner bits away
    if not path.is_dir():
        raise NotADirectoryError(f"{path} exists and is not a folder")
    return path


def create_private_file(path: Path) -> int:
    """A new file at `path` (never an existing one, never through a symlink), 0600; its descriptor for
    writing."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, PRIVATE_FILE_MODE)


def open_lock_file(path: Path) -> int:
    """Open (or create, 0600) the lock file at `path` for `flock`. Anyone who can open a lock file can
    hold its lock, so one an older version left readable by others is narrowed to 0600."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | _NOFOLLOW | _CLOEXEC, PRIVATE_FILE_MODE)
    try:
        narrow_if_mine(fd, PRIVATE_FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def narrow_if_mine(target: Path | int, mode: int) -> int | None:
    """Take away the permissions beyond `mode` from a file or folder (a path, or an open descriptor) this
    user owns; its former mode if it had any. Someone else's is left alone (and is not trusted either:
    see `foreign_or_writable`)."""
    info = os.stat(target)
    former = stat.S_IMODE(info.st_mode)
    if not _owned_by_me(info) or not former & ~mode:
        return None
    os.chmod(target, former & mode)
    return former


def foreign_or_writable(info: os.stat_result) -> str | None:
    """Why a file or folder (its `lstat`) may hold what someone else put there, or None: it is owned by
    another user, writable by its group or by others, or a symlink."""
    if stat.S_ISLNK(info.st_mode):
        return "it is a symlink"
    if not _owned_by_me(info):
        return f"it is owned by uid {info.st_uid}, not by this user"
    if info.st_mode & _SHARED_WRITE:
        return f"its group or other users may write to it (mode {stat.S_IMODE(info.st_mode):o})"
    return None


def _owned_by_me(info: os.stat_result) -> bool:
    geteuid = getattr(os, "geteuid", None)
    return geteuid is None or info.st_uid == geteuid()  # no owners to compare on Windows
