"""The trainer's errors: each message says what is wrong and what to change."""

from __future__ import annotations


class TrainError(Exception):
    """Training was refused or failed; `str(error)` is meant for the user as is."""


class ConfigError(TrainError):
    """The options cannot work together, or do not fit the base model (refused before any training step)."""


class DatasetError(TrainError):
    """The dataset file is malformed; the message names each bad line (1-based) and what is wrong with it."""

    def __init__(self, path: str, problems: list[tuple[int | None, str]], *, more: int = 0) -> None:
        self.path = path
        self.problems = problems
        lines = [
            f"{path}:{line}: {what}" if line is not None else f"{path}: {what}" for line, what in problems
        ]
        if more:
            lines.append(f"... and {more} more problem(s)")
        super().__init__("the dataset is not usable:\n  " + "\n  ".join(lines))


class BaseModelError(TrainError):
    """The base model cannot be found or loaded."""


class MemoryEstimateError(ConfigError):
    """The memory estimate does not fit in free memory."""


class ServerWaitError(TrainError):
    """The adapter was registered, but the server named with --server did not list it in time."""
