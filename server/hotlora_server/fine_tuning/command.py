"""The command line and environment of a job's training process: `python -m hotlora_trainer ...`.

The server never imports the trainer; it starts it as `hotlora train` would be started, on the server's
base model, home and adapter store, with JSON lines on stdout (`--log-format json`), a lifeline on stdin
(`--stop-on-stdin-close`: the trainer stops if the server dies) and a bounded number of CPU threads.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .jobs import JobRecord

# the trainer's default learning rate (TrainConfig.learning_rate), which OpenAI's multiplier scales
BASE_LEARNING_RATE = 2e-4
# a job is never resumed (a restart fails it), so its run writes no checkpoints: one save past any end
NO_CHECKPOINTS = str(2**31 - 1)
# OpenAI's hyperparameters -> the trainer's options
HYPERPARAMETER_FLAGS = {"n_epochs": "--epochs", "batch_size": "--batch-size"}
# hotlora's options are TrainConfig's names; the flag is `--<name>` but for these
OPTION_FLAGS = {"max_length": "--max-length", "gradient_accumulation_steps": "--grad-accum"}
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def default_threads() -> int:
    """Half the cores (at least one): the other half stays with serving."""
    return max(1, (os.cpu_count() or 2) // 2)


@dataclass(frozen=True)
class Launch:
    """What every training process starts with, from the server's settings."""

    home: Path
    adapters_dir: Path
    base: str | None  # None: the embedded model, as the server serves it
    chat_template: str | None
    device: str
    threads: int = field(default_factory=default_threads)
    python: str = sys.executable

    def argv(self, job: JobRecord, data: Path, eval_data: Path | None) -> list[str]:
        """`python -m hotlora_trainer` with the job's data, hyperparameters and options."""
        args = [self.python, "-m", "hotlora_trainer", "--data", str(data), "--name", job.adapter_name]
        if eval_data is not None:
            args += ["--eval-data", str(eval_data)]
        if self.base is not None:
            args += ["--base", self.base]
        if self.chat_template is not None:
            args += ["--chat-template", self.chat_template]
        args += ["--home", str(self.home), "--adapters-dir", str(self.adapters_dir), "--device", self.device]
        args += ["--threads", str(self.threads), "--seed", str(job.seed), "--save-steps", NO_CHECKPOINTS]
        for name, value in job.hyperparameters.items():
            if value == "auto":
                continue
            if name == "learning_rate_multiplier":
                args += ["--learning-rate", repr(BASE_LEARNING_RATE * value)]
            else:
                args += [HYPERPARAMETER_FLAGS[name], str(value)]
        for name, value in job.options.items():
            args += _option(OPTION_FLAGS.get(name, f"--{name.replace('_', '-')}"), value)
        return [*args, "--log-format", "json", "--stop-on-stdin-close"]

    def env(self, environ: Mapping[str, str]) -> dict[str, str]:
        """The server's environment with the thread count set for every math library, and without the
        API key (the trainer does not call the server)."""
        env = {k: v for k, v in environ.items() if k != "HOTLORA_API_KEY"}
        env.update({name: str(self.threads) for name in THREAD_VARIABLES})
        env["TOKENIZERS_PARALLELISM"] = "false"
        return env


def _option(flag: str, value: Any) -> list[str]:
    if isinstance(value, bool):  # the trainer's switches take argparse's --no- form
        return [flag if value else f"--no-{flag.removeprefix('--')}"]
    if isinstance(value, list):
        return [flag, *map(str, value)]
    return [flag, str(value)]
