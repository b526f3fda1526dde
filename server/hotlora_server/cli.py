"""The `hotlora` command: `serve` runs the OpenAI-compatible server, `fetch` prepares the model cache,
`chat` talks to a running server (the client package's terminal chat), `train` runs the trainer."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from .logs import configure_logging
from .settings import Settings, is_loopback

log = logging.getLogger("hotlora")


def _model_flags(parser: argparse.ArgumentParser) -> None:
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hotlora", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the base model and its adapters over OpenAI's API")
    _model_flags(serve)
    serve.add_argument(
        "--served-model-name", help="id of the base model in the API (default: derived from --model)"
    )
    serve.add_argument(
        "--host",
        help="interface to bind (default 127.0.0.1: this machine only; any other "
        "needs --api-key or --insecure-no-api-key)",
    )
    serve.add_argument("--port", type=int, help="port (default 8000)")
    serve.add_argument(
        "--api-key",
        help="require 'Authorization: Bearer KEY' on every route but /health "
        "($HOTLORA_API_KEY, which `ps` does not show; an empty key is refused)",
    )
    serve.add_argument(
        "--allowed-hosts",
        action="append",
        help="Host names to answer besides localhost and IP addresses, comma-separated or "
        "repeated; `.example.com` is it and its subdomains, `*` any (without an API key "
        "other names get 403: DNS rebinding)",
    )
    serve.add_argument(
        "--allowed-origins",
        action="append",
        help="web origins whose pages may call the API from a browser (CORS, vLLM's flag), "
        "comma-separated, repeated or a JSON list, e.g. https://app.example.com; `*` any "
        "(default: none, CORS off). Requests still need the API key when one is set",
    )
    serve.add_argument(
        "--allowed-methods",
        action="append",
        help="with --allowed-origins: the HTTP methods those pages may use (default `*`)",
    )
    serve.add_argument(
        "--allowed-headers",
        action="append",
        help="with --allowed-origins: the request headers those pages may send (default `*`)",
    )
    serve.add_argument(
        "--insecure-no-api-key",
        action="store_true",
        default=None,
        help="allow a --host beyond loopback without an API key: anyone who can reach the "
        "port can use the server and change or delete its adapters",
    )
    serve.add_argument(
        "--chat-template",
        help="the chat template for models without one (or to replace it): `chatml` (built in), "
        "a Jinja file, or the template itself; train with the same one",
    )
    serve.add_argument(
        "--tool-call-parser",
        help="how chat replies write tool calls, as vLLM's flag: `hermes` (default: "
        '<tool_call>{"name": ..., "arguments": {...}}</tool_call>, what the fallback prompt for '
        "templates without tools asks for)",
    )
    serve.add_argument("--adapters-dir", help="adapter store (default $HOTLORA_HOME/adapters)")
    serve.add_argument(
        "--allow-adapter-dir",
        action="append",
        help="a folder adapters may be loaded from by path (repeatable; the store is always allowed)",
    )
    serve.add_argument(
        "--max-loaded-adapters",
        type=int,
        help="adapters and blends kept in memory at once, least recently used evicted (default 8)",
    )
    serve.add_argument(
        "--max-lora-rank",
        type=int,
        help="largest LoRA rank an adapter may have, as vLLM's flag: larger ones are refused "
        "before loading (default 64, at most 512)",
    )
    serve.add_argument(
        "--max-blend-rank",
        type=int,
        help="largest rank a blend may have: 'cat' adds its adapters' ranks, 'svd' keeps the "
        "largest; larger blends are refused with 400 (default 256)",
    )
    serve.add_argument(
        "--merge-policy",
        choices=["auto", "never", "always"],
        help="merge an adapter into dense weights for speed: always, auto (once it had the "
        "whole batch to itself for 64 steps) or never (default: outputs then never depend on "
        "merge state)",
    )
    serve.add_argument("--max-n", type=int, help="largest `n` a request may ask for (default 8)")
    serve.add_argument(
        "--max-num-seqs",
        type=int,
        help="rows (requests x n) decoded together in the running batch; more wait (default 32)",
    )
    serve.add_argument(
        "--max-num-batched-tokens",
        type=int,
        help="prompt tokens prefilled per batch step (cached prefix tokens are free): longer "
        "prompts are prefilled in chunks between decode steps (default 512)",
    )
    serve.add_argument(
        "--kv-cache-memory-bytes",
        help="bytes the running batch's keys and values may take, as an integer or with a unit "
        "(8GiB, 500MB); a request waits until its worst case fits (default 4GiB)",
    )
    serve.add_argument(
        "--cpu-prefill",
        choices=["bf16", "4bit"],
        help="4-bit base on a CPU with native bf16: prefill through bf16 GEMMs on dequantized "
        "weights (bf16, default: several times faster; keeps a second copy of the 4-bit "
        "weights, half a byte per weight) or bitsandbytes' 4-bit kernel (4bit)",
    )
    serve.add_argument(
        "--cpu-prefill-cache-gb",
        type=float,
        help="with --cpu-prefill bf16: GiB of dequantized bf16 weights kept so that a prefill "
        "neither dequantizes nor reorders them (2 bytes per weight, in place of the 4-bit "
        "copy; 0: dequantize at every prefill; default 1)",
    )
    serve.add_argument(
        "--cpu-kernels",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="on a CPU: hotlora's fixed-order kernels (4-bit layers where bitsandbytes has no "
        "fused kernel, logits, LoRA deltas), compiled once with the system C compiler; "
        "batch invariance needs them (default on; without a compiler, or off: torch and "
        "bitsandbytes alone)",
    )
    serve.add_argument(
        "--cpu-4bit",
        choices=["auto", "bitsandbytes", "hotlora"],
        help="4-bit layers on a CPU: bitsandbytes' fused kernel (fast only with AVX512-BF16; "
        "elsewhere it dequantizes every weight at every forward) or hotlora's fixed-order "
        "4-bit kernel (default auto: bitsandbytes where its kernel is fused, else hotlora)",
    )
    serve.add_argument(
        "--batch-invariant",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a request's output does not depend on what shares its batch: on by default where it "
        "holds (a float32 CPU with the kernels); --batch-invariant refuses to start elsewhere, "
        "--no-batch-invariant takes the device's faster attention",
    )
    serve.add_argument(
        "--enable-prefix-caching",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="reuse the KV cache of prompt prefixes already computed (the system turn, shared "
        "context) across requests of the same adapter (default on)",
    )
    serve.add_argument(
        "--max-queue",
        type=int,
        help="requests that may wait for a place in the running batch; beyond it the server "
        "answers 429 with Retry-After at once (default 64)",
    )
    serve.add_argument("--max-model-len", type=int, help="cap the context window (default: the model's)")
    serve.add_argument(
        "--generation-config",
        help="where the sampling defaults of requests that leave them out come from, as vLLM's "
        "flag: `auto` (the model's generation_config.json; the embedded model: its card's "
        "temperature 0.2, top_p 0.9), `vllm` (none: temperature 1, top_p 1, ...) or a folder "
        "holding a generation_config.json (default auto)",
    )
    serve.add_argument(
        "--override-generation-config",
        help="sampling defaults over those, as JSON (vLLM's flag): temperature, top_p, top_k, "
        "min_p, repetition_penalty, max_new_tokens, e.g. '{\"temperature\": 0.7}'",
    )
    serve.add_argument(
        "--max-body-bytes",
        type=int,
        help="largest request body in bytes; larger ones get 413 (default 16 MiB)",
    )
    serve.add_argument(
        "--metrics-public",
        action="store_true",
        default=None,
        help="serve /metrics without the API key (for a Prometheus scraper)",
    )
    serve.add_argument(
        "--shutdown-timeout",
        type=float,
        help="on SIGTERM, seconds to let in-flight requests finish before exiting (default 30)",
    )
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    serve.add_argument(
        "--log-format",
        choices=["text", "json"],
        help="text lines, or one JSON object per line with the request id (default text)",
    )
    fetch = sub.add_parser("fetch", help="resolve and cache the model (converts the embedded GGUF once)")
    _model_flags(fetch)
    # `hotlora chat ARGS` is dispatched by `main` before parsing; listed here for `hotlora --help`.
    sub.add_parser(
        "chat", add_help=False, help="chat with a running server in the terminal (`hotlora chat --help`)"
    )
    sub.add_parser(
        "train", add_help=False, help="train a LoRA adapter into the store (`hotlora train --help`)"
    )
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    flags: dict[str, Any] = {k: v for k, v in vars(args).items() if k != "command"}
    try:
        return Settings.build(flags, os.environ)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg'].removeprefix('Value error, ')}" for e in exc.errors()
        )
        raise SystemExit(f"hotlora: invalid settings: {problems}") from None


def serve_settings(args: argparse.Namespace) -> Settings:
    """The settings `hotlora serve ARGS` runs with, without starting anything (the Docker image's entry
    point is tested through this); `SystemExit` with the reason for settings that must not be served."""
    return _servable(_settings(args))


def _servable(settings: Settings) -> Settings:
    problem = settings.exposure_problem()
    if problem is not None:
        raise SystemExit(f"hotlora: {problem}")
    if settings.api_key is None and not is_loopback(settings.host):  # allowed by --insecure-no-api-key
        log.warning(
            "SERVING ON %s:%d WITHOUT AN API KEY (--insecure-no-api-key): anyone who can reach this port "
            "can use this server and change or delete its adapters",
            settings.host,
            settings.port,
        )
    if settings.api_key is None and "*" in settings.allowed_origins:
        log.warning(
            "--allowed-origins '*' without an API key: any web page a user of this machine opens can "
            "use this server and change or delete its adapters"
        )
    return settings


def serve(settings: Settings) -> int:
    """Serve until SIGINT/SIGTERM; then stop accepting connections, let in-flight requests finish (up to
    `--shutdown-timeout`), stop the engine and exit 0."""
    _servable(settings)  # before anything loads
    import uvicorn
    from sse_starlette.sse import AppStatus

    from .api import create_app
    from .engine.engine import Engine

    # sse-starlette ends every open stream at the first signal; uvicorn's graceful shutdown drains instead
    AppStatus.disable_automatic_graceful_drain()

    server: uvicorn.Server | None = None

    def fatal(_: BaseException) -> None:
        if server is not None:
            server.should_exit = True

    engine = Engine(settings, on_fatal=fatal)
    app = create_app(
        engine,
        api_key=settings.api_key,
        metrics_public=settings.metrics_public,
        max_body_bytes=settings.max_body_bytes,
        allowed_hosts=settings.host_check,
        allowed_origins=settings.allowed_origins,
        allowed_methods=settings.allowed_methods,
        allowed_headers=settings.allowed_headers,
        tool_call_parser=settings.tool_call_parser,
    )
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=None,
        access_log=False,  # our access log carries the request id
        timeout_graceful_shutdown=settings.shutdown_timeout,
    )
    server = uvicorn.Server(config)
    engine.start()
    # uvicorn drains, then re-raises SIGINT/SIGTERM into the handlers it found: with these, the engine
    # stops and the command exits 0 rather than dying by the signal (or with a KeyboardInterrupt trace)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
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


def chat(argv: Sequence[str]) -> int:
    """`hotlora chat`: the client package's terminal chat (`hotlora-chat`), which speaks only HTTP."""
    try:
        from hotlora_client.terminal import main as chat_main
    except ImportError:
        print(
            "hotlora: `hotlora chat` needs the client package: pip install ./clients/python", file=sys.stderr
        )
        return 1
    return chat_main(list(argv), prog="hotlora chat")


def train(argv: Sequence[str]) -> int:
    """`hotlora train`: the trainer (`hotlora-train`) in its own process, so the server never imports it."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "hotlora_trainer", *argv])
    return 1  # not reached: execv replaces this process


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["chat"]:  # its options are the chat's own, so argparse does not see them
        return chat(argv[1:])
    if argv[:1] == ["train"]:  # likewise: the trainer parses its own options
        return train(argv[1:])
    args = build_parser().parse_args(argv)
    settings = _settings(args)
    configure_logging(settings.log_level, settings.log_format)
    # bitsandbytes suggests, at import, an optional CPU kernel that only the Hugging Face hub serves
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    if args.command == "serve":
        return serve(settings)
    return fetch(settings)


if __name__ == "__main__":
    sys.exit(main())
