"""Event-loop stalls: how long costly single requests hold up `/health` and a running stream.

    python bench/loop_stall.py [--home DIR] [--adapters 24] [--big-rank 128] [--keep-logs]

Starts `hotlora serve` on a loopback port (the embedded base, 4-bit) with --adapters copies of one random
r=16 adapter in a temporary store, then measures two things:

1. A body whose `messages` are 16,000 integers (85 KB): the time to its 400, and the slowest
   `/health` answer while it is pending (`/health` asked every 50 ms on another connection).
2. A streamed chat (greedy, 48 tokens) and, once it has streamed 10 chunks, a burst of costly requests
   at once: a completion with a 4 MiB prompt, 5 `GET /v1/models`, 5 chats for an unknown model, a chat
   whose `model` is an 8 MiB blend string, and one `GET /v1/models` that first meets a new
   r=--big-rank adapter (registered just before the stream starts, so its weights have not been read
   yet). Reported: the stream's gaps between two chunks (median and largest) before the burst and after
   it started, the slowest `/health` during the burst, and each kind's statuses and slowest answer.

Request bodies are encoded before they are timed, and the machine's load average is printed with the
figures: gaps on a shared machine say as much about its other tenants as about the server (with more
busy threads than cores, OpenMP's waiting threads stall a decode step for seconds; `OMP_NUM_THREADS=1`,
passed on to the server, keeps that out of the figures).

The markdown goes to stdout, bench/results/loop_stall-<UTC time>.md and bench/results/loop_stall-latest.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path

import httpx
from _common import REPO, machine_header, model_folder, publish, save_random_lora

from hotlora_adapters import AdapterStore

from support.live_server import BASE_ID, RunningServer, serving

MIB = 2**20
HEALTH_EVERY_S = 0.05
STREAM_TOKENS = 48


@dataclass
class HealthWatch:
    """`/health` asked every 50 ms on its own connection; the slowest answer per window."""

    client: httpx.AsyncClient
    latencies: list[tuple[float, float]] = field(default_factory=list)  # (asked at, seconds)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        while not self.stopping.is_set():
            started = time.perf_counter()
            await self.client.get("/health")
            self.latencies.append((started, time.perf_counter() - started))
            await asyncio.sleep(HEALTH_EVERY_S)

    async def stop(self, task: asyncio.Task[None]) -> None:
        """Stop after the `/health` in flight is answered: a stalled server answers it last."""
        self.stopping.set()
        await task

    def slowest(self, since: float, until: float) -> float:
        """The slowest answer to a `/health` pending at some time between `since` and `until` (widened by
        one polling interval each side, so that a short window still holds a poll)."""
        since, until = since - HEALTH_EVERY_S, until + HEALTH_EVERY_S
        return max((s for at, s in self.latencies if at <= until and at + s >= since), default=float("nan"))


async def timed_request(
    client: httpx.AsyncClient, method: str, url: str, **kwargs: object
) -> tuple[int, float]:
    started = time.perf_counter()
    response = await client.request(method, url, **kwargs)  # type: ignore[arg-type]
    return response.status_code, time.perf_counter() - started


def json_body(**fields: object) -> dict[str, object]:
    """Request arguments with the body encoded beforehand: the client's loop must not stall either."""
    return {"content": json.dumps(fields).encode(), "headers": {"content-type": "application/json"}}


async def integers_body(server: RunningServer) -> list[str]:
    body = json_body(model=BASE_ID, messages=list(range(16_000)))
    async with (
        httpx.AsyncClient(base_url=server.base_url, timeout=300) as client,
        httpx.AsyncClient(base_url=server.base_url, timeout=300) as health_client,
    ):
        watch = HealthWatch(health_client)
        poller = asyncio.create_task(watch.run())
        await asyncio.sleep(0.3)
        started = time.perf_counter()
        status, seconds = await timed_request(client, "POST", "/v1/chat/completions", **body)
        await watch.stop(poller)
    return [
        f"| 16,000 integers as `messages` | {status} in {seconds:.3f} s | "
        f"{watch.slowest(started, started + seconds) * 1000:.0f} ms |"
    ]


async def stream_gaps(client: httpx.AsyncClient, arrivals: list[float], tenth: asyncio.Event) -> None:
    body = {
        "model": BASE_ID,
        "messages": [{"role": "user", "content": "Tell me a long story about the sea."}],
        "max_tokens": STREAM_TOKENS,
        "temperature": 0,
        "stream": True,
    }
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                arrivals.append(time.perf_counter())
                if len(arrivals) == 10:
                    tenth.set()
    tenth.set()


def gaps(seconds: list[float]) -> str:
    if not seconds:
        return "none"
    return f"{statistics.median(seconds) * 1000:.0f} ms, {max(seconds) * 1000:.0f} ms"


def burst_requests() -> list[tuple[str, str, str, dict[str, object]]]:
    prompt = "word " * (4 * MIB // 5)
    blend = "a*1+" * (8 * MIB // 4)
    chat = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
    kinds: list[tuple[str, str, str, dict[str, object]]] = []
    kinds += [
        ("4 MiB prompt", "POST", "/v1/completions", json_body(model=BASE_ID, prompt=prompt, max_tokens=1))
    ]
    kinds += [("GET /v1/models", "GET", "/v1/models", {})] * 5
    kinds += [
        ("unknown model", "POST", "/v1/chat/completions", json_body(model="no-such-adapter", **chat))
    ] * 5
    kinds += [("8 MiB blend string", "POST", "/v1/chat/completions", json_body(model=blend, **chat))]
    return kinds


async def burst(server: RunningServer) -> list[str]:
    limits = httpx.Limits(max_connections=64)
    async with (
        httpx.AsyncClient(base_url=server.base_url, timeout=600, limits=limits) as client,
        httpx.AsyncClient(base_url=server.base_url, timeout=600) as health_client,
    ):
        watch = HealthWatch(health_client)
        poller = asyncio.create_task(watch.run())
        arrivals: list[float] = []
        tenth = asyncio.Event()
        stream = asyncio.create_task(stream_gaps(client, arrivals, tenth))
        await tenth.wait()
        started = time.perf_counter()
        requests = [timed_request(client, "GET", "/v1/models")]  # the first to meet the new adapter
        requests += [timed_request(client, method, url, **kw) for _, method, url, kw in burst_requests()]
        results = await asyncio.gather(*requests)
        ended = time.perf_counter()
        await stream
        await watch.stop(poller)
    labels = ["first `GET /v1/models` with a new adapter"] + [label for label, *_ in burst_requests()]
    calm = [b - a for a, b in pairwise(arrivals[1:10])]
    during = [b - a for a, b in pairwise(arrivals) if b > started]
    lines = [
        "| what | result |",
        "|---|---|",
        f"| stream: chunks | {len(arrivals)} |",
        f"| stream: gaps before the burst (median, largest) | {gaps(calm)} |",
        f"| stream: gaps once the burst started (median, largest) | {gaps(during)} |",
        f"| burst: all answered after | {ended - started:.2f} s |",
        f"| `/health`: slowest during the burst | {watch.slowest(started, ended) * 1000:.0f} ms |",
    ]
    for label in dict.fromkeys(labels):
        mine = [r for lab, r in zip(labels, results, strict=True) if lab == label]
        statuses = ", ".join(sorted({str(s) for s, _ in mine}))
        lines.append(f"| {label} (x{len(mine)}) | HTTP {statuses}, slowest {max(t for _, t in mine):.3f} s |")
    return lines


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--adapters", type=int, default=24, help="copies of one r=16 adapter in the store")
    parser.add_argument("--big-rank", type=int, default=128, help="rank of the adapter registered mid-run")
    parser.add_argument(
        "--home",
        type=Path,
        default=REPO / ".pytest_cache" / "hotlora-home",
        help="hotlora home with the converted base (default .pytest_cache/hotlora-home)",
    )
    parser.add_argument(
        "--keep-logs", action="store_true", help="keep the server's log (its folder is printed)"
    )
    parser.add_argument("--note", default="", help="a line for the report, e.g. which server code ran")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    home = args.home.resolve()
    with tempfile.TemporaryDirectory(prefix="loop-stall-") as tmp:
        root = Path(tmp)
        logs = Path(tempfile.mkdtemp(prefix="loop-stall-logs-")) if args.keep_logs else root
        model_dir = model_folder(home)
        save_random_lora(model_dir, root / "library" / "small", r=16, strength=0.25)
        save_random_lora(model_dir, root / "library" / "big", r=args.big_rank, strength=0.25)
        store = AdapterStore(root / "store")
        for i in range(args.adapters):
            store.register(f"copy{i}", root / "library" / "small")
        with serving(
            ["--home", str(home), "--adapters-dir", str(store.root)], logs / "hotlora.log"
        ) as server:
            item1 = asyncio.run(integers_body(server))
            store.register("big", root / "library" / "big")
            item2 = asyncio.run(burst(server))
        shutil.rmtree(root / "library")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    report = [
        *machine_header("loop_stall", stamp),
        f"- load average (1, 5, 15 min) at the end: {load}; "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '(unset)')}",
        *([f"- {args.note}"] if args.note else []),
        "",
        "| body | answer | slowest `/health` meanwhile |",
        "|---|---|---|",
        *item1,
        "",
        *item2,
    ]
    publish("loop_stall", stamp, "\n".join(report) + "\n")
    if args.keep_logs:
        print(f"server log kept in {logs}")


if __name__ == "__main__":
    main()
