"""Soak: many streamed chats at once over base, adapters and blends while adapters come and go.

    python bench/soak.py [--quick] [--requests 400] [--concurrency 32] [--max-tokens 32] [--churn-every 3]
                         [--request-timeout 120] [--deadline 1800] [--max-rss-growth 10]
                         [--max-loaded-adapters 16] [--home DIR] [--keep-logs] [--no-hostile]

Starts `hotlora serve` on a loopback port with 6 random r=16 adapters in a temporary store: 4 steady ones
and 2 churn ones. --requests streamed chats go to it, --concurrency at a time, spread in turn over the base,
the 4 steady adapters, 4 blends of them (`steady0*0.5+steady1*0.5`, ...) and the 2 churn adapters. The
server keeps up to --max-loaded-adapters resident: the default 16 holds all 10, so the soak measures the
churn below; 8 (the server's default) adds LRU eviction under load. Even requests are greedy, odd ones sampled with a seed. Meanwhile, every --churn-every seconds, one
churn adapter in turn is unloaded (`DELETE /v1/adapters/{name}`) or loaded again (`POST /v1/adapters`).

Every response is checked against the wire contract: a 200 is an SSE stream of chat.completion.chunk objects
for the requested model (or ends in an in-band error object), one finish_reason, a usage chunk with
1 <= completion_tokens <= --max-tokens (and == it for `length`), never fewer tokens than content chunks, then
`data: [DONE]`; any other status carries an OpenAI error object (429/503 also `Retry-After`). A request
without `[DONE]` within --request-timeout is hung. A churn adapter's 404 (or in-band error) while it is
disabled is the expected, clean failure; on any other model an error is unexpected.

Beside this normal load runs a hostile mix (bench/soak_hostile.py; --no-hostile leaves it out): invalid
bodies, each to be refused with a 4xx OpenAI error within a second; tiny temperatures and a 1e100 blend
weight, to be served (200) or refused (400); import -> chat -> purge cycles of a fresh adapter folder from the
server's --allow-adapter-dir; and a /health probe every 100 ms that must never take more than a second.
Each class is counted and timed on its own; the zero-5xx, -hung and -malformed checks count its requests
too, and the normal load must still see no error but the churn adapters' 404s (or a 429).

The server's resident memory (VmRSS) is sampled once the warm-up (the first 10% of requests, at least two
per model) has finished, every second after, and at the end: flat means end/warm-up growth below
--max-rss-growth percent; the report also divides that growth by the import/purge cycles run meanwhile.
After the load, `/metrics` must show `hotlora_requests_running` and `hotlora_requests_waiting` back at 0
(n/a where it answers 404) and `/health` 200. The markdown goes to stdout, bench/results/soak-<UTC time>.md
and bench/results/soak-latest.md; the exit code is 1 if a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import soak_hostile as hostile
from _common import REPO, machine_header, model_folder, percentile, publish, random_adapters, register_all
from soak_load import CHURN, GAUGES, STEADY, Run, soak
from soak_wire import Outcome

from support.live_server import serving

MIB = 2**20


def expected(outcome: Outcome) -> bool:
    """A clean failure the soak provokes: a churn adapter while disabled, or backpressure."""
    if outcome.kind == "ok":
        return True
    if outcome.kind not in ("error", "in-band") or outcome.server_error:
        return False
    return outcome.status == 429 or (
        outcome.model in CHURN and (outcome.status == 404 or outcome.kind == "in-band")
    )


def seconds_pair(values: list[float]) -> str:
    return f"{percentile(values, 50):.2f} / {percentile(values, 95):.2f} s"


def mib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / MIB:.0f}"


def summary_table(run: Run, args: argparse.Namespace) -> list[str]:
    done = run.outcomes
    ok = [o for o in done if o.kind == "ok"]
    statuses = Counter(o.status for o in done if o.kind == "error")
    churn_404 = sum(o.status == 404 and o.model in CHURN for o in done if o.kind == "error")
    in_band = [o for o in done if o.kind == "in-band"]
    tokens = sum(o.tokens for o in ok)
    calls = Counter(c.action for c in run.churn)
    slowest = max((c.seconds for c in run.churn), default=0.0)
    growth = run.rss.growth()
    gauges = (
        "n/a (no /metrics)"
        if run.gauges is None
        else " / ".join(f"{run.gauges[name]:g}" if name in run.gauges else "missing" for name in GAUGES)
    )
    rows = [
        ("requests sent / planned", f"{len(done)} / {run.planned}"),
        ("concurrency; max tokens per request", f"{args.concurrency}; {args.max_tokens}"),
        ("duration", f"{run.wall:.1f} s"),
        ("throughput", f"{len(done) / run.wall:.2f} req/s, {tokens / run.wall:.1f} output tok/s"),
        ("200, complete and well-formed", str(len(ok))),
        ("404, churn adapter disabled (expected)", str(churn_404)),
        ("404, other", str(statuses[404] - churn_404)),
        ("429", str(statuses[429])),
        (
            "other 4xx",
            str(sum(n for s, n in statuses.items() if s and 400 <= s < 500 and s not in (404, 429))),
        ),
        ("5xx (also in-band server_error)", str(sum(o.server_error for o in done))),
        (
            "in-band errors: churn adapters / others",
            f"{sum(o.model in CHURN for o in in_band)} / {sum(o.model not in CHURN for o in in_band)}",
        ),
        (f"hung (no [DONE] within {args.request_timeout:g} s)", str(sum(o.kind == "hung" for o in done))),
        ("malformed", str(sum(o.kind == "malformed" for o in done))),
        (
            "latency p50 / p95 (sent to [DONE], 200s)",
            seconds_pair([o.latency for o in ok if o.latency is not None]),
        ),
        ("TTFT p50 / p95 (200s)", seconds_pair([o.ttft for o in ok if o.ttft is not None])),
        (
            "adapter churn",
            f"{calls['unload']} unloads, {calls['load']} loads, "
            f"{sum(c.status != 200 for c in run.churn)} failed, slowest {slowest:.2f} s",
        ),
        (
            "server RSS after warm-up / end / max (MiB)",
            f"{mib(run.rss.warm)} / {mib(run.rss.end)} / {mib(max(run.rss.samples, default=None))}"
            + ("" if growth is None else f" ({growth:+.1f}%)"),
        ),
        ("gauges running / waiting after the load", gauges),
        ("/health after the load", "server exited" if run.exit_code is not None else str(run.health)),
    ]
    return ["| figure | value |", "|---|--:|", *(f"| {name} | {value} |" for name, value in rows)]


def hostile_section(run: Run) -> list[str]:
    """The hostile mix's table, after the normal load's (nothing with --no-hostile)."""
    if run.hostile is None:
        return []
    growth = run.hostile.growth_per_cycle(run.rss.warm_at, run.rss.warm, run.rss.end)
    return ["", *hostile.table(run.hostile, growth)]


def checks(run: Run, args: argparse.Namespace) -> list[tuple[str, bool | None]]:
    """Each soak criterion and whether this run meets it (None: cannot be judged here)."""
    done, every = run.outcomes, run.every_outcome()
    scope = " (normal load and hostile mix)" if run.hostile else ""
    growth = run.rss.growth()
    return [
        (f"zero 5xx (also in-band server_error){scope}", not any(o.server_error for o in every)),
        (f"zero hung requests{scope}", not any(o.kind == "hung" for o in every)),
        (f"zero malformed responses{scope}", not any(o.kind == "malformed" for o in every)),
        (
            "no errors but a disabled churn adapter's or a 429",
            not any(o.kind in ("error", "in-band") and not expected(o) for o in done),
        ),
        (
            "adapters unloaded and loaded during the load, every call 200",
            bool(run.churn) and all(c.status == 200 for c in run.churn),
        ),
        (
            f"server RSS flat after warm-up (growth < {args.max_rss_growth:g}%)",
            growth is not None and growth < args.max_rss_growth,
        ),
        (
            "running and waiting gauges back to 0",
            None if run.gauges is None else all(run.gauges.get(name) == 0 for name in GAUGES),
        ),
        ("server still up, /health 200", run.exit_code is None and run.health == 200),
        ("every request sent before the deadline", len(done) == run.planned),
        *(hostile.checks(run.hostile) if run.hostile else []),
    ]


def problems(run: Run) -> list[str]:
    """The distinct failures that were not expected, most frequent first: the first 10 of the normal load, then
    the first 10 of the hostile mix (so that a load that fails everywhere does not hide them)."""
    seen = Counter(
        f"{o.model}: HTTP {o.status}, {o.kind}: {o.detail}" for o in run.outcomes if not expected(o)
    )
    mixed = hostile.problems(run.hostile) if run.hostile else Counter()
    return [f"- {text} (x{n})" for text, n in seen.most_common(10)] + [
        f"- hostile mix, {text} (x{n})" for text, n in mixed.most_common(10)
    ]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="48 requests at concurrency 16, 10 minutes at most"
    )
    parser.add_argument("--requests", type=int, help="streamed chats to send (default 400; 48 with --quick)")
    parser.add_argument(
        "--concurrency", type=int, help="requests in flight at once (default 32; 16 with --quick)"
    )
    parser.add_argument("--max-tokens", type=int, default=32, help="max_tokens of every request (default 32)")
    parser.add_argument(
        "--churn-every", type=float, default=3.0, help="seconds between two adapter unloads/loads (default 3)"
    )
    parser.add_argument(
        "--request-timeout",
        type=float,
        default=120.0,
        help="seconds before a request without [DONE] counts as hung (default 120)",
    )
    parser.add_argument(
        "--deadline",
        type=float,
        help="seconds from the start after which no new request is sent (default 1800; 600 with "
        "--quick); the run then ends within --request-timeout more",
    )
    parser.add_argument(
        "--max-rss-growth",
        type=float,
        default=10.0,
        help="percent of RSS growth from warm-up to end still counted as flat (default 10)",
    )
    parser.add_argument(
        "--max-loaded-adapters",
        type=int,
        default=16,
        help="the server's resident adapters and blends (default 16: all of the soak's)",
    )
    parser.add_argument(
        "--home",
        type=Path,
        default=REPO / ".pytest_cache" / "hotlora-home",
        help="hotlora home with the converted base (default .pytest_cache/hotlora-home)",
    )
    parser.add_argument(
        "--keep-logs", action="store_true", help="keep the server's log (its folder is printed)"
    )
    parser.add_argument(
        "--no-hostile",
        action="store_true",
        help="the normal load and its churn only: no invalid bodies, sampling extremes, import/purge "
        "cycles or /health probes beside it",
    )
    args = parser.parse_args()
    args.requests = args.requests or (48 if args.quick else 400)
    args.concurrency = args.concurrency or (16 if args.quick else 32)
    args.deadline = args.deadline or (600.0 if args.quick else 1800.0)
    return args


def main() -> int:
    args = parse_args()
    deadline = time.monotonic() + args.deadline
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    home = args.home.resolve()
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        root = Path(tmp)
        logs = Path(tempfile.mkdtemp(prefix="soak-logs-")) if args.keep_logs else root
        imported = () if args.no_hostile else (hostile.IMPORTED,)  # the source of the import/purge cycles
        random_adapters(model_folder(home), root / "library", STEADY + CHURN + imported)
        register_all(root / "store", root / "library", STEADY + CHURN)
        server_args = [
            "--home",
            str(home),
            "--adapters-dir",
            str(root / "store"),
            "--log-level",
            "info",
            "--max-loaded-adapters",
            str(args.max_loaded_adapters),
        ]
        if imported:
            (root / "imports").mkdir()
            server_args += ["--allow-adapter-dir", str(root / "imports")]
        with serving(server_args, logs / "hotlora.log") as server:
            run = asyncio.run(soak(server, args, deadline, root))
        log_tail = server.output().splitlines()[-40:]
    verdicts = checks(run, args)
    lines = ["| check | result |", "|---|---|"]
    lines += [f"| {name} | {'n/a' if ok is None else 'PASS' if ok else 'FAIL'} |" for name, ok in verdicts]
    failures = problems(run)
    report = [
        *machine_header("soak", stamp),
        "",
        *summary_table(run, args),
        *hostile_section(run),
        "",
        *lines,
    ]
    report += ["", "Unexpected failures:", *failures] if failures else []
    publish("soak", stamp, "\n".join(report) + "\n")
    passed = all(ok is not False for _, ok in verdicts)
    if not passed:
        print("The server log's last lines:", *log_tail, sep="\n", file=sys.stderr)
    if args.keep_logs:
        print(f"server log kept in {logs}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
