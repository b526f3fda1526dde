"""An adapter folder's version: a short token that changes whenever the folder's files do, content included.

File metadata alone can stay the same when the content changes: `rm -r` then `cp -r` of other weights
of the same shapes gets the freed inode numbers back, `shutil.copytree` keeps the source's mtimes, and
where ctime is coarse or mirrors mtime (network and FUSE file systems) nothing else moves. So the version
also covers bytes of each file: all of a small file (the config, the manifest), and of the weights pages
spread evenly through the file, header included. Sampled, not hashed whole: the store watcher takes every
adapter's version twice a second, and reading every adapter's weights that often is out of the question.
Weights from two trainings differ in every page, so replaced weights change the sampled bytes; an edit in
place changes the file's mtime. A file that resolves outside the store is versioned by its metadata
alone: nothing outside the store is read.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from pathlib import Path

from .manifest import MANIFEST_FILENAME
from .peft_config import CONFIG_FILENAME
from .peft_files import WEIGHTS_FILENAME

VERSION_LENGTH = 16
WHOLE_FILE_BYTES = 1 << 16  # files up to this size are read whole
SAMPLE_PAGES = 8
PAGE_BYTES = 1 << 12
_VERSIONED_FILES = (CONFIG_FILENAME, WEIGHTS_FILENAME, MANIFEST_FILENAME)


def adapter_version(path: Path) -> str:
    """The version of the adapter folder `path` (an entry of a store): changes whenever its config, weights
    or manifest change, or the entry is replaced or re-linked."""
    digest = hashlib.sha256()
    try:
        entry = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return digest.hexdigest()[:VERSION_LENGTH]
    digest.update(f"{entry.st_ino}:{entry.st_mode}|".encode())  # a link replaced by another
    store = path.parent
    in_store = not stat.S_ISLNK(entry.st_mode) or _resolves_into(path, store)
    for item in (path, *(path / name for name in _VERSIONED_FILES)):
        digest.update(_file_token(item, store if in_store else None))
    return digest.hexdigest()[:VERSION_LENGTH]


def _file_token(path: Path, store: Path | None) -> bytes:
    """The file's metadata, and a digest of its sampled bytes when it lies in `store` (None: it does not)."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return b"-|"
    token = f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:".encode()
    if store is not None and stat.S_ISREG(st.st_mode):
        token += hashlib.sha256(_sample(path, st.st_size, store)).digest()
    return token + b"|"


def _sample(path: Path, size: int, store: Path) -> bytes:
    """All of a small file; of a large one, `SAMPLE_PAGES` pages at offsets fixed by its size. A symlinked
    file is read only when it resolves into the store."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as e:
        if e.errno != errno.ELOOP or not _resolves_into(path, store):
            return f"unread: {e.errno}".encode()  # gone since the stat, unreadable, or outside the store
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as again:
            return f"unread: {again.errno}".encode()
    try:
        if size <= WHOLE_FILE_BYTES:
            return os.pread(fd, WHOLE_FILE_BYTES + 1, 0)
        last = size - PAGE_BYTES
        return b"".join(os.pread(fd, PAGE_BYTES, last * i // (SAMPLE_PAGES - 1)) for i in range(SAMPLE_PAGES))
    finally:
        os.close(fd)


def _resolves_into(path: Path, store: Path) -> bool:
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(store))
