"""Where adapters may be imported from: a path must resolve inside an allowed root, symlinks included;
and the store's own entries must resolve inside the store.

Kept apart from the store so the rule is one small piece to read and test: every check resolves links
first and compares resolved paths, so `..` tricks and symlinks pointing out of a root are refused alike.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
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
    for path in symlinks_in(folder):
        try:
            target = path.resolve(strict=False)
        except (OSError, RuntimeError) as e:
            raise AdapterPathError(f"cannot resolve the symlink {path}: {e}") from e
        if not inside(target, roots):
            shown = given / path.relative_to(folder)
            raise AdapterPathError(f"{shown} is a symlink to {target}, {outside(roots)}")


def store_escape(entry: Path, root: Path) -> str | None:
    """Why the store's own entry `entry` is not confined to the store at `root`, or None when it is.

    The import rule holds for what is already in the store too: the entry itself, and every symlink
    inside it, must resolve inside the store. Else a link dropped into the store would make the server
    read, and serve, any folder it can reach.
    """
    store = root.resolve()
    where = f"outside the adapter store ({store}); adapters must be copied into it, not linked"
    escape = _escape(entry, Path(entry.name), store, where, strict=True)
    if escape is not None:
        return escape
    folder = entry.resolve()
    for path in symlinks_in(folder):
        escape = _escape(path, Path(entry.name) / path.relative_to(folder), store, where, strict=False)
        if escape is not None:
            return escape
    return None


def _escape(path: Path, shown: Path, store: Path, where: str, *, strict: bool) -> str | None:
    try:
        target = path.resolve(strict=strict)
    except (OSError, RuntimeError) as e:  # missing, or a symlink loop
        return f"cannot resolve {shown}: {e}"
    return None if target.is_relative_to(store) else f"{shown} is a symlink to {target}, {where}"


def symlinks_in(folder: Path) -> Iterator[Path]:
    """Every symlink under `folder`, at any depth (symlinked folders are listed, not entered)."""
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            if path.is_symlink():
                yield path
