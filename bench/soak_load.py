"""The soak's load: streamed chats over base, adapters and blends, adapter churn, the server's memory.

`soak` runs --requests chats, --concurrency at a time, while one churn adapter in turn is unloaded or
loaded again, the hostile mix runs beside (unless --no-hostile) and the server's VmRSS is sampled; it
returns every outcome with the server's state once the load is over. bench/soak.py judges and reports it.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import _common  # noqa: F401 - puts tests/ on the path for support.live_server
import httpx
import soak_hostile as hostile
from prometheus_client.parser import text_string_to_metric_families
from soak_wire import Outcome, one_request, status_of

from support.live_server import BASE_ID, RunningServer

STEADY = tuple(f"steady{i}" for i in range(4))
CHURN = ("churn0", "churn1")
BLENDS = tuple(f"{a}*0.5+{b}*0.5" for a, b in zip(STEADY, STEADY[1:] + STEADY[:1], strict=True))
MIX = (BASE_ID, *STEADY, *BLENDS, *CHURN)  # request i asks for MIX[i % len(MIX)]
PROMPTS = (
    "Tell me a short story about a lighthouse keeper.",
    "What is the capital of France?",
    "List three uses for a paperclip.",
    "Explain photosynthesis to a child.",
    "Write a haiku about rain.",
)
GAUGES = ("hotlora_requests_running", "hotlora_requests_waiting")


@dataclass(frozen=True)
class ChurnCall:
    action: Literal["unload", "load"]
    name: str
    status: int | None  # None: the call itself failed
    seconds: float


@dataclass
class RssWatch:
    """The server's resident memory: at the end of the warm-up, every second after, and at the end."""

    pid: int
    warm: int | None = None
    warm_at: float | None = None  # time.monotonic() of the warm-up sample
    end: int | None = None
    samples: list[int] = field(default_factory=list)

    def read(self) -> int | None:
        """VmRSS in bytes; None once the process is gone (an unreaped one has no VmRSS)."""
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
        except FileNotFoundError:
            return None
        return next(
            (int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmRSS:")), None
        )

    def sample(self) -> int | None:
        value = self.read()
        if value is not None:
            self.samples.append(value)
        return value

    def mark_warm(self) -> None:
        self.warm, self.warm_at = self.sample(), time.monotonic()

    def mark_end(self) -> None:
        self.end = self.sample()

    async def sample_every(self, seconds: float) -> None:
        while True:
            await asyncio.sleep(seconds)
            if self.warm is not None:
                self.sample()

    def growth(self) -> float | None:
        """End over warm-up, in percent (None without both)."""
        return (self.end / self.warm - 1) * 100 if self.warm and self.end else None


@dataclass
class Run:
    outcomes: list[Outcome]
    planned: int
    wall: float
    churn: list[ChurnCall]
    rss: RssWatch
    exit_code: int | None  # the server's, if it exited during the load
    gauges: dict[str, float] | None  # None: the server has no /metrics
    health: int | None
    hostile: hostile.HostileMix | None  # None: --no-hostile

    def every_outcome(self) -> list[Outcome]:
        """The normal load's requests and the hostile mix's."""
        return self.outcomes + (self.hostile.outcomes() if self.hostile else [])


def request_body(i: int, model: str, max_tokens: int) -> dict[str, object]:
    sampling = {"temperature": 0} if i % 2 == 0 else {"temperature": 0.8, "top_p": 0.95, "seed": i}
    return {
        "model": model,
        "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
        **sampling,
    }


async def churn(client: httpx.AsyncClient, every: float, calls: list[ChurnCall]) -> None:
    """Every `every` seconds unload, or load again, one churn adapter in turn, until cancelled."""
    enabled = dict.fromkeys(CHURN, True)
    for name in itertools.cycle(CHURN):
        await asyncio.sleep(every)
        started = time.perf_counter()
        try:
            if enabled[name]:
                response = await client.delete(f"/v1/adapters/{name}")
            else:
                response = await client.post("/v1/adapters", json={"name": name})
            status: int | None = response.status_code
        except httpx.HTTPError:
            status = None
        calls.append(
            ChurnCall("unload" if enabled[name] else "load", name, status, time.perf_counter() - started)
        )
        if status == 200:
            enabled[name] = not enabled[name]


async def settle(client: httpx.AsyncClient) -> dict[str, float] | None:
    """The running and waiting gauges once both read 0, or as they are 5 s after the load (as last read, none
    if the server never answered); None without /metrics."""
    values: dict[str, float] = {}
    for _ in range(10):
        try:
            response = await client.get("/metrics")
        except (
            httpx.TransportError
        ):  # a server still stalled after the load: that check fails, the report stays
            return values
        if response.status_code == 404:
            return None
        response.raise_for_status()
        values = {
            sample.name: sample.value
            for family in text_string_to_metric_families(response.text)
            for sample in family.samples
            if sample.name in GAUGES
        }
        if all(values.get(name) == 0 for name in GAUGES):
            break
        await asyncio.sleep(0.5)
    return values


async def soak(server: RunningServer, args: argparse.Namespace, deadline: float, root: Path) -> Run:
    """The load with adapter churn, the hostile mix and memory sampling, then the server's state once it is over."""
    rss = RssWatch(server.process.pid)
    mix = (
        None
        if args.no_hostile
        else hostile.HostileMix(
            BASE_ID,
            STEADY,
            root / "library" / hostile.IMPORTED,
            root / "imports",
            args.max_tokens,
            args.request_timeout,
        )
    )
    outcomes: list[Outcome] = []
    calls: list[ChurnCall] = []
    pending = enumerate(itertools.islice(itertools.cycle(MIX), args.requests))
    warmup = min(args.requests, max(args.requests // 10, 2 * len(MIX)))
    timeout = httpx.Timeout(args.request_timeout)
    limits = httpx.Limits(max_connections=args.concurrency)
    async with (
        httpx.AsyncClient(base_url=server.base_url, timeout=timeout, limits=limits) as client,
        httpx.AsyncClient(base_url=server.base_url, timeout=timeout) as admin,
    ):

        async def worker() -> None:
            for i, model in pending:
                if time.monotonic() > deadline:
                    return
                body = request_body(i, model, args.max_tokens)
                outcomes.append(await one_request(client, body, args.request_timeout))
                if len(outcomes) == warmup:
                    rss.mark_warm()

        until = (
            asyncio.Event()
        )  # the normal load is over: each hostile loop stops once it has tried every class
        background = [
            asyncio.create_task(churn(admin, args.churn_every, calls)),
            asyncio.create_task(rss.sample_every(1.0)),
        ]
        mixing = [asyncio.create_task(mix.run(server.base_url, until))] if mix else []
        started = time.perf_counter()
        try:
            await asyncio.gather(*(worker() for _ in range(args.concurrency)))
            wall = time.perf_counter() - started
            until.set()
            await asyncio.gather(*mixing)
        finally:
            for task in background + mixing:
                task.cancel()
            await asyncio.gather(*background, *mixing, return_exceptions=True)
        exit_code = server.process.poll()
        if exit_code is not None:
            return Run(outcomes, args.requests, wall, calls, rss, exit_code, {}, None, mix)
        gauges = await settle(admin)
        rss.mark_end()
        health = await status_of(admin.get("/health"))
    return Run(outcomes, args.requests, wall, calls, rss, None, gauges, health, mix)
