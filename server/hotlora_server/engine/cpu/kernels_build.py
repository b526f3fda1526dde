"""Compiling the CPU kernels (`kernels.c`) once per machine, and loading only a library we can trust.

The library is compiled with the system C compiler (`-march=native`) into a cache folder, named by a hash
of the source, flags, compiler and CPU; without a compiler there is no library and the server says that
batch invariance is off. Loading a library runs its code, and its name is predictable, so it is loaded
only from a folder and a file this user owns and no one else may write to.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

from hotlora_adapters.private import (
    PRIVATE_DIR_MODE,
    PRIVATE_FILE_MODE,
    foreign_or_writable,
    make_private_dirs,
    narrow_if_mine,
)

from .kernels import CpuKernels

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("kernels.c")
FLAGS = ("-O3", "-march=native", "-fopenmp", "-fPIC", "-shared")
LIBS = ("-lm",)  # after the source: linkers that drop unused libraries read them in order


def _cpu_identity() -> str:
    """What `-march=native` compiles for: the first CPU's model and feature flags."""
    try:
        first = Path("/proc/cpuinfo").read_text().split("\n\n")[0]
    except OSError:
        return platform.processor() or platform.machine()
    return "\n".join(
        line for line in first.splitlines() if line.split(":")[0].strip() in ("model name", "flags")
    )


def compiler() -> str | None:
    """The C compiler builds use: `$CC`, else `cc` or `gcc` on the PATH."""
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def build(cache_dir: Path, source: Path = SOURCE) -> CpuKernels | None:
    """The library, compiled into `cache_dir` if this machine has no build of it yet; None without a
    working compiler (the reason is logged). `source`: another version of kernels.c (bench/kernel_ab.py)."""
    cc = compiler()
    if cc is None:
        log.warning("no C compiler (cc): the CPU's fixed-order kernels are not available")
        return None
    if not _private_folder(cache_dir):
        return None
    digest = hashlib.sha256(
        "\0".join([source.read_text(), *FLAGS, *LIBS, cc, _cpu_identity()]).encode()
    ).hexdigest()[:16]
    target = cache_dir / f"kernels-{digest}.so"
    for _ in range(2):  # a cached library that does not load (truncated, foreign) is built again once
        if not _trusted(target) and not _compile(cc, source, target):
            return None
        try:
            return CpuKernels(ctypes.CDLL(str(target)), target)
        except (OSError, AttributeError) as exc:
            log.warning("cannot load %s (%s); building it again", target, exc)
            target.unlink(missing_ok=True)
    return None


def _private_folder(folder: Path) -> bool:
    """Whether `folder` (created 0700 if missing) is one no one else can put a library in. Ours but open
    to others (an older version's umask): narrowed to 0700, since a library found in it is judged by its
    own owner and mode anyway. Someone else's: no kernels, with a warning."""
    try:
        make_private_dirs(folder)
        former = narrow_if_mine(folder, PRIVATE_DIR_MODE)
        if former is not None:
            log.info("%s was mode %o: made private (700)", folder, former)
        problem = foreign_or_writable(os.stat(folder))
    except OSError as exc:
        problem = str(exc)
    if problem is not None:
        log.warning(
            "not loading the CPU kernels from %s: %s (batch invariance needs them; use another --home)",
            folder,
            problem,
        )
    return problem is None


def _trusted(target: Path) -> bool:
    """Whether the library at `target` exists and is ours alone to change. One that is not (a symlink,
    someone else's, writable by others) is removed, to be built again in a fresh private file."""
    try:
        info = os.lstat(target)
    except FileNotFoundError:
        return False
    problem = foreign_or_writable(info) or (
        None if stat.S_ISREG(info.st_mode) else "it is not a regular file"
    )
    if problem is None:
        return True
    log.warning("not loading %s: %s; building it again", target, problem)
    try:
        target.unlink()
    except OSError:
        pass  # a folder by that name, say: the build's rename onto it fails and says so
    return False


def _compile(compiler: str, source: Path, target: Path) -> bool:
    """Compile into a temporary file renamed into place, so a concurrent start never loads half a library."""
    fd, tmp = tempfile.mkstemp(prefix=".kernels-", suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        done = subprocess.run(
            [compiler, *FLAGS, str(source), "-o", tmp, *LIBS], capture_output=True, text=True, timeout=300
        )
        if done.returncode == 0:
            os.chmod(tmp, PRIVATE_FILE_MODE)  # the linker made it 0777 less the umask
            os.replace(tmp, target)
            return True
        reason = done.stderr[-2000:]
    except (OSError, subprocess.TimeoutExpired) as exc:
        reason = str(exc)
    finally:
        Path(tmp).unlink(missing_ok=True)
    log.warning("compiling the CPU kernels with %s failed:\n%s", compiler, reason)
    return False
