"""`hotlora serve`: the server's settings from flags and `HOTLORA_*`, checked, then served."""

from __future__ import annotations

import argparse

from hotlora_server.serve import check_servable, serve
from hotlora_server.settings import Settings

from .settings_flags import add_model_flags, settings_from, start_logging


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("serve", help="serve the base model and its adapters over OpenAI's API")
    add_model_flags(parser)
    parser.add_argument(
        "--served-model-name", help="id of the base model in the API (default: derived from --model)"
    )
    parser.add_argument(
        "--host",
        help="interface to bind (default 127.0.0.1: this machine only; any other "
        "needs --api-key or --insecure-no-api-key)",
    )
    parser.add_argument("--port", type=int, help="port (default 8000)")
    parser.add_argument(
        "--api-key",
        help="require 'Authorization: Bearer KEY' on every route but /health "
        "($HOTLORA_API_KEY, which `ps` does not show; an empty key is refused)",
    )
    parser.add_argument(
        "--allowed-hosts",
        action="append",
        help="Host names to answer besides localhost and IP addresses, comma-separated or "
        "repeated; `.example.com` is it and its subdomains, `*` any (without an API key "
        "other names get 403: DNS rebinding)",
    )
    parser.add_argument(
        "--allowed-origins",
        action="append",
        help="web origins whose pages may call the API from a browser (CORS, vLLM's flag), "
        "comma-separated, repeated or a JSON list, e.g. https://app.example.com; `*` any "
        "(default: none, CORS off). Requests still need the API key when one is set",
    )
    parser.add_argument(
        "--allowed-methods",
        action="append",
        help="with --allowed-origins: the HTTP methods those pages may use (default `*`)",
    )
    parser.add_argument(
        "--allowed-headers",
        action="append",
        help="with --allowed-origins: the request headers those pages may send (default `*`)",
    )
    parser.add_argument(
        "--insecure-no-api-key",
        action="store_true",
        default=None,
        help="allow a --host beyond loopback without an API key: anyone who can reach the "
        "port can use the server and change or delete its adapters",
    )
    parser.add_argument(
        "--chat-template",
        help="the chat template for models without one (or to replace it): `chatml` (built in), "
        "a Jinja file, or the template itself; train with the same one",
    )
    parser.add_argument("--adapters-dir", help="adapter store (default $HOTLORA_HOME/adapters)")
    parser.add_argument(
        "--allow-adapter-dir",
        action="append",
        help="a folder adapters may be loaded from by path (repeatable; the store is always allowed)",
    )
    parser.add_argument(
        "--max-loaded-adapters",
        type=int,
        help="adapters and blends kept in memory at once, least recently used evicted (default 8)",
    )
    parser.add_argument(
        "--max-lora-rank",
        type=int,
        help="largest LoRA rank an adapter may have, as vLLM's flag: larger ones are refused "
        "before loading (default 64, at most 512)",
    )
    parser.add_argument(
        "--max-blend-rank",
        type=int,
        help="largest rank a blend may have: 'cat' adds its adapters' ranks, 'svd' keeps the "
        "largest; larger blends are refused with 400 (default 256)",
    )
    parser.add_argument(
        "--merge-policy",
        choices=["auto", "never", "always"],
        help="merge an adapter into dense weights for speed: always, auto (once it had the "
        "whole batch to itself for 64 steps) or never (default: outputs then never depend on "
        "merge state)",
    )
    parser.add_argument("--max-n", type=int, help="largest `n` a request may ask for (default 8)")
    parser.add_argument(
        "--max-num-seqs",
        type=int,
        help="rows (requests x n) decoded together in the running batch; more wait (default 32)",
    )
    parser.add_argument(
        "--max-num-batched-tokens",
        type=int,
        help="prompt tokens prefilled per batch step (cached prefix tokens are free): longer "
        "prompts are prefilled in chunks between decode steps (default 512)",
    )
    parser.add_argument(
        "--kv-cache-memory-bytes",
        help="bytes the running batch's keys and values may take, as an integer or with a unit "
        "(8GiB, 500MB); a request waits until its worst case fits (default 4GiB)",
    )
    parser.add_argument(
        "--cpu-prefill",
        choices=["bf16", "4bit"],
        help="4-bit base on a CPU with native bf16: prefill through bf16 GEMMs on dequantized "
        "weights (bf16, default: several times faster; keeps a second copy of the 4-bit "
        "weights, half a byte per weight) or bitsandbytes' 4-bit kernel (4bit)",
    )
    parser.add_argument(
        "--cpu-prefill-cache-gb",
        type=float,
        help="with --cpu-prefill bf16: GiB of dequantized bf16 weights kept so that a prefill "
        "neither dequantizes nor reorders them (2 bytes per weight, in place of the 4-bit "
        "copy; 0: dequantize at every prefill; default 1)",
    )
    parser.add_argument(
        "--cpu-kernels",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="on a CPU: hotlora's fixed-order kernels (4-bit layers where bitsandbytes has no "
        "fused kernel, logits, LoRA deltas), compiled once with the system C compiler; "
        "batch invariance needs them (default on; without a compiler, or off: torch and "
        "bitsandbytes alone)",
    )
    parser.add_argument(
        "--cpu-4bit",
        choices=["auto", "bitsandbytes", "hotlora"],
        help="4-bit layers on a CPU: bitsandbytes' fused kernel (fast only with AVX512-BF16; "
        "elsewhere it dequantizes every weight at every forward) or hotlora's fixed-order "
        "4-bit kernel (default auto: bitsandbytes where its kernel is fused, else hotlora)",
    )
    parser.add_argument(
        "--batch-invariant",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a request's output does not depend on what shares its batch: on by default where it "
        "holds (a float32 CPU with the kernels); --batch-invariant refuses to start elsewhere, "
        "--no-batch-invariant takes the device's faster attention",
    )
    parser.add_argument(
        "--enable-prefix-caching",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="reuse the KV cache of prompt prefixes already computed (the system turn, shared "
        "context) across requests of the same adapter (default on)",
    )
    parser.add_argument(
        "--max-queue",
        type=int,
        help="requests that may wait for a place in the running batch; beyond it the server "
        "answers 429 with Retry-After at once (default 64)",
    )
    parser.add_argument("--max-model-len", type=int, help="cap the context window (default: the model's)")
    parser.add_argument(
        "--generation-config",
        help="where the sampling defaults of requests that leave them out come from, as vLLM's "
        "flag: `auto` (the model's generation_config.json; the embedded model: its card's "
        "temperature 0.2, top_p 0.9), `vllm` (none: temperature 1, top_p 1, ...) or a folder "
        "holding a generation_config.json (default auto)",
    )
    parser.add_argument(
        "--override-generation-config",
        help="sampling defaults over those, as JSON (vLLM's flag): temperature, top_p, top_k, "
        "min_p, repetition_penalty, max_new_tokens, e.g. '{\"temperature\": 0.7}'",
    )
    parser.add_argument(
        "--max-body-bytes",
        type=int,
        help="largest request body in bytes; larger ones get 413 (default 16 MiB)",
    )
    parser.add_argument(
        "--metrics-public",
        action="store_true",
        default=None,
        help="serve /metrics without the API key (for a Prometheus scraper)",
    )
    parser.add_argument(
        "--shutdown-timeout",
        type=float,
        help="on SIGTERM, seconds to let in-flight requests finish before exiting (default 30)",
    )
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    parser.add_argument(
        "--log-format",
        choices=["text", "json"],
        help="text lines, or one JSON object per line with the request id (default text)",
    )


def serve_settings(args: argparse.Namespace) -> Settings:
    """The settings `hotlora serve ARGS` runs with, without starting anything (the Docker image's entry
    point is tested through this); `SystemExit` with the reason for settings that must not be served."""
    return check_servable(settings_from(args))


def run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    start_logging(settings)
    return serve(settings)
