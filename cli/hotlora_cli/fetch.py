"""`hotlora fetch`: resolve the model and fill the cache (the embedded GGUF is converted once), serving nothing."""

from __future__ import annotations

import argparse
import sys

from .settings_flags import add_settings_flags, settings_from, start_logging

MODEL_FIELDS = ("model", "quantize", "device", "dtype", "home")  # the settings that say which model, how


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    fetch = sub.add_parser("fetch", help="resolve and cache the model (converts the embedded GGUF once)")
    add_settings_flags(fetch, MODEL_FIELDS)


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
