"""`hotlora`'s parser and dispatch: one subcommand per module of this package."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import chat, fetch, serve, train

DESCRIPTION = """The `hotlora` command: `serve` runs the OpenAI-compatible server, `fetch` prepares the model
cache, `chat` talks to a running server (the client package's terminal chat), `train` runs the trainer."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hotlora", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True)
    serve.add_parser(sub)
    fetch.add_parser(sub)
    # `hotlora chat ARGS` and `hotlora train ARGS` are dispatched by `main` before parsing (their options
    # are the chat's and the trainer's own); listed here for `hotlora --help`.
    sub.add_parser(
        "chat", add_help=False, help="chat with a running server in the terminal (`hotlora chat --help`)"
    )
    sub.add_parser(
        "train", add_help=False, help="train a LoRA adapter into the store (`hotlora train --help`)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["chat"]:
        return chat.run(argv[1:])
    if argv[:1] == ["train"]:
        return train.run(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return serve.run(args)
    return fetch.run(args)
