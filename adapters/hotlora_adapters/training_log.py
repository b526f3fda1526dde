"""The trainer's log beside an adapter (`training_log.json`), read back as the points of its loss curve.

The trainer writes TRL's `log_history` there; the server shows it (`GET /v1/adapters/{name}/training_log`)
so a client can draw the curve itself rather than only look at the PNG. Only finite numbers are kept: a
diverged run logs NaN, which JSON answers cannot carry.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from .errors import InvalidAdapterError

TRAINING_LOG_FILENAME = "training_log.json"
MAX_TRAINING_LOG_BYTES = 16 << 20  # a log of far more steps than a LoRA run logs; more is not read


def read_training_log(folder: Path) -> list[dict[str, float]] | None:
    """The `log_history` entries of `folder`'s training log, each with its finite numbers only (`step`,
    `epoch`, `loss`, `eval_loss`, `learning_rate`, …); None when the adapter has no log (imported, blend).

    A log that is a symlink, too large or not the trainer's JSON is refused with `InvalidAdapterError`.
    """
    path = folder / TRAINING_LOG_FILENAME
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return None
    except OSError as exc:  # ELOOP: a symlink, which might reach outside the store
        raise InvalidAdapterError(
            f"{TRAINING_LOG_FILENAME} of '{folder.name}' cannot be read: {exc}"
        ) from None
    with os.fdopen(fd, "rb") as file:
        raw = file.read(MAX_TRAINING_LOG_BYTES + 1)
    if len(raw) > MAX_TRAINING_LOG_BYTES:
        raise InvalidAdapterError(f"{TRAINING_LOG_FILENAME} of '{folder.name}' is larger than 16 MiB")
    try:
        history = json.loads(raw).get("log_history")
    except (ValueError, AttributeError):
        history = None
    if not isinstance(history, list):
        raise InvalidAdapterError(f"{TRAINING_LOG_FILENAME} of '{folder.name}' has no `log_history` list")
    return [_numbers(entry) for entry in history if isinstance(entry, dict)]


def _numbers(entry: dict[str, object]) -> dict[str, float]:
    return {
        key: value
        for key, value in entry.items()
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    }
