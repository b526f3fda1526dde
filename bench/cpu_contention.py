"""Serving beside other programs: decode threads chosen while serving against all cores always.

    python bench/cpu_contention.py [--tokens 128] [--rounds 1] [--home DIR]

Starts two `hotlora serve` on loopback ports, the same embedded 4-bit base: one as it serves by default
(decode threads chosen by timing steps), one with `--cpu-decode-threads` fixed at torch's thread count
(what every step used before). Then, for each condition, runs the c=1 and c=16 base workloads of
serve_bench (greedy streamed stories, capped at --tokens) on one server, then the other:

- quiet: nothing else started;
- one busy process: a Python busy loop at the server's priority (a second program at work);
- one busy process at nice 10 (a background job);
- a busy process per core at nice 19 (a background build, say).

Reported: output tokens/s of each, their ratio, and the decode threads the default server used at the end
of the workload (its `hotlora_decode_threads` gauge). Wall time and chosen threads move with whatever else
the machine runs; read the ratios of one run. The markdown goes to stdout,
bench/results/cpu_contention-<UTC time>.md and bench/results/cpu_contention-latest.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import torch
from _common import machine_header, publish
from _workloads import CONCURRENCY, Summary, Workload, bench_server, metric

from support.live_server import BASE_ID, serving

CONDITIONS = {  # label: (busy processes, their nice increment)
    "quiet": (0, 0),
    "one busy process": (1, 0),
    "one busy process, nice 10": (1, 10),
    "a busy process per core, nice 19": (os.cpu_count() or 1, 19),
}
SERVERS = ("chosen (default)", "all cores")


@contextmanager
def busy(count: int, niceness: int) -> Iterator[None]:
    """`count` Python busy loops at `niceness` for the duration of the block."""
    procs = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"], preexec_fn=lambda: os.nice(niceness))
        for _ in range(count)
    ]
    try:
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=int, default=128, help="max tokens per request (default 128)")
    parser.add_argument("--rounds", type=int, default=1, help="requests per workload: max(c, 4) x rounds")
    parser.add_argument("--home", type=Path, help="hotlora home with the converted base (default: temporary)")
    args = parser.parse_args()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    most = torch.get_num_threads()
    workloads = [Workload("base", 1, (BASE_ID,)), Workload("base", CONCURRENCY, (BASE_ID,))]
    rows: list[tuple[str, int, float, float, int]] = []
    with tempfile.TemporaryDirectory(prefix="cpu_contention-") as tmp:
        home = str((args.home or Path(tmp) / "home").resolve())
        flags = ["--home", home, "--adapters-dir", f"{tmp}/store", "--log-level", "warning"]
        logs = Path(tmp)
        with (
            serving(flags, logs / "chosen.log") as chosen,
            serving([*flags, "--cpu-decode-threads", str(most)], logs / "fixed.log") as fixed,
        ):
            for label, (count, niceness) in CONDITIONS.items():
                with busy(count, niceness):
                    for workload in workloads:
                        runs: dict[str, Summary] = {}
                        for name, server in zip(SERVERS, (chosen, fixed), strict=True):
                            runs[name] = bench_server(
                                name, server.base_url, [workload], args.rounds, args.tokens
                            )[0]
                        rows.append(
                            (
                                label,
                                workload.concurrency,
                                runs[SERVERS[0]].tokens_per_s,
                                runs[SERVERS[1]].tokens_per_s,
                                int(metric(chosen.base_url, "hotlora_decode_threads")),
                            )
                        )
    table = [
        f"| condition | c | {SERVERS[0]} tok/s | {SERVERS[1]} ({most} threads) tok/s | ratio | threads chosen |",
        "|---|--:|--:|--:|--:|--:|",
        *(f"| {label} | {c} | {a:.1f} | {b:.1f} | {a / b:.2f}x | {t} |" for label, c, a, b, t in rows),
    ]
    publish("cpu_contention", stamp, "\n".join([*machine_header("cpu_contention", stamp), "", *table]) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
