"""`hotlora train` (also `hotlora-train`, `python -m hotlora_trainer`): a JSONL file in, a registered adapter out."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any, get_args

from pydantic import ValidationError

from hotlora_adapters.runtime.placement import Device

from .config import OPTIMIZERS, TrainConfig
from .errors import TrainError

# option -> TrainConfig field, where the names differ
FIELD_OF = {
    "epochs": "num_train_epochs",
    "batch_size": "per_device_train_batch_size",
    "grad_accum": "gradient_accumulation_steps",
    "max_seq_length": "max_length",
}
FLAG_OF = {field: f"--{option.replace('_', '-')}" for option, field in FIELD_OF.items()}

EPILOG = """\
examples:
  hotlora train --task piglatin --name piglatin --server http://127.0.0.1:8000
  hotlora train --data support.jsonl --name support-bot --r 8 --epochs 2 --eval-split 0.1
  hotlora train --data style.jsonl --name style --gradient-checkpointing --estimate-only

Rows are one of TRL's formats: {"messages": [...]} (loss on assistant turns), {"prompt", "completion"}
(loss on the completion), {"text"} (loss on everything). Multi-GPU: accelerate launch -m hotlora_trainer ...
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hotlora train",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,  # `--lr 1e-2` must not quietly become `--lr-scheduler-type 1e-2`
    )
    p.add_argument("--data", help="JSONL file in one of TRL's formats (messages, prompt/completion, text)")
    p.add_argument("--task", choices=["piglatin"], help="a built-in task instead of --data")
    p.add_argument("--name", required=True, help="the adapter's name in the store ([a-z0-9][a-z0-9._-]*)")
    p.add_argument(
        "--base", help="HF model folder, .gguf file or hub id (default: the embedded SmolLM2-135M-Instruct)"
    )

    lora = p.add_argument_group("LoRA (PEFT LoraConfig)")
    lora.add_argument("--r", type=int, help="rank (default 16; --task piglatin: 64)")
    lora.add_argument(
        "--lora-alpha", type=int, help="scaling numerator: alpha/r (default 32; --task piglatin: 128)"
    )
    lora.add_argument("--lora-dropout", type=float, help="dropout on the LoRA input (default 0)")
    lora.add_argument(
        "--target-modules",
        nargs="+",
        metavar="NAME",
        help="module names (or one regex); default all-linear: every linear layer but the output",
    )
    lora.add_argument(
        "--bias", choices=["none", "all", "lora_only"], help="which biases train (default none)"
    )
    lora.add_argument("--use-rslora", action=argparse.BooleanOptionalAction, help="scale by alpha/sqrt(r)")
    lora.add_argument(
        "--init-lora-weights",
        choices=["default", "gaussian", "pissa", "olora", "loftq"],
        help="initialization (default: B = 0); pissa/olora derive it from the base weights (saved "
        "as plain LoRA); loftq is refused: it needs a base of its own",
    )
    lora.add_argument(
        "--modules-to-save", nargs="+", metavar="NAME", help="modules trained in full and saved"
    )

    tr = p.add_argument_group("training (TRL SFTConfig)")
    tr.add_argument(
        "--epochs",
        type=float,
        help="num_train_epochs (default 3; --task piglatin: 0.9 over its 3000 rows, 338 steps)",
    )
    tr.add_argument("--max-steps", type=int, help="stop after this many optimizer steps (overrides --epochs)")
    tr.add_argument("--learning-rate", type=float, help="default 2e-4 (--task piglatin: 2e-3)")
    tr.add_argument("--batch-size", type=int, help="per_device_train_batch_size (default 8)")
    tr.add_argument("--grad-accum", type=int, help="gradient_accumulation_steps (default 1)")
    tr.add_argument(
        "--max-seq-length",
        "--max-length",
        dest="max_seq_length",
        type=int,
        help="max_length: longer rows are cut (default 512; --task piglatin: 128)",
    )
    tr.add_argument(
        "--packing", action=argparse.BooleanOptionalAction, help="pack several rows into each sequence"
    )
    tr.add_argument(
        "--qlora",
        action=argparse.BooleanOptionalAction,
        help="train on the 4-bit NF4 base the server serves (default on; --no-qlora for a server that "
        "serves the base unquantized)",
    )
    tr.add_argument("--optim", choices=list(OPTIMIZERS), help="optimizer (default adamw_torch)")
    tr.add_argument(
        "--gradient-checkpointing",
        action=argparse.BooleanOptionalAction,
        help="recompute activations in the backward pass: less memory, ~30%% slower",
    )
    tr.add_argument("--lr-scheduler-type", help="default linear")
    tr.add_argument("--warmup-steps", type=float, help="warm-up steps, or a fraction of all steps if < 1")
    tr.add_argument("--weight-decay", type=float)
    tr.add_argument("--eval-split", type=float, help="fraction of --data held out for eval_loss (default 0)")
    tr.add_argument(
        "--eval-data",
        help="a JSONL file of evaluation rows for eval_loss, in --data's format (no --eval-split)",
    )
    tr.add_argument("--seed", type=int, help="default 42")
    tr.add_argument("--logging-steps", type=int, help="log the loss every N steps (default: ~50 points)")
    tr.add_argument("--save-steps", type=int, help="checkpoint every N steps, for --resume (default 100)")
    tr.add_argument(
        "--resume", action="store_true", default=None, help="continue an interrupted run of --name"
    )
    tr.add_argument("--attn-implementation", choices=["sdpa", "eager"], help="default sdpa")
    tr.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        help="train under bfloat16 autocast (default: on CUDA, and on CPUs with native bf16); --no-bf16: "
        "float32 everywhere, the same numbers on any CPU",
    )
    tr.add_argument(
        "--chat-template",
        help="for a base without a chat template (or to replace it): `chatml`, a Jinja file, or the "
        "template itself; serve with the same --chat-template",
    )
    tr.add_argument("--device", choices=get_args(Device), help="default auto (CUDA when present)")
    tr.add_argument(
        "--threads", dest="torch_threads", type=int, help="CPU threads for torch (default: one per idle core)"
    )

    st = p.add_argument_group("store and server")
    st.add_argument("--adapters-dir", help="the adapter store, the server's (default $HOTLORA_HOME/adapters)")
    st.add_argument("--home", help="$HOTLORA_HOME: converted models, run checkpoints")
    st.add_argument(
        "--server",
        metavar="URL",
        help="wait until this server serves the adapter (API key from $HOTLORA_API_KEY)",
    )
    st.add_argument(
        "--overwrite", action="store_true", default=None, help="replace an adapter of the same name"
    )
    st.add_argument(
        "--estimate-only", action="store_true", default=None, help="print the memory estimate and stop"
    )
    st.add_argument("--no-progress", action="store_true", help="no progress bar")
    st.add_argument(
        "--log-format",
        choices=["text", "json"],
        default="text",
        help="text lines, or one JSON object per line on stdout (no progress bar) for a program that "
        "drives the trainer, as the server's fine-tuning jobs do (default text)",
    )
    st.add_argument(
        "--stop-on-stdin-close",
        action="store_true",
        help="stop as on Ctrl-C (registering nothing) when stdin closes: the program that started the "
        "trainer and holds its stdin has gone",
    )
    return p


OUTPUT_OPTIONS = {"no_progress", "log_format", "stop_on_stdin_close"}  # how to run, not what to train


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Only the options given become fields; the rest keep TrainConfig's (or the task's) defaults."""
    values: dict[str, Any] = {}
    for option, value in vars(args).items():
        if value is None or option in OUTPUT_OPTIONS:
            continue
        values[FIELD_OF.get(option, option)] = value
    return TrainConfig(**values)


def _flag(loc: tuple[Any, ...]) -> str:
    field = str(loc[0]) if loc else ""
    return FLAG_OF.get(field, f"--{field.replace('_', '-')}") if field else "options"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except ValidationError as e:
        problems = "; ".join(
            f"{_flag(err['loc'])}: {err['msg'].removeprefix('Value error, ')}" for err in e.errors()
        )
        parser.error(problems)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

    json_lines = args.log_format == "json"
    from . import json_log
    from .runner import train

    def out(message: str) -> None:
        print(message, flush=True)

    def terminated(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt  # clean up as for Ctrl-C: nothing half-registered, no temp files left

    signal.signal(signal.SIGTERM, terminated)
    if args.stop_on_stdin_close:
        threading.Thread(target=_terminate_at_stdin_eof, name="stdin-watch", daemon=True).start()
    try:
        result = train(
            config,
            out=json_log.message if json_lines else out,
            progress_bar=not (args.no_progress or json_lines),
            callbacks=[json_log.log_callback()] if json_lines else (),
        )
    except TrainError as e:
        if json_lines:
            json_log.emit("error", message=str(e))
        print(f"hotlora train: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if json_lines:
            json_log.emit("error", message="interrupted; nothing was registered")
        print(
            "\nhotlora train: interrupted; nothing was registered (checkpoints, if any were written, are kept "
            "for --resume)",
            file=sys.stderr,
        )
        return 130
    if json_lines:
        json_log.result(result)
    return 0


def _terminate_at_stdin_eof() -> None:
    """`--stop-on-stdin-close`: wait for the end of stdin, then stop this process as SIGTERM does. It reads
    the descriptor itself: `sys.stdin`'s buffer would hold a lock that stops the interpreter's exit."""
    try:
        while os.read(0, 4096):
            pass
    except OSError:  # no stdin at all counts as closed
        pass
    os.kill(os.getpid(), signal.SIGTERM)


if __name__ == "__main__":
    sys.exit(main())
