"""Errors of the adapter registry.

One base class, so callers (the HTTP layer, the CLI) can map every registry failure to a user-facing
message in one place; each subclass also derives from the builtin it refines, so generic handlers work.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

MAX_LISTED_MISMATCHES = 20


class AdapterError(Exception):
    """Base class of every error raised by `hotlora_adapters`."""


class InvalidAdapterNameError(AdapterError, ValueError):
    """A name that may not be used for an adapter (it would be unsafe or ambiguous as a folder name)."""


class AdapterNotFoundError(AdapterError, LookupError):
    """No adapter of that name is in the store."""


class AdapterExistsError(AdapterError):
    """An adapter (or some other entry) already has that name in the store and overwrite was not asked for."""


class AdapterPathError(AdapterError, ValueError):
    """A path given for import lies outside the folders the store may read from (after resolving symlinks)."""


class InvalidAdapterError(AdapterError, ValueError):
    """A folder that is not a usable PEFT LoRA adapter; the message says why and where."""

    def __init__(self, reason: str, *, path: Path | str | None = None) -> None:
        self.reason = reason
        self.path = Path(path) if path is not None else None
        super().__init__(f"{self.path}: {reason}" if self.path is not None else reason)


class IncompatibleAdapterError(AdapterError, ValueError):
    """An adapter whose modules or shapes do not fit the base model.

    Carries every mismatch, so one attempt tells the user everything that is wrong (like mlx-lm's
    `load_adapters`), instead of one error per retry.
    """

    def __init__(self, mismatches: Sequence[str], *, subject: str = "adapter") -> None:
        self.mismatches: list[str] = list(mismatches)
        self.subject = subject
        super().__init__(_format_mismatches(subject, self.mismatches))


def _format_mismatches(subject: str, mismatches: list[str]) -> str:
    count = len(mismatches)
    noun = "mismatch" if count == 1 else "mismatches"
    lines = [f"{subject} does not fit the base model ({count} {noun}):"]
    lines += [f"  - {m}" for m in mismatches[:MAX_LISTED_MISMATCHES]]
    if count > MAX_LISTED_MISMATCHES:
        lines.append(f"  ... and {count - MAX_LISTED_MISMATCHES} more")
    return "\n".join(lines)
