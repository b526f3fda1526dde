"""The wire contract a soak judges every answer by: a streamed chat's SSE chunks, and OpenAI error objects."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Literal

import httpx

Kind = Literal["ok", "error", "in-band", "hung", "malformed"]


class Malformed(Exception):
    """A response that breaks the wire contract; the message says how."""


@dataclass(frozen=True)
class Outcome:
    model: str
    status: int | None  # None: no response head arrived
    kind: Kind  # ok; error: a clean error status; in-band: an error frame in a 200 stream
    detail: str = ""  # the error's type, or what was wrong
    latency: float | None = None  # request sent -> [DONE] (a refused invalid body: -> its answer)
    ttft: float | None = None  # request sent -> first content chunk
    tokens: int = 0  # completion tokens (usage)

    @property
    def server_error(self) -> bool:
        """A 5xx, also one reported in-band after the 200 head was sent."""
        return (self.status or 0) >= 500 or (self.kind == "in-band" and self.detail == "server_error")


async def status_of(call: Awaitable[httpx.Response]) -> int | None:
    """The status of a call whose body does not matter; None if no answer came."""
    try:
        return (await call).status_code
    except httpx.HTTPError:
        return None


def error_type(data: object) -> str:
    """The type of an OpenAI error object `{"error": {"message", "type", "param", "code"}}`."""
    error = data.get("error") if isinstance(data, dict) else None
    if not (
        isinstance(error, dict)
        and {"message", "type", "param", "code"} <= error.keys()
        and isinstance(error["message"], str)
        and isinstance(error["type"], str)
    ):
        raise Malformed(f"not an OpenAI error object: {json.dumps(data)[:200]}")
    return error["type"]


def sse_payloads(lines: list[tuple[float, str]]) -> list[tuple[float, str]]:
    """The `data:` payloads of an SSE stream (comments such as keep-alive pings skipped), up to `[DONE]`."""
    payloads = []
    for stamp, line in lines:
        name, _, value = line.partition(":")
        if not line or line.startswith(":") or name in ("event", "id", "retry"):
            continue
        if name != "data":
            raise Malformed(f"not an SSE line: {line[:200]!r}")
        if payloads and payloads[-1][1] == "[DONE]":
            raise Malformed("data after [DONE]")
        payloads.append((stamp, value.removeprefix(" ")))
    if not payloads or payloads[-1][1] != "[DONE]":
        raise Malformed("the stream does not end with data: [DONE]")
    return payloads[:-1]


def check_stream(
    lines: list[tuple[float, str]], model: str, max_tokens: int
) -> tuple[float | None, int, str]:
    """Validate a 200 stream: when its first content arrived, its completion tokens, its in-band error type."""
    ids: set[object] = set()
    first: float | None = None
    contents = 0
    finish: str | None = None
    usage: dict | None = None
    payloads = sse_payloads(lines)
    for n, (stamp, payload) in enumerate(payloads):
        try:
            chunk = json.loads(payload)
        except json.JSONDecodeError:
            raise Malformed(f"a data line is not JSON: {payload[:200]!r}") from None
        if isinstance(chunk, dict) and "error" in chunk:
            if n != len(payloads) - 1:
                raise Malformed("the stream goes on after an error frame")
            return first, 0, error_type(chunk)
        if not (
            isinstance(chunk, dict)
            and chunk.get("object") == "chat.completion.chunk"
            and chunk.get("model") == model
            and isinstance(chunk.get("created"), int)
            and isinstance(chunk.get("choices"), list)
        ):
            raise Malformed(f"not a chat.completion.chunk for {model!r}: {payload[:200]}")
        ids.add(chunk.get("id"))
        if usage is not None:
            raise Malformed("a chunk after the usage chunk")
        if chunk.get("usage") is not None:
            if chunk["choices"]:
                raise Malformed("the usage chunk has choices")
            usage = chunk["usage"]
            continue
        for choice in chunk["choices"]:
            if choice.get("index") != 0 or not isinstance(choice.get("delta"), dict):
                raise Malformed(f"a choice without index 0 and a delta: {choice}")
            if n == 0 and choice["delta"].get("role") != "assistant":
                raise Malformed("the first chunk does not give the assistant role")
            if finish is not None:
                raise Malformed("the choice goes on after its finish_reason")
            if choice["delta"].get("content"):
                contents += 1
                first = first or stamp
            finish = choice.get("finish_reason")
            if finish not in (None, "stop", "length"):
                raise Malformed(f"finish_reason {finish!r}")
    if len(ids) != 1 or not isinstance(next(iter(ids)), str):
        raise Malformed(f"chunk ids {ids}, not one id")
    if finish is None:
        raise Malformed("no finish_reason")
    if not (
        isinstance(usage, dict)
        and all(isinstance(usage.get(k), int) for k in ("prompt_tokens", "completion_tokens", "total_tokens"))
    ):
        raise Malformed(f"no well-formed usage chunk: {usage}")
    tokens = usage["completion_tokens"]
    if usage["total_tokens"] != usage["prompt_tokens"] + tokens or usage["prompt_tokens"] < 1:
        raise Malformed(f"inconsistent usage {usage}")
    if not 1 <= tokens <= max_tokens or (finish == "length" and tokens != max_tokens) or contents > tokens:
        raise Malformed(
            f"usage.completion_tokens {tokens} for {contents} content chunks, "
            f"finish_reason {finish}, max_tokens {max_tokens}"
        )
    return first, tokens, ""


def refusal(model: str, response: httpx.Response, body: bytes) -> Outcome:
    """Judge a non-200 answer: an OpenAI error object, and `Retry-After` on 429 and 503."""
    status = response.status_code
    try:
        kind = error_type(json.loads(body))
        if status in (429, 503) and "retry-after" not in response.headers:
            raise Malformed("no Retry-After header")
    except (Malformed, ValueError) as exc:
        return Outcome(model, status, "malformed", f"HTTP {status}: {exc} (body {body[:200]!r})")
    return Outcome(model, status, "error", kind)


async def one_request(client: httpx.AsyncClient, body: dict[str, Any], timeout: float) -> Outcome:
    """Send a streamed chat and judge what comes back; one without `[DONE]` after `timeout` seconds is hung."""
    model, max_tokens = body["model"], body["max_tokens"]
    sent = time.perf_counter()
    lines: list[tuple[float, str]] = []
    status: int | None = None
    try:
        async with asyncio.timeout(timeout):
            async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                status = response.status_code
                if status != 200:
                    return refusal(model, response, await response.aread())
                if not response.headers.get("content-type", "").startswith("text/event-stream"):
                    return Outcome(
                        model, status, "malformed", f"content-type {response.headers.get('content-type')}"
                    )
                async for line in response.aiter_lines():
                    lines.append((time.perf_counter(), line))
    except (TimeoutError, httpx.TimeoutException):
        return Outcome(model, status, "hung", f"no [DONE] after {timeout:g} s ({len(lines)} lines received)")
    except httpx.HTTPError as exc:
        return Outcome(model, status, "malformed", f"the connection failed: {exc!r}")
    done = time.perf_counter()
    try:
        first, tokens, error = check_stream(lines, model, max_tokens)
    except Malformed as exc:
        return Outcome(model, status, "malformed", str(exc))
    ttft = None if first is None else first - sent
    if error:
        return Outcome(model, status, "in-band", error, ttft=ttft)
    return Outcome(model, status, "ok", latency=done - sent, ttft=ttft, tokens=tokens)
