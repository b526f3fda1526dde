"""The `hotlora` command: `serve` runs the OpenAI-compatible server, `fetch` prepares the model cache."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from .settings import Settings

log = logging.getLogger("hotlora")


def _model_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="HF model folder, .gguf file or hub id (default: the embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--quantize", choices=["nf4", "fp4", "int8", "none"], help="weight quantization (default nf4)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], help="where the model runs (default auto)")
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"],
                        help="compute dtype (default auto: bfloat16 on CUDA, float32 on CPU)")  # fmt: skip
    parser.add_argument("--home", help="data folder for converted models and adapters ($HOTLORA_HOME)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hotlora", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the base model and its adapters over OpenAI's API")
    _model_flags(serve)
    serve.add_argument("--served-model-name", help="id of the base model in the API (default: derived from --model)")
    serve.add_argument("--host", help="interface to bind (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, help="port (default 8000)")
    serve.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on /v1/* ($HOTLORA_API_KEY)")
    serve.add_argument("--adapters-dir", help="adapter store (default $HOTLORA_HOME/adapters)")
    serve.add_argument("--max-n", type=int, help="largest `n` a request may ask for (default 8)")
    serve.add_argument("--max-model-len", type=int, help="cap the context window (default: the model's)")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    fetch = sub.add_parser("fetch", help="resolve and cache the model (converts the embedded GGUF once)")
    _model_flags(fetch)
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    flags: dict[str, Any] = {k: v for k, v in vars(args).items() if k != "command"}
    try:
        return Settings.build(flags, os.environ)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise SystemExit(f"hotlora: invalid settings: {problems}") from None


def serve(settings: Settings) -> int:
    import uvicorn

    from .api import create_app
    from .engine.engine import Engine

    server: uvicorn.Server | None = None

    def fatal(_: BaseException) -> None:
        if server is not None:
            server.should_exit = True

    engine = Engine(settings, on_fatal=fatal)
    app = create_app(engine, api_key=settings.api_key)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                            timeout_graceful_shutdown=10)  # fmt: skip
    server = uvicorn.Server(config)
    engine.start()
    server.run()
    engine.stop()
    if engine.error is not None:
        print(f"hotlora: {engine.error}", file=sys.stderr)
        return 1
    return 0


def fetch(settings: Settings) -> int:
    from .engine.loader import ModelLoadError, resolve_model

    try:
        name, source = resolve_model(settings)
    except ModelLoadError as exc:
        print(f"hotlora: {exc}", file=sys.stderr)
        return 1
    print(f"{name}: {source}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = _settings(args)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "serve":
        return serve(settings)
    return fetch(settings)


if __name__ == "__main__":
    sys.exit(main())
