"""Adapter churn: import -> one chat -> purge, many times under one name; does the server's memory stay flat?

    python bench/churn.py [--cycles 100] [--warmup 10] [--rank 16] [--max-growth-mb 50] [--home DIR] [--note TEXT]

Starts `hotlora serve` (the embedded SmolLM2, 4-bit) on a loopback port with an empty store and one allowed
import folder holding a random all-linear PEFT adapter of rank --rank (r=16: about 20 MB of float32 weights).
Each cycle imports it as `churn` (`POST /v1/adapters` with its path), asks it for a 4-token chat, and deletes
it with `DELETE /v1/adapters/churn?purge=true`; every call must answer 200. The server's resident memory
(VmRSS) is read after each cycle. The growth is the last reading minus the one after --warmup cycles (the
first ones fill allocator pools and caches that are then reused); the check fails when it reaches
--max-growth-mb. --note adds a line to the report (e.g. which server code ran: the server is the `hotlora`
of this environment, which follows PYTHONPATH). The markdown goes to stdout, bench/results/churn-<UTC time>.md and churn-latest.md; the exit
code is 1 if a check fails.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
from _common import REPO, machine_header, model_folder, publish

from support.live_server import BASE_ID, save_random_lora, serving

NAME = "churn"
MIB = 2**20


def rss_bytes(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return next(int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmRSS:"))


def cycle(http: httpx.Client, source: Path) -> list[float]:
    """One import -> chat -> purge; the seconds each call took. Raises on any answer but 200."""
    seconds = []
    for method, url, body in (
        ("POST", "/v1/adapters", {"name": NAME, "path": str(source)}),
        (
            "POST",
            "/v1/chat/completions",
            {
                "model": NAME,
                "messages": [{"role": "user", "content": "Hi"}],
                "max_tokens": 4,
                "temperature": 0,
            },
        ),
        ("DELETE", f"/v1/adapters/{NAME}?purge=true", None),
    ):
        started = time.perf_counter()
        response = http.request(method, url, json=body)
        seconds.append(time.perf_counter() - started)
        if response.status_code != 200:
            raise RuntimeError(f"{method} {url} answered {response.status_code}: {response.text}")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cycles", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--max-growth-mb", type=float, default=50.0)
    parser.add_argument("--home", type=Path, default=REPO / ".pytest_cache" / "hotlora-home")
    parser.add_argument("--note", default="")
    args = parser.parse_args()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")

    with tempfile.TemporaryDirectory(prefix="hotlora-churn-") as tmp:
        root = Path(tmp)
        allowed, store = root / "allowed", root / "store"
        allowed.mkdir()
        store.mkdir()
        source = allowed / "source"
        save_random_lora(model_folder(args.home), source, seed=0, r=args.rank, strength=0.25)
        size = (source / "adapter_model.safetensors").stat().st_size
        args_ = ["--home", str(args.home), "--adapters-dir", str(store), "--allow-adapter-dir", str(allowed)]
        with (
            serving(args_, root / "server.log") as server,
            httpx.Client(base_url=server.base_url, timeout=120) as http,
        ):
            pid = server.process.pid
            readings = [rss_bytes(pid)]
            started = time.perf_counter()
            for i in range(args.cycles):
                seconds = cycle(http, source)
                readings.append(rss_bytes(pid))
                times = " / ".join(f"{s:.2f}" for s in seconds)
                print(
                    f"cycle {i + 1}: RSS {readings[-1] / MIB:.0f} MiB, import / chat / purge {times} s",
                    file=sys.stderr,
                    flush=True,
                )
            wall = time.perf_counter() - started

    warm = readings[min(args.warmup, args.cycles)]
    growth = (readings[-1] - warm) / MIB
    measured = args.cycles - args.warmup
    per_cycle = growth / measured if measured > 0 else float("nan")
    passed = growth < args.max_growth_mb
    lines = machine_header("churn", stamp) + [
        f"- base: {BASE_ID} (4-bit); adapter: random r={args.rank} all-linear, {size / MIB:.1f} MiB of weights",
        *([f"- note: {args.note}"] if args.note else []),
        "",
        "| cycles | wall | RSS at start | RSS after warm-up | RSS at end | growth after warm-up | per cycle | check |",
        "|---|---|---|---|---|---|---|---|",
        f"| {args.cycles} (warm-up {args.warmup}) | {wall:.0f} s ({wall / args.cycles:.2f} s/cycle) "
        f"| {readings[0] / MIB:.0f} MiB | {warm / MIB:.0f} MiB | {readings[-1] / MIB:.0f} MiB "
        f"| {growth:+.1f} MiB | {per_cycle:+.2f} MiB | {'pass' if passed else 'FAIL'} (< {args.max_growth_mb:g} MiB) |",
        "",
        "RSS after every 10th cycle (MiB): "
        + ", ".join(f"{readings[i] / MIB:.0f}" for i in range(0, len(readings), 10)),
    ]
    publish("churn", stamp, "\n".join(lines) + "\n")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
