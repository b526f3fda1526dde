"""Serving while a fine-tuning job trains: c=1 tokens/s idle and during training, and the training's pace.

    python bench/fine_tuning_load.py [--home DIR] [--requests 8] [--max-tokens 64]

Starts `hotlora serve` on a loopback port (the embedded base, 4-bit; a temporary home sharing --home's
converted model and kernels), then runs the same one-at-a-time requests (greedy, `ignore_eos`, exactly
--max-tokens tokens each) three times:

1. idle: no job;
2. while a job trains (`POST /v1/fine_tuning/jobs` on 64 Pig Latin rows, steps until cancelled), with the
   server's defaults: the training process at SCHED_IDLE with --fine-tuning-threads (default half the cores);
3. nothing again, once the job is cancelled.

Reported: tokens/s of each phase, the job's optimizer steps per minute with and without requests beside
it (its metrics events), and the CPU that processes other than the server and its trainer took meanwhile
(from /proc: on a shared machine, what makes a phase's figure unreliable). The markdown goes to stdout, bench/results/fine_tuning_load-<UTC time>.md
and bench/results/fine_tuning_load-latest.md.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from _common import REPO, machine_header, publish

from hotlora_trainer.piglatin import split_sentences, to_pig_latin

from support.live_server import API_KEY, BASE_ID, serving

ENDLESS = {"max_steps": 100000, "logging_steps": 1, "max_length": 96}


def tokens_per_second(http: httpx.Client, requests: int, max_tokens: int) -> float:
    """Completion tokens over wall time of `requests` sequential chats (c=1)."""
    tokens, started = 0, time.monotonic()
    for i in range(requests):
        body = {
            "model": BASE_ID,
            "messages": [{"role": "user", "content": f"Tell me a story about the number {i}."}],
            "max_tokens": max_tokens,
            "temperature": 0,
            "ignore_eos": True,
        }
        answer = http.post("/v1/chat/completions", json=body)
        answer.raise_for_status()
        tokens += answer.json()["usage"]["completion_tokens"]
    return tokens / (time.monotonic() - started)


def cpu_seconds(root: int) -> tuple[float, float]:
    """(CPU seconds the whole machine has been busy, those of process `root` and its descendants now alive),
    from /proc: the difference over a phase tells how much CPU other work took meanwhile."""
    tick = os.sysconf("SC_CLK_TCK")
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:9]]
    busy = (sum(fields) - fields[3] - fields[4]) / tick  # all but idle and iowait
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        after = stat.rsplit(")", 1)[1].split()  # state ppid ... utime(12) stime(13)
        parents[int(entry)], times[int(entry)] = int(after[1]), (int(after[11]) + int(after[12])) / tick
    tree, grew = {root}, True
    while grew:
        more = {pid for pid, ppid in parents.items() if ppid in tree} - tree
        grew, tree = bool(more), tree | more
    return busy, sum(times.get(pid, 0.0) for pid in tree)


def measured(root: int, run: Any) -> tuple[Any, float]:
    """`run()`'s result and the CPU seconds per second other processes than `root`'s tree took meanwhile."""
    busy0, ours0, started = *cpu_seconds(root), time.monotonic()
    result = run()
    busy1, ours1 = cpu_seconds(root)
    return result, ((busy1 - busy0) - (ours1 - ours0)) / (time.monotonic() - started)


def steps(http: httpx.Client, job_id: str) -> tuple[int, float]:
    """The job's latest step, and now."""
    events = http.get(f"/v1/fine_tuning/jobs/{job_id}/events", params={"limit": 5}).json()["data"]
    return max((e["data"]["step"] for e in events if e["type"] == "metrics"), default=0), time.monotonic()


def pace(before: tuple[int, float], after: tuple[int, float]) -> float:
    return (after[0] - before[0]) / (after[1] - before[1]) * 60


def start_job(http: httpx.Client) -> str:
    train, _ = split_sentences()
    rows = [
        {
            "messages": [
                {"role": "user", "content": s.text},
                {"role": "assistant", "content": to_pig_latin(s.text)},
            ]
        }
        for s in train[:64]
    ]
    content = "".join(json.dumps(r) + "\n" for r in rows).encode()
    file = http.post("/v1/files", files={"file": ("pig.jsonl", content)}, data={"purpose": "fine-tune"})
    file.raise_for_status()
    body = {"model": BASE_ID, "training_file": file.json()["id"], "hotlora": ENDLESS}
    job = http.post("/v1/fine_tuning/jobs", json=body)
    job.raise_for_status()
    job_id: str = job.json()["id"]
    deadline = time.monotonic() + 600
    while steps(http, job_id)[0] < 2:  # loaded and training
        assert time.monotonic() < deadline, http.get(f"/v1/fine_tuning/jobs/{job_id}").text
        time.sleep(1)
    return job_id


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--home",
        type=Path,
        default=REPO / ".pytest_cache" / "hotlora-home",
        help="hotlora home with the converted base (default .pytest_cache/hotlora-home)",
    )
    parser.add_argument("--requests", type=int, default=8, help="sequential requests per phase")
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens each request generates")
    parser.add_argument("--note", default="", help="a line for the report")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="fine-tuning-load-") as tmp:
        home = Path(tmp)
        for shared in ("models", "kernels"):
            if (args.home / shared).is_dir():
                (home / shared).symlink_to(args.home.resolve() / shared)
        with (
            serving(["--home", str(home), "--api-key", API_KEY], home / "server.log") as server,
            httpx.Client(
                base_url=server.base_url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=600
            ) as http,
        ):
            tokens_per_second(http, 2, 8)  # warm up
            pid = server.process.pid

            def phase(name: str) -> None:
                figures[name], figures[f"{name}_other"] = measured(
                    pid, lambda: tokens_per_second(http, args.requests, args.max_tokens)
                )

            phase("idle")
            job_id = start_job(http)
            alone = steps(http, job_id)
            _, figures["alone_other"] = measured(pid, lambda: time.sleep(30))
            beside = steps(http, job_id)
            figures["steps_alone"] = pace(alone, beside)
            phase("training")
            figures["steps_beside"] = pace(beside, steps(http, job_id))
            http.post(f"/v1/fine_tuning/jobs/{job_id}/cancel").raise_for_status()
            time.sleep(10)  # the training process stops
            phase("after")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    report = [
        *machine_header("fine_tuning_load", stamp),
        f"- load average (1, 5, 15 min) at the end: {load}; training threads: the server's default "
        f"(half of {os.cpu_count()} cores), SCHED_IDLE",
        *([f"- {args.note}"] if args.note else []),
        "",
        f"c=1, {args.requests} greedy requests of {args.max_tokens} tokens per phase:",
        "",
        "| phase | tokens/s | job's steps/min | other processes' CPU (cores) |",
        "|---|---|---|---|",
        f"| idle | {figures['idle']:.1f} | | {figures['idle_other']:.2f} |",
        f"| a job training, no requests | | {figures['steps_alone']:.1f} | {figures['alone_other']:.2f} |",
        f"| a job training, requests | {figures['training']:.1f} | {figures['steps_beside']:.1f} "
        f"| {figures['training_other']:.2f} |",
        f"| job cancelled | {figures['after']:.1f} | | {figures['after_other']:.2f} |",
    ]
    publish("fine_tuning_load", stamp, "\n".join(report) + "\n")


if __name__ == "__main__":
    main()
