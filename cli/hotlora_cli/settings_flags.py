"""The server's `Settings` as command-line flags, and back: flags win over `HOTLORA_*`, which win over defaults."""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

from pydantic import ValidationError

from hotlora_server.logs import configure_logging
from hotlora_server.settings import Settings


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", help="HF model folder, .gguf file or hub id (default: the embedded SmolLM2-135M-Instruct)"
    )
    parser.add_argument(
        "--quantize", choices=["nf4", "fp4", "int8", "none"], help="weight quantization (default nf4)"
    )
    parser.add_argument(
        "--device", choices=["auto", "cpu", "cuda"], help="where the model runs (default auto)"
    )
    parser.add_argument(
        "--dtype",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="compute dtype (default auto: bfloat16 on CUDA, float32 on CPU)",
    )
    parser.add_argument("--home", help="data folder for converted models and adapters ($HOTLORA_HOME)")


def settings_from(args: argparse.Namespace) -> Settings:
    """The settings the parsed flags and the environment make; `SystemExit` saying which are invalid."""
    flags: dict[str, Any] = {k: v for k, v in vars(args).items() if k in Settings.model_fields}
    try:
        return Settings.build(flags, os.environ)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg'].removeprefix('Value error, ')}" for e in exc.errors()
        )
        raise SystemExit(f"hotlora: invalid settings: {problems}") from None


def start_logging(settings: Settings) -> None:
    configure_logging(settings.log_level, settings.log_format)
    # bitsandbytes suggests, at import, an optional CPU kernel that only the Hugging Face hub serves
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
