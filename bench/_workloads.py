"""serve_bench's systems and workloads: what is asked of each server, and what a workload's samples come to.

A workload is one concurrency over a list of models; its summary has the throughput, TTFT, ITL and TPOT
the report's tables show, and for hotlora the adapter evictions and loads counted while it ran.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import httpx
from _common import percentile
from _streams import Request, Sample, TokenCount, run_clients

SYSTEMS = {
    "hotlora": "hotlora",
    "hotlora-slots": "hotlora, default 8 adapter slots",
    "hotlora-other": "hotlora, other 4-bit path",
    "hotlora-variant": "hotlora, --no-batch-invariant",
    "hotlora-structured": "hotlora, response_format",
    "hotlora-loads": "hotlora, a stream beside loads",
    "transformers": "transformers serve",
    "llamacpp": "llama.cpp server (same GGUF, Q4_1; one request at a time)",
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
class Skipped:
    system: str
    reason: str


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


def metric(base_url: str, name: str) -> float:
    """One series without labels from a hotlora server's /metrics."""
    for line in httpx.get(f"{base_url}/metrics", timeout=10).text.splitlines():
        series, _, value = line.partition(" ")
        if series == name:
            return float(value)
    raise RuntimeError(f"no {name} in {base_url}/metrics")


def adapter_churn(base_url: str) -> tuple[int, int]:
    """hotlora's adapter evictions and loads (blends built included) so far, from its /metrics."""
    return int(metric(base_url, "hotlora_adapter_evictions_total")), int(
        metric(base_url, "hotlora_adapter_loads_total")
    )


def bench_server(
    system: str,
    base_url: str,
    workloads: list[Workload],
    rounds: int,
    tokens: int,
    churn: bool = False,
    count: TokenCount | None = None,
) -> list[Summary]:
    """Each workload after a warm-up of every model; `churn`: count hotlora's adapter evictions and loads;
    `count`: a server's completion tokens where its streams carry no usage (see `stream_chat`)."""
    models = dict.fromkeys(m for w in workloads for m in w.models)
    warm_up = [(m, story_prompt(0)) for m in models]
    asyncio.run(run_clients(base_url, warm_up, 1, 2, count=count))
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
                base_url,
                workload.requests(rounds),
                workload.concurrency,
                tokens,
                workload.response_format,
                count,
            )
        )
        after = adapter_churn(base_url) if churn else None
        counted = (after[0] - before[0], after[1] - before[1]) if before and after else None
        summaries.append(summarize(system, workload, samples, wall, counted))
    return summaries
