"""`hotlora train`: the trainer's own command line (`hotlora-train`), which parses its own options."""

from __future__ import annotations

from collections.abc import Sequence


def run(argv: Sequence[str]) -> int:
    """The trainer is imported only now: the other subcommands never load it."""
    from hotlora_trainer.cli import main as train_main

    return train_main(list(argv))
