"""Prometheus metrics: one registry per app, HTTP series observed here, engine series read at scrape time.

The engine keeps plain counters (it must not pay for metrics in its loop); `EngineCollector` turns an
`EngineStats` snapshot into Prometheus families when `/metrics` is scraped.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Callable, Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from .types import ChoiceDelta, EngineStats, GenerationEvent, Usage

_GAUGES = {
    "requests_running": "Requests with rows in the running batch.",
    "requests_waiting": "Requests queued for the running batch (or prefilling).",
    "batch_rows": "Rows (requests x n) in the running batch.",
    "adapters_resident": "Store adapters loaded in memory.",
    "kv_cache_usage": "KV cache reserved by admitted requests (their worst case), as a fraction of the budget.",
    "kv_cache_bytes": "Bytes the running batch's KV cache holds now.",
    "decode_threads": "CPU threads a decode step runs on now: chosen by timing steps unless "
    "--cpu-decode-threads fixes it (0 off the CPU).",
}
_COUNTERS = {
    "decode_steps": "Decode steps run (one token for every running row).",
    "decoded_rows": "Rows over all decode steps; divided by decode steps: the mean batch size.",
    "prefill_tokens": "Prompt tokens prefilled (run through the model).",
    "prefix_cache_hit_tokens": "Prompt tokens whose keys and values came from the prefix cache instead.",
    "requests_aborted": "Requests whose client went away before the end; their rows left the batch.",
    "requests_failed": "Requests ended by an error inside the engine.",
    "adapter_loads": "Adapters loaded into memory and blends built.",
    "adapter_evictions": "Adapters evicted from memory (least recently used).",
    "adapter_merges": "Adapters merged into the base weights.",
}
_LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_TOKEN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)


class EngineCollector(Collector):
    """The engine's gauges and counters, read from `stats()` at each scrape."""

    def __init__(self, stats: Callable[[], EngineStats]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self._stats()
        for name, doc in _GAUGES.items():
            yield GaugeMetricFamily(f"hotlora_{name}", doc, value=getattr(stats, name))
        for name, doc in _COUNTERS.items():
            yield CounterMetricFamily(f"hotlora_{name}", doc, value=getattr(stats, name))
        if stats.model_info:
            yield InfoMetricFamily(
                "hotlora_model", "The served base model and how it runs here.", value=stats.model_info
            )


class Metrics:
    """Every series `/metrics` serves, in a registry of its own (several apps may share one process)."""

    def __init__(self, stats: Callable[[], EngineStats]) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(EngineCollector(stats))
        ProcessCollector(registry=self.registry)  # resident memory, CPU time, open files
        self.requests = Counter(
            "hotlora_requests",
            "HTTP requests by route and status.",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "hotlora_request_duration_seconds",
            "HTTP request time until the last byte, by route.",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.ttft = Histogram(
            "hotlora_time_to_first_token_seconds",
            "Time from a generation request to its first token.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.itl = Histogram(
            "hotlora_inter_token_latency_seconds",
            "Time between consecutive tokens of a request.",
            buckets=_TOKEN_BUCKETS,
            registry=self.registry,
        )
        self.prompt_tokens = Counter(
            "hotlora_prompt_tokens", "Prompt tokens of finished requests.", registry=self.registry
        )
        self.generation_tokens = Counter(
            "hotlora_generation_tokens", "Generated tokens of finished requests.", registry=self.registry
        )

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        self.duration.labels(endpoint).observe(seconds)

    async def timed(
        self, events: AsyncGenerator[GenerationEvent, None]
    ) -> AsyncGenerator[GenerationEvent, None]:
        """Pass `events` through, observing time to first token, inter-token latency and token counts."""
        last = time.perf_counter()
        first = True
        try:
            async for event in events:
                now = time.perf_counter()
                if isinstance(event, ChoiceDelta):
                    (self.ttft if first else self.itl).observe(now - last)
                    first, last = False, now
                elif isinstance(event, Usage):
                    self.prompt_tokens.inc(event.prompt_tokens)
                    self.generation_tokens.inc(event.completion_tokens)
                yield event
        finally:
            await events.aclose()  # closing early aborts the request

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
