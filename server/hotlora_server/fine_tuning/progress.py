"""The trainer's JSON lines (`hotlora train --log-format json`) read into job events and an outcome.

The trainer runs in its own process and writes one object per line (`hotlora_trainer.json_log`); this
is the server's side of that contract. Its metrics become OpenAI's metrics events (`train_loss`,
`valid_loss`, `step`, `total_steps`, ...); numbers that are not finite are dropped, as JSON has none.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from .jobs import Event

# TRL's name in a log -> OpenAI's name in a metrics event (training logs, then evaluation logs)
TRAIN_METRICS = {"loss": "train_loss", "mean_token_accuracy": "train_mean_token_accuracy"}
EVAL_METRICS = {"eval_loss": "valid_loss", "eval_mean_token_accuracy": "valid_mean_token_accuracy"}
EXTRA_METRICS = ("learning_rate", "epoch")


@dataclass
class Progress:
    """What one training process has reported so far."""

    step: int = 0
    total_steps: int | None = None
    trained_tokens: int | None = None
    train_loss: float | None = None
    valid_loss: float | None = None
    registered: str | None = None  # the adapter's name, once the trainer says it registered it
    error: str | None = None  # why the trainer says it failed
    metrics: dict[str, Any] = field(default_factory=dict)  # the trainer's final metrics

    def read(self, line: bytes) -> Event | None:
        """Take in one line of the trainer's stdout; the event it makes, if any. Lines that are not the
        trainer's objects (a library printing to stdout) are skipped."""
        try:
            item = json.loads(line)
        except ValueError:
            return None
        if not isinstance(item, dict):
            return None
        kind = item.get("type")
        if kind == "message" and isinstance(item.get("message"), str):
            return Event(item["message"])
        if kind == "log":
            return self._log(item)
        if kind == "result" and isinstance(item.get("name"), str):
            self.registered = item["name"]
            metrics = item.get("metrics")
            self.metrics = metrics if isinstance(metrics, dict) else {}
            self.train_loss = _number(self.metrics.get("train_loss"), self.train_loss)
            self.valid_loss = _number(self.metrics.get("eval_loss"), self.valid_loss)
        elif kind == "error" and isinstance(item.get("message"), str):
            self.error = item["message"]
        return None

    def _log(self, item: dict[str, Any]) -> Event | None:
        step = item.get("step")
        if isinstance(step, int):
            self.step = step
        total = item.get("total_steps")
        if isinstance(total, int) and total > 0:
            self.total_steps = total
        tokens = _number(item.get("num_tokens"))
        if tokens is not None:
            self.trained_tokens = int(tokens)
        for names, what in ((TRAIN_METRICS, "training"), (EVAL_METRICS, "validation")):
            first = next(iter(names))
            if first not in item:
                continue
            data: dict[str, Any] = {"step": self.step, "total_steps": self.total_steps}
            data.update({ours: _number(item.get(theirs)) for theirs, ours in names.items() if theirs in item})
            data.update({name: _number(item.get(name)) for name in EXTRA_METRICS if name in item})
            loss = data[names[first]]
            if what == "training":
                self.train_loss = _number(loss, self.train_loss)
            else:
                self.valid_loss = _number(loss, self.valid_loss)
            shown = f"{loss:.4f}" if loss is not None else "not a number"
            of = f"/{self.total_steps}" if self.total_steps else ""
            return Event(f"Step {self.step}{of}: {what} loss={shown}", type="metrics", data=data)
        return None


def _number(value: Any, default: float | None = None) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return default
    return float(value)
