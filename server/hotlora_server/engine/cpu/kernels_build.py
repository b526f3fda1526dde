"""Compiling the CPU kernels once per machine, and loading only a library we can trust.

`kernels.c` is compiled with the system C compiler (`-march=native`) and linked with `kernels_ops.cpp`,
which registers its entry points as torch operators (`kernels`), compiled with the system C++ compiler
against this torch's headers and libraries (`torch.utils.cpp_extension` names them). The library goes
into a cache folder, named by a hash of the sources, flags, compilers, torch version and CPU; without
both compilers there is no library and the server says that batch invariance is off. Loading a library
runs its code, and its name is predictable, so it is loaded only from a folder and a file this user owns
and no one else may write to.
"""

from __future__ import annotations

import ctypes
import hashlib
import itertools
import logging
import os
import platform
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import torch

from hotlora_adapters.private import (
    PRIVATE_DIR_MODE,
    PRIVATE_FILE_MODE,
    foreign_or_writable,
    make_private_dirs,
    narrow_if_mine,
)

from .bnb import bnb_gemv_kernels
from .kernels import CpuKernels

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("kernels.c")
HEADER = SOURCE.with_suffix(".h")
OPS = Path(__file__).with_name("kernels_ops.cpp")
FLAGS = ("-O3", "-march=native", "-fopenmp", "-fPIC")
LIBS = ("-lm",)  # after the sources: linkers that drop unused libraries read them in order

_loaded: dict[Path, CpuKernels] = {}  # a library is registered once per process, under its own namespace
_namespaces = itertools.count()


def _cpu_identity() -> str:
    """What `-march=native` compiles for: the first CPU's model and feature flags."""
    try:
        first = Path("/proc/cpuinfo").read_text().split("\n\n")[0]
    except OSError:
        return platform.processor() or platform.machine()
    return "\n".join(
        line for line in first.splitlines() if line.split(":")[0].strip() in ("model name", "flags")
    )


def compilers() -> tuple[str, str] | None:
    """The C and C++ compilers builds use: `$CC` (else `cc` or `gcc`) and `$CXX` (else `c++` or `g++`);
    None without either."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    return (cc, cxx) if cc and cxx else None


def build(cache_dir: Path, source: Path = SOURCE) -> CpuKernels | None:
    """The library, compiled into `cache_dir` if this machine has no build of it yet; None without
    working compilers (the reason is logged). `source`: another version of kernels.c with the same entry
    points (bench/kernel_ab.py)."""
    tools = compilers()
    if tools is None:
        log.warning("no C and C++ compilers (cc, c++): the CPU's fixed-order kernels are not available")
        return None
    if not _private_folder(cache_dir):
        return None
    parts = [p.read_text() for p in (source, HEADER, OPS)]
    digest = hashlib.sha256(
        "\0".join([*parts, *FLAGS, *LIBS, *tools, torch.__version__, _cpu_identity()]).encode()
    ).hexdigest()[:16]
    target = cache_dir / f"kernels-{digest}.so"
    for _ in range(2):  # a cached library that does not load (truncated, foreign) is built again once
        if not _trusted(target) and not (_copy_loaded(target) or _compile(tools, source, target)):
            return None
        try:
            return _load(target, digest)
        except (OSError, AttributeError, RuntimeError) as exc:
            log.warning("cannot load %s (%s); building it again", target, exc)
            target.unlink(missing_ok=True)
    return None


def _load(target: Path, digest: str) -> CpuKernels:
    """The library at `target` with its operators registered in a namespace of their own (one per
    library this process loads: the same build may be loaded from two folders); loaded once per path."""
    if target in _loaded:
        return _loaded[target]
    namespace = f"hotlora_{digest}_{next(_namespaces)}"
    register = ctypes.CDLL(str(target)).hotlora_register
    register.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_void_p]
    if register(namespace.encode(), *bnb_gemv_kernels()) != 0:
        raise RuntimeError("torch refused its operators (see stderr)")
    kernels = _loaded[target] = CpuKernels(getattr(torch.ops, namespace), target)
    return kernels


def _copy_loaded(target: Path) -> bool:
    """Put a copy of the same build this process already loaded (the same file name: the digest names
    it) at `target` (another home's cache: a copy takes milliseconds, a build many seconds); False where
    there is none to copy."""
    loaded = next((path for path in _loaded if path.name == target.name and path != target), None)
    if loaded is None or not _trusted(loaded):
        return False
    fd, tmp = tempfile.mkstemp(prefix=".kernels-", suffix=".so", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out, open(loaded, "rb") as source:
            shutil.copyfileobj(source, out)
        os.chmod(tmp, PRIVATE_FILE_MODE)
        os.replace(tmp, target)
        return True
    except OSError as exc:
        log.warning("copying %s to %s failed (%s); compiling instead", loaded, target, exc)
        return False
    finally:
        Path(tmp).unlink(missing_ok=True)


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


def _compile(tools: tuple[str, str], source: Path, target: Path) -> bool:
    """Compile in a temporary folder and rename the library into place, so a concurrent start never loads
    half a library and a failed build leaves nothing behind."""
    from torch.utils import cpp_extension  # its import takes a while: only builds need it

    cc, cxx = tools
    work = Path(tempfile.mkdtemp(prefix=".kernels-", dir=target.parent))
    objects, library = work / "kernels.o", work / "kernels.so"
    abi = f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"
    torch_libs = [f for path in cpp_extension.library_paths() for f in (f"-L{path}", f"-Wl,-rpath,{path}")]
    steps = [
        [cc, *FLAGS, f"-I{HEADER.parent}", "-c", str(source), "-o", str(objects)],
        [cxx, "-O2", "-std=c++20", "-fPIC", "-shared", abi, f"-I{HEADER.parent}"]
        + [f"-I{path}" for path in cpp_extension.include_paths()]
        + [
            str(OPS),
            str(objects),
            "-o",
            str(library),
            "-fopenmp",
            *torch_libs,
            "-lc10",
            "-ltorch_cpu",
            *LIBS,
        ],
    ]
    try:
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True, timeout=300)
            if done.returncode != 0:
                reason = done.stderr[-2000:]
                break
        else:
            os.chmod(library, PRIVATE_FILE_MODE)  # the linker made it 0777 less the umask
            os.replace(library, target)
            return True
    except (OSError, subprocess.TimeoutExpired) as exc:
        reason = str(exc)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.warning("compiling the CPU kernels with %s and %s failed:\n%s", cc, cxx, reason)
    return False
