"""`hotlora serve`: the server's settings from flags and `HOTLORA_*`, checked, then served."""

from __future__ import annotations

import argparse

from hotlora_server.serve import check_servable, serve
from hotlora_server.settings import Settings

from .settings_flags import add_settings_flags, settings_from, start_logging


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "serve",
        help="serve the base model and its adapters over OpenAI's API",
        allow_abbrev=False,  # a prefix of a flag is a typo, not that flag
    )
    add_settings_flags(parser)  # every field of Settings


def serve_settings(args: argparse.Namespace) -> Settings:
    """The settings `hotlora serve ARGS` runs with, without starting anything (the Docker image's entry
    point is tested through this); `SystemExit` with the reason for settings that must not be served."""
    return check_servable(settings_from(args))


def run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    start_logging(settings)
    return serve(settings)
