"""serve_bench's client side: greedy streamed chats, timed chunk by chunk, from concurrent clients.

Each request is timed from its sending to every content chunk it gets, so that TTFT, the gaps between
chunks and the time per output token all come from the same stamps.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx

Request = tuple[str, list[dict[str, str]]]  # model, messages
# For a server whose streams carry no usage (llama-cpp-python's ignores `stream_options`): a completion's
# tokens from the client, its text, its finish reason and the request's max_tokens.
TokenCount = Callable[[httpx.AsyncClient, str, str | None, int], Awaitable[int]]


@dataclass(frozen=True)
class Sample:
    sent: float  # perf_counter() when the request was (or would have been) sent
    stamps: list[float]  # perf_counter() at each content chunk (naive: each token)
    tokens: int  # completion tokens produced


async def stream_chat(
    client: httpx.AsyncClient,
    model: str,
    messages: list[dict[str, str]],
    tokens: int,
    response_format: dict[str, Any] | None = None,
    stamps: list[float] | None = None,
    ignore_eos: bool = False,
    count: TokenCount | None = None,
) -> Sample:
    """One greedy streamed chat: when each content chunk arrived (appended to `stamps` as they come, if
    given), and the usage's completion tokens (`count`'s, where the stream has no usage)."""
    body = {
        "model": model,
        "messages": messages,
        "max_tokens": tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        **({"response_format": response_format} if response_format else {}),
        **({"ignore_eos": True} if ignore_eos else {}),
    }
    sent = time.perf_counter()
    stamps = [] if stamps is None else stamps
    produced: int | None = None
    text: list[str] = []
    finish_reason: str | None = None
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{model}: HTTP {response.status_code}: {(await response.aread()).decode()}")
        async for line in response.aiter_lines():
            payload = line.removeprefix("data:").strip()
            if not line.startswith("data:") or payload == "[DONE]":
                continue
            chunk = json.loads(payload)
            if "error" in chunk:
                raise RuntimeError(f"{model}: error in stream: {chunk['error']}")
            contents = [choice["delta"].get("content") for choice in chunk.get("choices", [])]
            if any(contents):
                stamps.append(time.perf_counter())
                text += filter(None, contents)
            finish_reason = next(
                (c["finish_reason"] for c in chunk.get("choices", []) if c.get("finish_reason")),
                finish_reason,
            )
            if chunk.get("usage"):
                produced = chunk["usage"]["completion_tokens"]
    if produced is None and count is not None and stamps:
        produced = await count(client, "".join(text), finish_reason, tokens)
    if not stamps or produced is None:
        raise RuntimeError(f"{model}: the stream ended without content or usage")
    return Sample(sent, stamps, produced)


async def run_clients(
    base_url: str,
    requests: list[Request],
    concurrency: int,
    tokens: int,
    response_format: dict[str, Any] | None = None,
    count: TokenCount | None = None,
) -> tuple[list[Sample], float]:
    """`concurrency` clients share the request list; the samples and the wall time (`count`: see
    `stream_chat`)."""
    pending = iter(requests)
    samples: list[Sample] = []
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=600, limits=limits) as client:

        async def client_loop() -> None:
            for model, messages in pending:
                sample = await stream_chat(client, model, messages, tokens, response_format, count=count)
                samples.append(sample)

        started = time.perf_counter()
        await asyncio.gather(*(client_loop() for _ in range(concurrency)))
        return samples, time.perf_counter() - started
