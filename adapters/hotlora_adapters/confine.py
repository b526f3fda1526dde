"""Where adapters may be imported from: a path must resolve inside an allowed root, symlinks included.

Kept apart from the store so the rule is one small piece to read and test: every check resolves links
first and compares resolved paths, so `..` tricks and symlinks pointing out of a root are refused alike.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from .errors import AdapterPathError, InvalidAdapterError


def same_entry(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def inside(path: Path, roots: Sequence[Path]) -> bool:
    return any(path.is_relative_to(root) for root in roots)


def outside(roots: Sequence[Path]) -> str:
    listed = ", ".join(str(root) for root in roots)
    return f"which is outside the folders adapters may be imported from ({listed})"


def resolve_inside(given: Path, roots: Sequence[Path]) -> Path:
    """`given` fully resolved, if that lies inside `roots`; else `AdapterPathError` (missing or not)."""
    try:
        lexical = given.resolve(strict=False)
    except (OSError, RuntimeError) as e:  # a symlink loop
        raise AdapterPathError(f"cannot resolve {given}: {e}") from e
    if not inside(lexical, roots):
        shown = f"{given}," if lexical == given else f"{given} resolves to {lexical},"
        raise AdapterPathError(f"{shown} {outside(roots)}")
    try:
        resolved = given.resolve(strict=True)
    except FileNotFoundError:
        raise InvalidAdapterError("no such adapter folder", path=given) from None
    except (OSError, RuntimeError) as e:
        raise AdapterPathError(f"cannot resolve {given}: {e}") from e
    if not inside(resolved, roots):  # changed between the two looks
        raise AdapterPathError(f"{given} resolves to {resolved}, {outside(roots)}")
    if not resolved.is_dir():
        raise InvalidAdapterError("not a folder", path=given)
    return resolved


def refuse_escaping_symlinks(given: Path, folder: Path, roots: Sequence[Path]) -> None:
    """Refuse a folder holding any symlink (at any depth) whose target lies outside `roots`."""
    for dirpath, dirnames, filenames in os.walk(folder):  # does not descend into symlinked folders
        for entry in dirnames + filenames:
            path = Path(dirpath) / entry
            if not path.is_symlink():
                continue
            try:
                target = path.resolve(strict=False)
            except (OSError, RuntimeError) as e:
                raise AdapterPathError(f"cannot resolve the symlink {path}: {e}") from e
            if not inside(target, roots):
                shown = given / path.relative_to(folder)
                raise AdapterPathError(f"{shown} is a symlink to {target}, {outside(roots)}")
