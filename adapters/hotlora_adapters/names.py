"""Adapter names: the only user-chosen string that becomes a path on disk.

A name is the folder name inside the store and the `model` of a chat request, so the rule keeps it a
single, portable, unambiguous path segment (no separators, no traversal, no case games) and keeps the
blend syntax (`a*0.7+b`) and the base marker (`__base__`) free of collisions.
"""

from __future__ import annotations

import re

from .errors import InvalidAdapterNameError

ADAPTER_NAME_PATTERN = r"[a-z0-9][a-z0-9._-]{0,63}"
MAX_ADAPTER_NAME_LENGTH = 64

_NAME_RE = re.compile(ADAPTER_NAME_PATTERN)
_RULE = (
    "an adapter name is 1 to 64 characters of lowercase letters a-z, digits, '.', '_' and '-', "
    "starts with a letter or digit, and does not contain '..'"
)


def is_valid_adapter_name(name: object) -> bool:
    """True when `name` passes `validate_adapter_name` (for filtering folder listings without exceptions)."""
    return isinstance(name, str) and _problem(name) is None


def validate_adapter_name(name: str) -> str:
    """Return `name` unchanged if it is a valid adapter name, else raise `InvalidAdapterNameError`.

    The message names the specific problem and the rule, so a user can fix the name in one try.
    """
    if not isinstance(name, str):
        raise InvalidAdapterNameError(f"adapter name must be a string, got {type(name).__name__}; {_RULE}")
    problem = _problem(name)
    if problem is not None:
        raise InvalidAdapterNameError(f"invalid adapter name {_shown(name)}: {problem}; {_RULE}")
    return name


def _shown(name: str) -> str:
    """The name as quoted in an error: a hostile 10,000-character name is not echoed in full."""
    return repr(name) if len(name) <= MAX_ADAPTER_NAME_LENGTH else f"{name[:MAX_ADAPTER_NAME_LENGTH]!r}..."


def _problem(name: str) -> str | None:
    if not name:
        return "it is empty"
    if len(name) > MAX_ADAPTER_NAME_LENGTH:
        return f"it is {len(name)} characters long"
    if "\x00" in name:
        return "it contains a NUL character"
    if "/" in name or "\\" in name:
        return "it contains a path separator"
    if ".." in name:
        return "it contains '..'"
    if name != name.lower():
        return "it contains uppercase letters"
    if not name[0].isascii() or not name[0].isalnum():
        return f"it starts with {name[0]!r}"
    if _NAME_RE.fullmatch(name) is None:
        bad = next(c for c in name if _NAME_RE.fullmatch("a" + c) is None)
        return f"it contains the character {bad!r}"
    return None
