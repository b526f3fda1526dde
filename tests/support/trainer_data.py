"""Helpers for the trainer tests: training data files, and the trainer's command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def chat_row(user: str, assistant: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}


def trainer_argv(tmp_path: Path, base: Path, data: Path, *options: str) -> list[str]:
    """`python -m hotlora_trainer` training adapter `bot` on `data` and `base` on the CPU, its home and store
    under `tmp_path`, with `options` after."""
    return [
        sys.executable,
        "-m",
        "hotlora_trainer",
        "--data",
        str(data),
        "--name",
        "bot",
        "--base",
        str(base),
        "--home",
        str(tmp_path / "home"),
        "--adapters-dir",
        str(tmp_path / "store"),
        "--device",
        "cpu",
        *options,
    ]


# Four Harvard sentences and their Pig Latin (lowercase, as the task writes it), and an unseen sentence:
# the tiny trainings of the integration tests teach these and ask that.
SENTENCES = [
    "The birch canoe slid on the smooth planks.",
    "Glue the sheet to the dark blue background.",
    "These days a chicken leg is a rare dish.",
    "Rice is often served in round bowls.",
]
PIG = [
    "ethay irchbay anoecay idslay onway ethay oothsmay anksplay.",
    "ueglay ethay eetshay otay ethay arkday ueblay ackgroundbay.",
    "esethay aysday away ickenchay eglay isway away areray ishday.",
    "iceray isway oftenway ervedsay inway oundray owlsbay.",
]
QUESTION = "A large size in stockings is hard to sell."
