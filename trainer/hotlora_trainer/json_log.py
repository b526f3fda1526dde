"""`hotlora train --log-format json`: the run's progress as one JSON object per line on stdout.

For a program that drives the trainer — the server's fine-tuning jobs run it in a subprocess — so that it
reads fields instead of scraping text meant for people. Each object has a `type`:

- `message`: a progress line, the one text mode prints (`message`);
- `log`: what the Trainer logs at a logging step or an evaluation: `step`, `total_steps`, and TRL's names
  (`loss`, `eval_loss`, `learning_rate`, `mean_token_accuracy`, `num_tokens`, `epoch`, ...);
- `result`: the adapter is registered (`name`, `adapter_path`, `metrics`: `train_loss`, `eval_loss`, ...);
- `error`: why the run was refused or failed (`message`), as text mode prints it on stderr.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .run import TrainResult


def emit(kind: str, **fields: Any) -> None:
    """Write one object and flush, so the reader sees it as it happens."""
    sys.stdout.write(json.dumps({"type": kind, **fields}, default=str) + "\n")
    sys.stdout.flush()


def message(text: str) -> None:
    emit("message", message=text)


def result(done: TrainResult) -> None:
    emit(
        "result",
        name=done.name,
        adapter_path=str(done.adapter_path) if done.adapter_path else None,
        metrics=done.metrics,
    )


def log_callback() -> Any:
    """A `transformers.TrainerCallback` that emits every log of the main process as a `log` object."""
    from transformers import TrainerCallback

    class JsonLogCallback(TrainerCallback):
        def on_log(
            self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **_: Any
        ) -> None:
            if state.is_world_process_zero and logs:
                emit("log", step=state.global_step, total_steps=state.max_steps, **logs)

    return JsonLogCallback()
