"""The trainer's errors: each message says what is wrong and what to change."""

from __future__ import annotations

from hotlora_adapters.training_data import InvalidDatasetError


class TrainError(Exception):
    """Training was refused or failed; `str(error)` is meant for the user as is."""


class ConfigError(TrainError):
    """The options cannot work together, or do not fit the base model (refused before any training step)."""


class DatasetError(InvalidDatasetError, TrainError):
    """The dataset file is malformed; the message names each bad line (1-based) and what is wrong with it
    (the rules, shared with the server's upload check, are `hotlora_adapters.training_data`'s)."""


class BaseModelError(TrainError):
    """The base model cannot be found or loaded."""


class MemoryEstimateError(ConfigError):
    """The memory estimate does not fit in free memory."""


class ServerWaitError(TrainError):
    """The adapter was registered, but the server named with --server did not list it in time."""
