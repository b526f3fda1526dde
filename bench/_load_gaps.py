"""hotlora-loads: the largest gap of a running stream while another request waits for its adapter.

A greedy base stream runs; once it has 16 chunks, one short request arrives for a loaded adapter (the gap
its prefill alone makes), then on fresh streams one for a cold adapter (it loads) and one for a blend not
built yet (it is built). Each is judged against the stream's median gap: at most 3x.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import pairwise

import httpx
from _common import percentile
from _streams import run_clients, stream_chat
from _workloads import ADAPTERS, story_prompt

from support.live_server import BASE_ID


@dataclass(frozen=True)
class LoadGap:
    """A running stream's gaps while another request waited for its adapter or blend (hotlora-loads)."""

    label: str  # what the other request waited for
    median: float  # the stream's median gap between chunks, seconds
    largest: float  # its largest gap while the other request had no first chunk yet, seconds
    wait: float  # the other request's time to first chunk, seconds


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


def loads_table(rows: Iterable[object]) -> list[str]:
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
