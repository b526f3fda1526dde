"""The soak's hostile mix: what careless or malicious clients send while the normal load runs.

Four loops run beside the normal load and stop when it ends (once each class has been sent at least once):
- invalid bodies, one class after another (16,000 integers as `messages`, an unknown role, wrong types,
  16,000 stop sequences, an 8 MiB blend string as `model`, truncated JSON): each must be answered with a
  4xx OpenAI error object within REJECT_SECONDS;
- sampling extremes, streamed chats that share the normal load's batches: temperatures 1e-40, 1e-37 and
  1e-6 and a blend weight of 1e100 must get 200 (greedy) or 400, never a 5xx or an error frame;
- import/purge churn: a fresh copy of an adapter folder under the allowed import directory is imported
  under one name, chatted with once and purged, again and again (the soak's RSS check covers them);
- a /health probe every HEALTH_EVERY seconds: the event loop must never make it wait HEALTH_SECONDS.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import httpx
from _common import percentile
from soak_wire import Outcome, one_request, refusal, status_of

IMPORTED = "imported"  # the churn's adapter name, and its source folder's under the soak's library
TINY_TEMPERATURES = (1e-40, 1e-37, 1e-6)
HUGE_WEIGHT = "*1e100"
HEALTH_EVERY = 0.1
HEALTH_SECONDS = 1.0  # the bound: /health must not wait behind a request
REJECT_SECONDS = 1.0  # an invalid body's 4xx must come at once, not after its validation hogged the loop
INVALID_PAUSE = 0.5  # between two invalid bodies: a steady trickle, not a flood that measures the CPU
PROMPT = "What is the capital of France?"
MIB = 2**20
T = TypeVar("T")


@dataclass(frozen=True)
class Cycle:
    """One import -> chat -> purge cycle; a status is None where the call itself failed."""

    imported: int | None
    chat: Outcome | None  # None: not sent, the import failed
    purged: int | None
    seconds: float
    ended: float  # time.monotonic() at its end

    @property
    def ok(self) -> bool:
        return (
            self.imported == 200 and self.chat is not None and self.chat.kind == "ok" and self.purged == 200
        )


@dataclass(frozen=True)
class Probe:
    status: int | None  # None: no answer
    seconds: float


def invalid_bodies(base_id: str) -> dict[str, bytes]:
    """Each class of invalid body, encoded once so that the soak's own event loop does not pay for them."""
    chat = {"model": base_id, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 4}
    component = "steady0*0.5"
    bodies = {
        "16,000 integers as messages": {**chat, "messages": [i % 100 for i in range(16_000)]},
        "unknown role": {**chat, "messages": [{"role": "wizard", "content": PROMPT}]},
        "wrong types": {
            "model": 7,
            "messages": PROMPT,
            "max_tokens": "many",
            "temperature": "hot",
            "stream": "yes",
        },
        "16,000 stop sequences": {**chat, "stop": [f"stop{i}" for i in range(16_000)]},
        "8 MiB blend string as model": {
            **chat,
            "model": "+".join([component] * (8 * MIB // (len(component) + 1))),
        },
        "JSON schema of 10,000 optional properties": {
            **chat,
            "response_format": {
                "type": "json_schema",
                "json_schema": {
                    "name": "wide",
                    "schema": {"type": "object", "properties": {f"p{i}": {} for i in range(10_000)}},
                },
            },
        },
        "JSON schema with unsupported keywords": {
            **chat,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"not": {"type": "string"}, "uniqueItems": True}},
            },
        },
        "16,000 tools": {
            **chat,
            "tools": [{"type": "function", "function": {"name": f"f{i}"}} for i in range(16_000)],
        },
        "4 MiB tool parameters that are no JSON schema": {
            **chat,
            "tools": [
                {
                    "type": "function",
                    "function": {
                        "name": "f",
                        "parameters": {
                            "type": "object",
                            "properties": {
                                f"p{i}": {"type": "string", "description": "x" * 64} for i in range(40_000)
                            }
                            | {"broken": "string"},
                        },
                    },
                }
            ],
        },
        "2,000 tool results answering no call": {
            **chat,
            "messages": [
                {"role": "tool", "tool_call_id": f"call_{i}", "content": PROMPT} for i in range(2_000)
            ],
        },
    }
    encoded = {name: json.dumps(body, separators=(",", ":")).encode() for name, body in bodies.items()}
    whole = json.dumps(chat, separators=(",", ":")).encode()
    encoded["truncated JSON"] = whole[: len(whole) // 2]
    return encoded


def streamed_chat(model: str, max_tokens: int, **sampling: Any) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
        **sampling,
    }


def extreme_bodies(base_id: str, adapters: tuple[str, ...], max_tokens: int) -> dict[str, dict[str, Any]]:
    """Tiny temperatures over the base and the adapters in turn, and the first adapter blended with a huge
    weight (sampled, so that non-finite logits reach the sampler rather than an argmax)."""
    models = (base_id, *adapters)
    bodies = {
        f"temperature {t:g}": streamed_chat(models[i % len(models)], max_tokens, temperature=t)
        for i, t in enumerate(TINY_TEMPERATURES)
    }
    blend = adapters[0] + HUGE_WEIGHT
    bodies[f"blend weight 1e100 ({blend})"] = streamed_chat(blend, max_tokens, temperature=0.8, seed=1)
    return bodies


def rounds(
    items: dict[str, T], tried: dict[str, list[Outcome]], until: asyncio.Event
) -> Iterator[tuple[str, T]]:
    """The items in turn, again and again until `until` is set; after that only the classes not tried yet, so
    that a slow class cannot hold the soak's end but every class is tried at least once."""
    while not (until.is_set() and tried.keys() >= items.keys()):
        for name, item in items.items():
            if not (until.is_set() and name in tried):
                yield name, item


async def post_invalid(client: httpx.AsyncClient, name: str, body: bytes, timeout: float) -> Outcome:
    """Send one invalid body; its outcome carries the seconds to its answer as `latency`."""
    sent = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            response = await client.post(
                "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
            )
    except (TimeoutError, httpx.TimeoutException):
        return Outcome(name, None, "hung", f"no answer after {timeout:g} s")
    except httpx.HTTPError as exc:
        return Outcome(name, None, "malformed", f"the connection failed: {exc!r}")
    if response.is_success:
        outcome = Outcome(name, response.status_code, "malformed", "an invalid body was accepted")
    else:
        outcome = refusal(name, response, response.content)
    return replace(outcome, latency=time.perf_counter() - sent)


def rejected(outcome: Outcome) -> bool:
    """An invalid body's answer as it must be: a 4xx OpenAI error, within REJECT_SECONDS."""
    return (
        outcome.kind == "error"
        and 400 <= (outcome.status or 0) < 500
        and outcome.latency is not None
        and outcome.latency <= REJECT_SECONDS
    )


def survived(outcome: Outcome) -> bool:
    """A sampling extreme's answer as it must be: a complete stream, or a clean 400."""
    return outcome.kind == "ok" or (outcome.kind == "error" and outcome.status == 400)


@dataclass
class HostileMix:
    """The hostile loops' plan (the first fields) and what they met (filled by `run`)."""

    base_id: str
    adapters: tuple[str, ...]  # steady adapters: targets of the tiny temperatures and the huge weight
    source: Path  # the adapter folder the churn imports a fresh copy of, each cycle
    allowed: Path  # the server's --allow-adapter-dir
    max_tokens: int
    timeout: float
    invalid: dict[str, list[Outcome]] = field(default_factory=dict)
    extremes: dict[str, list[Outcome]] = field(default_factory=dict)
    cycles: list[Cycle] = field(default_factory=list)
    probes: list[Probe] = field(default_factory=list)

    async def run(self, base_url: str, until: asyncio.Event) -> None:
        """Run the loops until `until` is set and each has tried all its classes; /health is probed throughout."""
        timeout = httpx.Timeout(self.timeout)
        async with (
            httpx.AsyncClient(base_url=base_url, timeout=timeout) as client,
            httpx.AsyncClient(base_url=base_url, timeout=timeout) as prober,
        ):
            over = asyncio.Event()
            probing = asyncio.create_task(self.probe_health(prober, over))
            try:
                await asyncio.gather(
                    self.send_invalid(client, until),
                    self.send_extremes(client, until),
                    self.churn(client, until),
                )
            finally:
                over.set()
                await probing

    async def send_invalid(self, client: httpx.AsyncClient, until: asyncio.Event) -> None:
        for name, body in rounds(invalid_bodies(self.base_id), self.invalid, until):
            self.invalid.setdefault(name, []).append(await post_invalid(client, name, body, self.timeout))
            await asyncio.sleep(INVALID_PAUSE)

    async def send_extremes(self, client: httpx.AsyncClient, until: asyncio.Event) -> None:
        for name, body in rounds(
            extreme_bodies(self.base_id, self.adapters, self.max_tokens), self.extremes, until
        ):
            self.extremes.setdefault(name, []).append(await one_request(client, body, self.timeout))

    async def churn(self, client: httpx.AsyncClient, until: asyncio.Event) -> None:
        while not (until.is_set() and self.cycles):
            self.cycles.append(await self.import_cycle(client, self.allowed / f"cycle{len(self.cycles)}"))

    async def import_cycle(self, client: httpx.AsyncClient, folder: Path) -> Cycle:
        """Import a fresh copy of the source as IMPORTED, chat with it once, purge it. The copy is removed
        unless the import went unanswered: the server may still be reading it."""
        started = time.perf_counter()
        await asyncio.to_thread(shutil.copytree, self.source, folder)
        imported = await status_of(client.post("/v1/adapters", json={"name": IMPORTED, "path": str(folder)}))
        chat = None
        if imported == 200:
            chat = await one_request(
                client, streamed_chat(IMPORTED, self.max_tokens, temperature=0), self.timeout
            )
        purged = await status_of(client.delete(f"/v1/adapters/{IMPORTED}", params={"purge": "true"}))
        if imported is not None:
            await asyncio.to_thread(shutil.rmtree, folder)
        return Cycle(imported, chat, purged, time.perf_counter() - started, time.monotonic())

    async def probe_health(self, client: httpx.AsyncClient, until: asyncio.Event) -> None:
        while not until.is_set():
            started = time.perf_counter()
            status = await status_of(client.get("/health"))
            seconds = time.perf_counter() - started
            self.probes.append(Probe(status, seconds))
            await asyncio.sleep(max(0.0, HEALTH_EVERY - seconds))

    def outcomes(self) -> list[Outcome]:
        """Every chat request the mix sent, for the soak's zero-5xx, zero-hung and zero-malformed checks."""
        sent = [o for group in (self.invalid, self.extremes) for outcomes in group.values() for o in outcomes]
        return sent + [c.chat for c in self.cycles if c.chat is not None]

    def growth_per_cycle(
        self, warm_at: float | None, warm: int | None, end: int | None
    ) -> tuple[float, int] | None:
        """RSS growth from the warm-up to the end over the cycles in between, in bytes per cycle: an upper
        bound of what one cycle leaks, since it charges the cycles with any other growth."""
        cycles = sum(c.ended > warm_at for c in self.cycles) if warm_at is not None else 0
        return ((end - warm) / cycles, cycles) if cycles and warm and end else None


def answers(outcomes: list[Outcome]) -> str:
    """What a class got, e.g. `400 x5, in-band server_error x2`."""

    def label(o: Outcome) -> str:
        return {"ok": "200", "error": str(o.status), "in-band": f"in-band {o.detail}"}.get(o.kind, o.kind)

    return ", ".join(f"{name} x{n}" for name, n in Counter(map(label, outcomes)).most_common())


def spread(values: list[float]) -> str:
    """p50 / p95 / max of some durations."""
    if not values:
        return "n/a"
    return f"{percentile(values, 50):.3f} / {percentile(values, 95):.3f} / {max(values):.3f} s"


def table(mix: HostileMix, rss_growth: tuple[float, int] | None) -> list[str]:
    """One row per hostile class: how many, what they got, and how long it took."""
    rows = [
        (f"invalid: {name}", str(len(got)), answers(got), spread([o.latency for o in got if o.latency]))
        for name, got in mix.invalid.items()
    ]
    rows += [
        (name, str(len(got)), answers(got), spread([o.latency for o in got if o.latency]))
        for name, got in mix.extremes.items()
    ]
    complete = sum(c.ok for c in mix.cycles)
    cycles = f"{complete} complete, {len(mix.cycles) - complete} failed"
    rows.append(
        (
            "import -> chat -> purge cycles",
            str(len(mix.cycles)),
            cycles,
            spread([c.seconds for c in mix.cycles]),
        )
    )
    per_cycle = "n/a" if rss_growth is None else f"{rss_growth[0] / MIB:+.1f} MiB over {rss_growth[1]} cycles"
    rows.append(("RSS growth per cycle (end - warm-up, over the cycles between)", "", per_cycle, ""))
    statuses = Counter("no answer" if p.status is None else str(p.status) for p in mix.probes)
    rows.append(
        (
            f"/health every {HEALTH_EVERY * 1000:.0f} ms",
            str(len(mix.probes)),
            ", ".join(f"{s} x{n}" for s, n in statuses.most_common()),
            spread([p.seconds for p in mix.probes]),
        )
    )
    return [
        "| hostile class | sent | answers | latency p50 / p95 / max |",
        "|---|--:|---|--:|",
        *(f"| {' | '.join(row)} |" for row in rows),
    ]


def checks(mix: HostileMix) -> list[tuple[str, bool]]:
    """The hostile mix's own criteria; the soak's zero-5xx, -hung and -malformed checks also count its requests."""
    invalid = [o for got in mix.invalid.values() for o in got]
    extremes = [o for got in mix.extremes.values() for o in got]
    return [
        (
            f"invalid bodies: every one a 4xx OpenAI error within {REJECT_SECONDS:g} s",
            bool(invalid) and all(map(rejected, invalid)),
        ),
        (
            "tiny temperatures and a 1e100 blend weight: 200 or 400, never 5xx or an error frame",
            bool(extremes) and all(map(survived, extremes)),
        ),
        (
            "import -> chat -> purge cycles: every call 200, every chat complete",
            bool(mix.cycles) and all(c.ok for c in mix.cycles),
        ),
        (
            f"/health every {HEALTH_EVERY * 1000:.0f} ms: always 200, never slower than {HEALTH_SECONDS:g} s",
            bool(mix.probes) and all(p.status == 200 and p.seconds <= HEALTH_SECONDS for p in mix.probes),
        ),
    ]


def problems(mix: HostileMix) -> Counter[str]:
    """The hostile mix's failures, by description."""
    seen: Counter[str] = Counter()
    for name, got in mix.invalid.items():
        seen.update(
            f"invalid body {name!r}: HTTP {o.status}, {o.kind}: {o.detail}"
            + (f", slower than {REJECT_SECONDS:g} s" if o.kind == "error" else "")
            for o in got
            if not rejected(o)
        )
    for name, got in mix.extremes.items():
        seen.update(f"{name}: HTTP {o.status}, {o.kind}: {o.detail}" for o in got if not survived(o))
    seen.update(
        f"import cycle: import {c.imported}, chat "
        + ("not sent" if c.chat is None else f"{c.chat.status} {c.chat.kind} {c.chat.detail}")
        + f", purge {c.purged}"
        for c in mix.cycles
        if not c.ok
    )
    slow = [p for p in mix.probes if p.status != 200 or p.seconds > HEALTH_SECONDS]
    if slow:
        seen[
            f"/health: {len(slow)} of {len(mix.probes)} probes not 200 or slower than {HEALTH_SECONDS:g} s "
            f"(slowest {max(p.seconds for p in slow):.1f} s)"
        ] = 1
    return seen
