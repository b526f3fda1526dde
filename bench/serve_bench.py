"""Serving throughput and latency: hotlora against `transformers serve` and a naive PEFT loop.

    python bench/serve_bench.py [--quick] [--tokens 64] [--rounds 3]
                                [--only hotlora,hotlora-slots,hotlora-other,hotlora-variant,hotlora-structured,
                                        hotlora-loads,transformers,naive]
                                [--workloads "base,8 adapters,4 blends,12 blends"] [--home DIR] [--keep-logs]

One run measures, on one machine and the same 4-bit (nf4) SmolLM2-135M base:
- hotlora (`hotlora serve`, 8 random store adapters, r=16, room for all of them and the blends): c=1
  base; c=16 base; c=16 spread over the 8 adapters; c=16 over 4 blends (`lora0*0.5+lora1*0.5`, ...);
- hotlora-slots: the same server with the default `--max-loaded-adapters 8`: c=16 over the 8 adapters,
  over the 4 blends (whose sources together with them outnumber the slots), and over 12 blends (a working
  set beyond the slots: blends are evicted and built again while measured);
- hotlora-other: the same server with the other 4-bit path for this CPU (`--cpu-4bit`): bitsandbytes
  where hotlora picks its own fixed-order kernel (a CPU without AVX512-BF16: the path served before that
  kernel), else hotlora's kernel: c=1 base and c=16 base;
- hotlora-variant: the same server with `--no-batch-invariant` (the device's own attention instead of the
  fixed-order one): c=1 base and c=16 base, so that the table says what batch invariance costs;
- hotlora-structured: the `hotlora` server, c=1 and c=16 base, each with and without `response_format`
  (a strict JSON schema whose last field is a story of at least 2000 characters, so that the answer runs
  to --tokens like the others), so that the table says what decoding under a grammar costs;
- hotlora-loads: the `hotlora` server with one adapter in use (lora0), a greedy base stream of
  --load-stream-tokens tokens (`ignore_eos`); once it has 16 chunks, one request for an adapter not loaded
  yet (lora1), then, on a second stream, one for a blend not built yet (`lora2*0.5+lora3*0.5`, `cat`, its
  sources not loaded either), after one for lora0 (loaded: the gap an arrival's prefill alone makes).
  Reported: the stream's median gap between chunks, and its largest gap while the other request waited
  for its first chunk (the load, or the build, and its prefill);
- `transformers serve --continuous-batching --quantization bnb-4bit` on the same converted base folder:
  c=1 and c=16 base (its bnb-4bit is nf4 with double quantization, hotlora's without);
- naive: in this process, one request at a time, PEFT `set_adapter` + `model.generate`, over the same
  request list as hotlora's "c=16, 8 adapters".

Every request is a greedy (temperature 0) streamed chat asking for a long story, capped at --tokens
(32 with --quick). A workload at concurrency c runs c clients, each sending its next request as soon as
its previous one ends, until the list of max(c, 4) x --rounds requests is used up. Each system and model
gets a short warm-up request first (adapters loaded, blends built, continuous batching started).

The table's numbers:
- tokens/request: mean completion tokens actually produced (from the usage chunk, not the cap);
- output tok/s: all completion tokens of the workload / its wall time;
- TTFT: from sending a request to its first content chunk. For naive, whose requests queue behind each
  other, a request counts as sent when one of c=16 simulated clients would send it (at the start, or
  when the request c places before it ended), so its TTFT includes the wait, as a server's would;
- ITL: the gaps between successive content chunks of a request, pooled over all requests (naive: the
  gaps between tokens, timed by a generate streamer);
- TPOT (time per output token, c=1 rows, in a table of their own): per request, from its first content
  chunk to its last, divided by its completion tokens less one (vLLM's definition); mean, p50 and p95;
- evictions / loads: hotlora's `hotlora_adapter_evictions_total` and `hotlora_adapter_loads_total`
  (adapters loaded and blends built) from /metrics, counted over the workload.

The ratios below the table are the serving targets, each computed from this run with PASS/FAIL. The
markdown goes to stdout, bench/results/serve_bench-<UTC time>.md and bench/results/serve_bench-latest.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
from _common import machine_header, model_folder, percentile, publish, random_adapters, register_all

from support.live_server import BASE_ID, RunningServer, free_port, serving, stop_server

SYSTEMS = {
    "hotlora": "hotlora",
    "hotlora-slots": "hotlora, default 8 adapter slots",
    "hotlora-other": "hotlora, other 4-bit path",
    "hotlora-variant": "hotlora, --no-batch-invariant",
    "hotlora-structured": "hotlora, response_format",
    "hotlora-loads": "hotlora, a stream beside loads",
    "transformers": "transformers serve",
    "naive": "naive (sequential PEFT)",
}
CONCURRENCY = 16
MIN_REQUESTS = 4  # per round, so that c=1 has a few samples too
ADAPTERS = tuple(f"lora{i}" for i in range(8))
BLENDS = tuple(f"lora{i}*0.5+lora{i + 1}*0.5" for i in range(0, len(ADAPTERS), 2))
# 12 pairs of neighbours one and two apart: more blends than the default 8 slots hold
MANY_BLENDS = tuple(f"lora{i}*0.5+lora{i + step}*0.5" for step in (1, 2) for i in range(6))
TOPICS = (
    "a lighthouse keeper",
    "a dragon who cannot fly",
    "a lost robot",
    "two rival bakers",
    "a ship in a storm",
    "a haunted library",
    "a clockmaker's apprentice",
    "a desert caravan",
)

# the story comes last and may not end before 2000 characters: every answer runs to the token cap, as the
# unconstrained ones do, so both count the same tokens per request
STORY_FORMAT = {
    "type": "json_schema",
    "json_schema": {
        "name": "story",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {
                "title": {"type": "string", "maxLength": 60},
                "genre": {"enum": ["fantasy", "adventure", "mystery", "comedy"]},
                "story": {"type": "string", "minLength": 2000},
            },
            "required": ["title", "genre", "story"],
            "additionalProperties": False,
        },
    },
}

Request = tuple[str, list[dict[str, str]]]  # model, messages


@dataclass(frozen=True)
class Workload:
    label: str
    concurrency: int
    models: tuple[str, ...]  # request i asks for models[i % len(models)]
    response_format: dict[str, Any] | None = None  # every request's, if any

    def requests(self, rounds: int) -> list[Request]:
        """The (model, messages) of every request, in the order clients take them."""
        count = max(self.concurrency, MIN_REQUESTS) * rounds
        return [(self.models[i % len(self.models)], story_prompt(i)) for i in range(count)]


@dataclass(frozen=True)
class Sample:
    sent: float  # perf_counter() when the request was (or would have been) sent
    stamps: list[float]  # perf_counter() at each content chunk (naive: each token)
    tokens: int  # completion tokens produced


@dataclass(frozen=True)
class Summary:
    system: str  # a key of SYSTEMS
    label: str
    concurrency: int
    requests: int
    tokens_per_request: float
    tokens_per_s: float
    ttft: tuple[float, float]  # p50, p95 in seconds
    itl: tuple[float, float]  # p50, p95 in seconds
    tpot: tuple[float, float, float]  # mean, p50, p95 in seconds
    churn: tuple[int, int] | None = None  # hotlora's adapter evictions and loads during the workload


@dataclass(frozen=True)
class LoadGap:
    """A running stream's gaps while another request waited for its adapter or blend (hotlora-loads)."""

    label: str  # what the other request waited for
    median: float  # the stream's median gap between chunks, seconds
    largest: float  # its largest gap while the other request had no first chunk yet, seconds
    wait: float  # the other request's time to first chunk, seconds


@dataclass(frozen=True)
class Skipped:
    system: str
    reason: str


class Unavailable(RuntimeError):
    """A system cannot run here; the message says why."""


def story_prompt(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Write a long story about {TOPICS[i % len(TOPICS)]}."}]


def summarize(
    system: str, workload: Workload, samples: list[Sample], wall: float, churn: tuple[int, int] | None = None
) -> Summary:
    ttfts = [s.stamps[0] - s.sent for s in samples]
    gaps = [b - a for s in samples for a, b in pairwise(s.stamps)]
    tpots = [(s.stamps[-1] - s.stamps[0]) / (s.tokens - 1) for s in samples if s.tokens > 1]
    tokens = sum(s.tokens for s in samples)
    return Summary(
        system,
        workload.label,
        workload.concurrency,
        len(samples),
        tokens / len(samples),
        tokens / wall,
        (percentile(ttfts, 50), percentile(ttfts, 95)),
        (percentile(gaps, 50), percentile(gaps, 95)),
        (sum(tpots) / len(tpots) if tpots else float("nan"), percentile(tpots, 50), percentile(tpots, 95)),
        churn,
    )


async def stream_chat(
    client: httpx.AsyncClient,
    model: str,
    messages: list[dict[str, str]],
    tokens: int,
    response_format: dict[str, Any] | None = None,
    stamps: list[float] | None = None,
    ignore_eos: bool = False,
) -> Sample:
    """One greedy streamed chat: when each content chunk arrived (appended to `stamps` as they come, if
    given), and the usage's completion tokens."""
    body = {
        "model": model,
        "messages": messages,
        "max_tokens": tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        **({"response_format": response_format} if response_format else {}),
        **({"ignore_eos": True} if ignore_eos else {}),
    }
    sent = time.perf_counter()
    stamps = [] if stamps is None else stamps
    produced: int | None = None
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{model}: HTTP {response.status_code}: {(await response.aread()).decode()}")
        async for line in response.aiter_lines():
            payload = line.removeprefix("data:").strip()
            if not line.startswith("data:") or payload == "[DONE]":
                continue
            chunk = json.loads(payload)
            if "error" in chunk:
                raise RuntimeError(f"{model}: error in stream: {chunk['error']}")
            if any(choice["delta"].get("content") for choice in chunk.get("choices", [])):
                stamps.append(time.perf_counter())
            if chunk.get("usage"):
                produced = chunk["usage"]["completion_tokens"]
    if not stamps or produced is None:
        raise RuntimeError(f"{model}: the stream ended without content or usage")
    return Sample(sent, stamps, produced)


async def run_clients(
    base_url: str,
    requests: list[Request],
    concurrency: int,
    tokens: int,
    response_format: dict[str, Any] | None = None,
) -> tuple[list[Sample], float]:
    """`concurrency` clients share the request list; the samples and the wall time."""
    pending = iter(requests)
    samples: list[Sample] = []
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=600, limits=limits) as client:

        async def client_loop() -> None:
            for model, messages in pending:
                samples.append(await stream_chat(client, model, messages, tokens, response_format))

        started = time.perf_counter()
        await asyncio.gather(*(client_loop() for _ in range(concurrency)))
        return samples, time.perf_counter() - started


def served_kernel(base_url: str) -> str:
    """How the server runs its base's layers (its /v1/models), for the report."""
    base = httpx.get(f"{base_url}/v1/models", timeout=10).json()["data"][0]
    return f"{base.get('kernel')}; batch invariant: {base.get('batch_invariant')}"


def adapter_churn(base_url: str) -> tuple[int, int]:
    """hotlora's adapter evictions and loads (blends built included) so far, from its /metrics."""
    values = {}
    for line in httpx.get(f"{base_url}/metrics", timeout=10).text.splitlines():
        name, _, value = line.partition(" ")
        values[name] = value
    return int(float(values["hotlora_adapter_evictions_total"])), int(
        float(values["hotlora_adapter_loads_total"])
    )


def bench_server(
    system: str, base_url: str, workloads: list[Workload], rounds: int, tokens: int, churn: bool = False
) -> list[Summary]:
    """Each workload after a warm-up of every model; `churn`: count hotlora's adapter evictions and loads."""
    models = dict.fromkeys(m for w in workloads for m in w.models)
    asyncio.run(run_clients(base_url, [(m, story_prompt(0)) for m in models], 1, 2))  # warm-up
    for response_format in dict.fromkeys(
        json.dumps(w.response_format) for w in workloads if w.response_format
    ):
        warm = [(workloads[0].models[0], story_prompt(0))]  # the schema compiled once, as in steady use
        asyncio.run(run_clients(base_url, warm, 1, 2, json.loads(response_format)))
    summaries = []
    for workload in workloads:
        before = adapter_churn(base_url) if churn else None
        samples, wall = asyncio.run(
            run_clients(
                base_url, workload.requests(rounds), workload.concurrency, tokens, workload.response_format
            )
        )
        after = adapter_churn(base_url) if churn else None
        counted = (after[0] - before[0], after[1] - before[1]) if before and after else None
        summaries.append(summarize(system, workload, samples, wall, counted))
    return summaries


async def gap_beside(base_url: str, model: str, label: str, tokens: int) -> LoadGap:
    """A base stream of `tokens`, and once it runs a short request for `model`: the stream's gaps."""
    stamps: list[float] = []
    async with httpx.AsyncClient(base_url=base_url, timeout=600) as client:
        stream = asyncio.create_task(
            stream_chat(client, BASE_ID, story_prompt(1), tokens, stamps=stamps, ignore_eos=True)
        )
        while len(stamps) < 16 and not stream.done():
            await asyncio.sleep(0.005)
        other = await stream_chat(client, model, story_prompt(2), 4)
        await stream
    first = other.stamps[0]
    gaps = list(pairwise(stamps))
    if stamps[-1] < first:
        raise RuntimeError(f"{label}: the stream ended before {model} answered; raise --load-stream-tokens")
    during = [b - a for a, b in gaps if b > other.sent and a < first]
    return LoadGap(label, percentile([b - a for a, b in gaps], 50), max(during), first - other.sent)


def bench_loads(base_url: str, tokens: int) -> list[LoadGap]:
    """hotlora-loads: one adapter in use, then a stream beside a cold adapter, and beside a new blend."""
    asyncio.run(run_clients(base_url, [(ADAPTERS[0], story_prompt(0))], 1, 2))  # PEFT wraps the base
    return [
        asyncio.run(gap_beside(base_url, ADAPTERS[0], "a request for a loaded adapter arrives", tokens)),
        asyncio.run(gap_beside(base_url, ADAPTERS[1], "a cold adapter loads", tokens)),
        asyncio.run(gap_beside(base_url, f"{ADAPTERS[2]}*0.5+{ADAPTERS[3]}*0.5", "a blend is built", tokens)),
    ]


def bench_hotlora(
    home: Path, store: Path, logs: Path, args: argparse.Namespace, kernels: dict[str, str], system: str
) -> list[Summary | LoadGap]:
    """hotlora as it serves by default with room for every adapter and blend (`hotlora`), with the default
    adapter slots (`hotlora-slots`), with the 4-bit path it does not pick on this CPU (`hotlora-other`),
    without batch invariance (`hotlora-variant`), asked for structured outputs (`hotlora-structured`), or
    streaming beside an adapter load and a blend build (`hotlora-loads`)."""
    flags = ["--home", str(home), "--adapters-dir", str(store), "--log-level", "warning"]
    base = [Workload("base", 1, (BASE_ID,)), Workload("base", CONCURRENCY, (BASE_ID,))]
    structured = [Workload("base, json_schema", conc, (BASE_ID,), STORY_FORMAT) for conc in (1, CONCURRENCY)]
    adapters = [Workload("8 adapters", CONCURRENCY, ADAPTERS), Workload("4 blends", CONCURRENCY, BLENDS)]
    if system == "hotlora-slots":
        workloads = [*adapters, Workload("12 blends", CONCURRENCY, MANY_BLENDS)]
    else:  # room for the 8 adapters and the 4 blends, so that none is evicted while measured
        flags += ["--max-loaded-adapters", "16"]
        workloads = base if system in ("hotlora-other", "hotlora-variant") else base + adapters
        if system == "hotlora-structured":  # with and without, one after the other on one server
            workloads = [base[0], structured[0], base[1], structured[1]]
    if system == "hotlora-other":
        flags += ["--cpu-4bit", other_4bit_path()]
    if system == "hotlora-variant":
        flags += ["--no-batch-invariant"]
    workloads = [w for w in workloads if args.workloads is None or w.label.split(",")[0] in args.workloads]
    with serving(flags, logs / f"{system}.log") as server:
        kernels[system] = served_kernel(server.base_url)
        if system == "hotlora-loads":
            return list(bench_loads(server.base_url, args.load_stream_tokens))
        return list(bench_server(system, server.base_url, workloads, args.rounds, args.tokens, churn=True))


def other_4bit_path() -> str:
    """The `--cpu-4bit` value hotlora does not pick here: bitsandbytes where it has no fused kernel."""
    from bitsandbytes.functional import has_avx512bf16

    return "hotlora" if has_avx512bf16() else "bitsandbytes"


@contextmanager
def transformers_serving(model_dir: Path, log: Path, timeout: float = 300) -> Iterator[RunningServer]:
    """`transformers serve` with continuous batching on `model_dir` in 4-bit, on hotlora's device and dtype."""
    from transformers.utils.import_utils import is_serve_available

    from hotlora_adapters.runtime.base_model import pick_device, pick_dtype

    cli = Path(sys.executable).parent / "transformers"
    if not is_serve_available() or not cli.is_file():
        raise Unavailable(
            "needs the transformers CLI with fastapi, uvicorn, openai and pydantic "
            "(pip install 'transformers[serving]')"
        )
    device = pick_device("auto")
    dtype = str(pick_dtype("auto", device)).removeprefix("torch.")
    port = free_port()
    cmd = [
        str(cli),
        "serve",
        str(model_dir),
        "--continuous-batching",
        "--quantization",
        "bnb-4bit",
        "--device",
        device,
        "--dtype",
        dtype,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with log.open("wb") as handle:
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env)
    server = RunningServer(f"http://127.0.0.1:{port}", proc, log)
    try:
        deadline = time.monotonic() + timeout
        while not healthy(server):
            if proc.poll() is not None or time.monotonic() > deadline:
                last = (server.output().strip().splitlines() or ["(no output)"])[-1]
                raise Unavailable(f"transformers serve did not start (exit code {proc.poll()}): {last}")
            time.sleep(0.5)
        yield server
    finally:
        stop_server(server)


def healthy(server: RunningServer) -> bool:
    try:
        return httpx.get(f"{server.base_url}/health", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def bench_transformers(model_dir: Path, logs: Path, rounds: int, tokens: int) -> list[Summary]:
    model = str(model_dir)  # a server started with a model answers only to that exact name
    workloads = [Workload("base", 1, (model,)), Workload("base", CONCURRENCY, (model,))]
    with transformers_serving(model_dir, logs / "transformers.log") as server:
        return bench_server("transformers", server.base_url, workloads, rounds, tokens)


def bench_naive(home: Path, library: Path, rounds: int, tokens: int) -> list[Summary]:
    """One request at a time in this process: `set_adapter`, then `generate` with a token-timing streamer."""
    import torch
    from peft import PeftModel
    from transformers.generation.streamers import BaseStreamer

    from hotlora_server.engine.loader import load_model
    from hotlora_server.settings import Settings

    class TokenClock(BaseStreamer):
        """Times each generated token (`generate` first puts the prompt, which is skipped)."""

        def __init__(self) -> None:
            self.puts: list[float] = []

        def put(self, value: Any) -> None:
            self.puts.append(time.perf_counter())

        def end(self) -> None:
            pass

    loaded = load_model(Settings.build({"home": str(home)}, {}))
    # Every adapter is loaded before the first forward: on AVX512-BF16 CPUs bitsandbytes repacks the
    # 4-bit weights then, and PEFT loads after that would corrupt them (see engine/bnb_cpu.py).
    model = PeftModel.from_pretrained(loaded.model, library / ADAPTERS[0], adapter_name=ADAPTERS[0])
    for name in ADAPTERS[1:]:
        model.load_adapter(library / name, adapter_name=name)

    def generate(adapter: str, messages: list[dict[str, str]], max_tokens: int) -> list[float]:
        model.set_adapter(adapter)
        inputs = loaded.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        ).to(loaded.device)
        clock = TokenClock()
        with torch.inference_mode():
            model.generate(**inputs, max_new_tokens=max_tokens, do_sample=False, streamer=clock)
        return clock.puts[1:]

    workload = Workload("8 adapters", CONCURRENCY, ADAPTERS)
    generate(ADAPTERS[0], story_prompt(0), 2)  # warm-up
    samples: list[Sample] = []
    ended: list[float] = []
    started = time.perf_counter()
    for i, (adapter, messages) in enumerate(workload.requests(rounds)):
        sent = ended[i - CONCURRENCY] if i >= CONCURRENCY else started
        stamps = generate(adapter, messages, tokens)
        ended.append(time.perf_counter())
        samples.append(Sample(sent, stamps, len(stamps)))
    return [summarize("naive", workload, samples, time.perf_counter() - started)]


Row = Summary | LoadGap | Skipped


def results_table(rows: list[Row]) -> list[str]:
    lines = [
        "| system | workload | c | requests | tokens/request | output tok/s | TTFT p50 (s) | TTFT p95 (s) "
        "| ITL p50 (ms) | ITL p95 (ms) | evictions / loads |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for row in rows:
        if isinstance(row, Skipped):
            lines.append(f"| {SYSTEMS[row.system]} | skipped: {row.reason} | | | | | | | | | |")
            continue
        if isinstance(row, LoadGap):
            continue
        churn = f"{row.churn[0]} / {row.churn[1]}" if row.churn else ""
        lines.append(
            f"| {SYSTEMS[row.system]} | {row.label} | {row.concurrency} | {row.requests} "
            f"| {row.tokens_per_request:.1f} | {row.tokens_per_s:.1f} | {row.ttft[0]:.2f} | {row.ttft[1]:.2f} "
            f"| {row.itl[0] * 1000:.0f} | {row.itl[1] * 1000:.0f} | {churn} |"
        )
    return lines


def tpot_table(rows: list[Row]) -> list[str]:
    """Time per output token of the c=1 rows."""
    lines = [
        "| system | workload | TPOT mean (ms) | TPOT p50 (ms) | TPOT p95 (ms) |",
        "|---|---|--:|--:|--:|",
    ]
    for row in rows:
        if isinstance(row, Summary) and row.concurrency == 1:
            mean, p50, p95 = (value * 1000 for value in row.tpot)
            lines.append(f"| {SYSTEMS[row.system]} | {row.label} | {mean:.1f} | {p50:.1f} | {p95:.1f} |")
    return lines


def loads_table(rows: list[Row]) -> list[str]:
    """hotlora-loads: the stream's largest gap beside a load or a build, against the ≤ 3x median target."""
    lines = [
        "| a running base stream while | its median gap (ms) | its largest gap meanwhile (ms) | ratio | goal "
        "| result | the other request's TTFT (s) |",
        "|---|--:|--:|--:|--:|---|--:|",
    ]
    for row in rows:
        if isinstance(row, LoadGap):
            ratio = row.largest / row.median
            lines.append(
                f"| {row.label} | {row.median * 1000:.0f} | {row.largest * 1000:.0f} | {ratio:.1f}x | ≤ 3x "
                f"| {'PASS' if ratio <= 3 else 'FAIL'} | {row.wait:.2f} |"
            )
    return lines


def targets_table(rows: list[Row]) -> list[str]:
    """The serving targets, each from this run's rows: value, goal, PASS/FAIL (n/a when a row is missing)."""
    by_key = {(r.system, r.label, r.concurrency): r for r in rows if isinstance(r, Summary)}
    c = CONCURRENCY
    hot_base1, hot_base, hot_adapters = (
        ("hotlora", "base", 1),
        ("hotlora", "base", c),
        ("hotlora", "8 adapters", c),
    )
    other1, other = ("hotlora-other", "base", 1), ("hotlora-other", "base", c)
    slots_adapters, slots_blends = ("hotlora-slots", "8 adapters", c), ("hotlora-slots", "4 blends", c)
    ratios = [
        (f"hotlora c={c} 8 adapters / hotlora c={c} base", hot_adapters, hot_base, 0.8),
        (f"hotlora, 8 slots: c={c} 4 blends / c={c} 8 adapters", slots_blends, slots_adapters, 0.8),
        ("hotlora c=1 / hotlora, other 4-bit path c=1", hot_base1, other1, 4.0),
        (f"hotlora c={c} base / hotlora, other 4-bit path c={c}", hot_base, other, 2.0),
        (f"hotlora c={c} 8 adapters / naive", hot_adapters, ("naive", "8 adapters", c), 5.0),
        (f"hotlora c={c} base / transformers serve c={c}", hot_base, ("transformers", "base", c), 1.3),
        ("hotlora c=1 / transformers serve c=1", hot_base1, ("transformers", "base", 1), 1.3),
    ]
    lines = ["| target (output tok/s ratio or latency) | value | goal | result |", "|---|--:|--:|---|"]
    for name, top, bottom, goal in ratios:
        if top in by_key and bottom in by_key:
            value = by_key[top].tokens_per_s / by_key[bottom].tokens_per_s
            lines.append(f"| {name} | {value:.2f}x | ≥ {goal}x | {'PASS' if value >= goal else 'FAIL'} |")
        else:
            lines.append(f"| {name} | | ≥ {goal}x | n/a (not run) |")
    for conc in (c, 1):  # what a grammar costs: the target at c=16, a figure at c=1
        plain = by_key.get(("hotlora-structured", "base", conc))
        constrained = by_key.get(("hotlora-structured", "base, json_schema", conc))
        name = f"response_format: hotlora c={conc} base, json_schema / c={conc} base"
        if plain and constrained:
            value = constrained.tokens_per_s / plain.tokens_per_s
            verdict = ("PASS" if value >= 0.85 else "FAIL") if conc == c else "info"
            lines.append(f"| {name} | {value:.2f}x | {'≥ 0.85x' if conc == c else '(cost)'} | {verdict} |")
        elif conc == c:
            lines.append(f"| {name} | | ≥ 0.85x | n/a (not run) |")
    for conc in (1, c):  # what the guarantee costs: not a target, a figure to choose the flag by
        kept, dropped = by_key.get(("hotlora", "base", conc)), by_key.get(("hotlora-variant", "base", conc))
        if kept and dropped:
            value = kept.tokens_per_s / dropped.tokens_per_s
            name = f"batch invariance: hotlora c={conc} base / --no-batch-invariant c={conc}"
            lines.append(f"| {name} | {value:.2f}x | (cost) | info |")
    worst = max((r.ttft[1] for k, r in by_key.items() if k[0] == "hotlora" and k[2] == c), default=None)
    if worst is None:
        lines.append(f"| hotlora TTFT p95, worst c={c} workload | | ≤ 1 s | n/a (not run) |")
    else:
        verdict = "PASS" if worst <= 1.0 else "FAIL"
        lines.append(f"| hotlora TTFT p95, worst c={c} workload | {worst:.2f} s | ≤ 1 s | {verdict} |")
    return lines


def system_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = set(names) - set(SYSTEMS)
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown system(s) {sorted(unknown)}; choose from {', '.join(SYSTEMS)}"
        )
    return names


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="one round of requests, 32 tokens each")
    parser.add_argument("--tokens", type=int, help="max tokens per request (default 64, 32 with --quick)")
    parser.add_argument(
        "--rounds", type=int, help="requests per workload: max(c, 4) x rounds (default 3; 1 with --quick)"
    )
    parser.add_argument(
        "--only",
        type=system_list,
        action="extend",
        help=f"systems to run, a comma list or repeated: {', '.join(SYSTEMS)} (default: all)",
    )
    parser.add_argument(
        "--workloads",
        type=lambda text: {w.strip() for w in text.split(",")},
        help="hotlora workloads to run, by label: base (with its json_schema twin), 8 adapters, 4 blends, "
        "12 blends (default: all)",
    )
    parser.add_argument(
        "--load-stream-tokens",
        type=int,
        default=240,
        help="hotlora-loads: tokens of the stream that runs beside the loads (default 240)",
    )
    parser.add_argument(
        "--home",
        type=Path,
        help="hotlora home with the converted base (default: a temporary one, converted afresh)",
    )
    parser.add_argument(
        "--keep-logs", action="store_true", help="keep the servers' logs (their folder is printed)"
    )
    args = parser.parse_args()
    args.tokens = args.tokens or (32 if args.quick else 64)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.only = args.only or list(SYSTEMS)
    return args


def run_systems(args: argparse.Namespace, root: Path, logs: Path, kernels: dict[str, str]) -> list[Row]:
    home = (args.home or root / "home").resolve()
    model_dir = model_folder(home)
    library = root / "library"
    hotloras = (
        "hotlora",
        "hotlora-slots",
        "hotlora-other",
        "hotlora-variant",
        "hotlora-structured",
        "hotlora-loads",
    )
    if {*hotloras, "naive"} & set(args.only):
        random_adapters(model_dir, library, ADAPTERS)
    rows: list[Row] = []
    if set(hotloras) & set(args.only):
        register_all(root / "store", library, ADAPTERS)
    for system in hotloras:
        if system in args.only:
            rows += bench_hotlora(home, root / "store", logs, args, kernels, system)
    if "transformers" in args.only:
        try:
            rows += bench_transformers(model_dir, logs, args.rounds, args.tokens)
        except Unavailable as exc:
            rows.append(Skipped("transformers", str(exc)))
    if "naive" in args.only:
        rows += bench_naive(home, library, args.rounds, args.tokens)
    return rows


def main() -> int:
    args = parse_args()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    with tempfile.TemporaryDirectory(prefix="serve_bench-") as tmp:
        logs = Path(tempfile.mkdtemp(prefix="serve_bench-logs-")) if args.keep_logs else Path(tmp)
        kernels: dict[str, str] = {}
        rows = run_systems(args, Path(tmp), logs, kernels)
    served = [f"- {SYSTEMS[system]}: {kernel}" for system, kernel in kernels.items()]
    report = "\n".join(
        [
            *machine_header("serve_bench", stamp),
            *served,
            "",
            *results_table(rows),
            "",
            "c=1 time per output token:",
            "",
            *tpot_table(rows),
            "",
            *loads_table(rows),
            "",
            *targets_table(rows),
        ]
    )
    publish("serve_bench", stamp, report + "\n")
    if args.keep_logs:
        print(f"server logs kept in {logs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
