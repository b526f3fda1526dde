"""Serving throughput and latency: hotlora against `transformers serve` and a naive PEFT loop.

    python bench/serve_bench.py [--quick] [--tokens 64] [--rounds 3]
                                [--only hotlora,hotlora-slots,hotlora-other,hotlora-variant,hotlora-structured,
                                        hotlora-loads,transformers,llamacpp,naive]
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
- llamacpp: llama.cpp's server (llama-cpp-python's, built by `./scripts/dev.sh llamacpp` into its own
  .venv-llamacpp; skipped, saying so, without it) on the embedded base's own GGUF file, Q4_1 as shipped
  (hotlora serves the same weights as nf4), on as many threads as there are cores: c=1 and c=16 base. It
  serves one request at a time, so its c=16 queues;
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
import sys
import tempfile
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import httpx
from _baselines import Unavailable, bench_naive, bench_transformers
from _common import machine_header, model_folder, publish, random_adapters, register_all
from _llamacpp import bench_llamacpp
from _load_gaps import LoadGap, bench_loads, loads_table
from _serve_report import Row, results_table, targets_table, tpot_table
from _workloads import (
    ADAPTERS,
    BLENDS,
    CONCURRENCY,
    MANY_BLENDS,
    STORY_FORMAT,
    SYSTEMS,
    Skipped,
    Summary,
    Workload,
    bench_server,
)

from support.live_server import BASE_ID, serving


def served_kernel(base_url: str) -> str:
    """How the server runs its base's layers (its /v1/models), for the report."""
    base = httpx.get(f"{base_url}/v1/models", timeout=10).json()["data"][0]
    return f"{base.get('kernel')}; batch invariant: {base.get('batch_invariant')}"


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
        default=800,
        help="hotlora-loads: tokens of the stream that runs beside the loads (default 800)",
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
    baselines = {
        "transformers": partial(bench_transformers, model_dir, logs, args.rounds, args.tokens),
        "llamacpp": partial(bench_llamacpp, logs, args.rounds, args.tokens, kernels),
    }
    for system, bench in baselines.items():
        if system in args.only:
            try:
                rows += bench()
            except Unavailable as exc:
                rows.append(Skipped(system, str(exc)))
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
