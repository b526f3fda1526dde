"""`hotlora fetch`: resolve the model and fill the cache (the embedded GGUF is converted once), serving nothing."""

from __future__ import annotations

import argparse
import sys

from .settings_flags import add_model_flags, settings_from, start_logging


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    fetch = sub.add_parser("fetch", help="resolve and cache the model (converts the embedded GGUF once)")
    add_model_flags(fetch)


def run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    start_logging(settings)
    from hotlora_server.engine.loader import ModelLoadError, resolve_model

    try:
        name, source = resolve_model(settings)
    except ModelLoadError as exc:
        print(f"hotlora: {exc}", file=sys.stderr)
        return 1
    print(f"{name}: {source}")
    return 0
