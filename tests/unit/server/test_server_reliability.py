"""Faults over a real socket: vanished clients, adapters unloaded mid-flight, exceptions inside the engine.

A real uvicorn server on a loopback port serves the tiny-model engine; faults inside the engine are
injected by making one of its own functions raise for one request (chosen by its `X-Request-ID`).
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from test_server_observability import scrape

from support.tiny_server import ADAPTER_NAME, TINY_NAME, live_app

BOOM = "boom-request"


@pytest.fixture(scope="module")
def live(tiny_engine: Any) -> Iterator[httpx.Client]:
    """The app over the tiny engine, served by uvicorn on a free loopback port."""
    from hotlora_server.api import create_app

    with live_app(create_app(tiny_engine)) as client:
        yield client


def _body(text: str, max_tokens: int = 12, **extra: Any) -> dict[str, Any]:
    messages = [{"role": "user", "content": text}]
    return {"model": TINY_NAME, "messages": messages, "max_tokens": max_tokens, "temperature": 0, **extra}


def _frames(response: httpx.Response) -> Iterator[Any]:
    for line in response.iter_lines():
        if line.startswith("data:"):
            data = line[5:].strip()
            yield data if data == "[DONE]" else json.loads(data)


def _wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def _sample(live: httpx.Client, name: str) -> float:
    return scrape(live)[(name, ())]


def test_a_vanished_client_frees_its_rows_at_once(live: httpx.Client) -> None:
    aborted = _sample(live, "hotlora_requests_aborted_total")
    with live.stream(
        "POST", "/v1/chat/completions", json=_body("go on and on", max_tokens=220, stream=True)
    ) as r:
        frames = _frames(r)
        next(frames), next(frames)
        _wait_for(lambda: _sample(live, "hotlora_requests_running") == 1)
    # the connection is closed here, long before 220 tokens
    _wait_for(lambda: _sample(live, "hotlora_requests_aborted_total") == aborted + 1, timeout=5)
    _wait_for(lambda: _sample(live, "hotlora_batch_rows") == 0, timeout=5)
    assert live.post("/v1/chat/completions", json=_body("still serving")).status_code == 200


def test_a_vanished_client_of_a_non_streaming_request_frees_its_rows(live: httpx.Client) -> None:
    """Nothing is written before the end of a non-streaming answer: the server must notice the closed
    connection itself, and abort the generation rather than finish it for nobody."""
    aborted = _sample(live, "hotlora_requests_aborted_total")
    body = json.dumps(_body("go on and on", max_tokens=220)).encode()
    head = f"POST /v1/chat/completions HTTP/1.1\r\nHost: {live.base_url.host}\r\nContent-Type: application/json\r\n"
    with socket.create_connection((live.base_url.host, live.base_url.port)) as connection:
        connection.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
        _wait_for(lambda: _sample(live, "hotlora_requests_running") == 1)
    # the connection is closed here, long before 220 tokens
    _wait_for(lambda: _sample(live, "hotlora_requests_aborted_total") == aborted + 1, timeout=5)
    _wait_for(lambda: _sample(live, "hotlora_batch_rows") == 0, timeout=5)
    closed = ("hotlora_requests_total", (("endpoint", "/v1/chat/completions"), ("status", "499")))
    _wait_for(lambda: scrape(live).get(closed, 0) >= 1)  # counted as nginx's "client closed request"
    assert live.post("/v1/chat/completions", json=_body("still serving")).status_code == 200


@pytest.fixture
def boom_in_row_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the per-row token handling raise at the third token of the request with id BOOM (e.g. a
    detokenizer bug)."""
    from hotlora_server.engine.rows import Row

    original = Row.step

    def step(self: Row, *args: Any) -> None:
        if self.job.request.request_id == BOOM and self.generated == 2:
            raise RuntimeError("injected fault")
        original(self, *args)

    monkeypatch.setattr(Row, "step", step)


def test_an_engine_fault_fails_that_request_only(
    live: httpx.Client, boom_in_row_step: None, openai_error: Any
) -> None:
    prompts = ["first bystander", "second bystander", "third one"]
    alone = [live.post("/v1/chat/completions", json=_body(p)).json()["choices"] for p in prompts]
    failed_before = _sample(live, "hotlora_requests_failed_total")

    def send(body: dict[str, Any], rid: str | None = None) -> httpx.Response:
        return live.post("/v1/chat/completions", json=body, headers={"X-Request-ID": rid} if rid else {})

    with ThreadPoolExecutor(4) as pool:
        boom = pool.submit(send, _body("the unlucky one", max_tokens=40), BOOM)
        others = [pool.submit(send, _body(p)) for p in prompts]
        error = openai_error(boom.result(), 500)
        assert error["type"] == "server_error" and "injected fault" in error["message"]
        assert [o.result().json()["choices"] for o in others] == alone  # untouched, same tokens
    assert _sample(live, "hotlora_requests_failed_total") == failed_before + 1

    with live.stream(
        "POST", "/v1/chat/completions", json=_body("again", stream=True), headers={"X-Request-ID": BOOM}
    ) as r:
        assert r.status_code == 200  # the fault comes after the first token: reported in the stream
        frames = list(_frames(r))
    assert frames[-1] == "[DONE]" and frames[-2]["error"]["type"] == "server_error"
    assert live.post("/v1/chat/completions", json=_body("next")).status_code == 200


def test_a_fault_in_a_whole_batch_step_fails_its_requests_and_the_engine_serves_on(
    live: httpx.Client, monkeypatch: pytest.MonkeyPatch, openai_error: Any
) -> None:
    """The batch's own bookkeeping raises once (no request to blame): the requests in that step fail with
    500, the batch starts afresh, nothing hangs."""
    from hotlora_server.engine.batch_cache import BatchCache

    original, calls = BatchCache.advance, []

    def advance(self: BatchCache) -> None:
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("injected batch fault")
        original(self)

    monkeypatch.setattr(BatchCache, "advance", advance)
    response = live.post("/v1/chat/completions", json=_body("hit by the batch fault", max_tokens=30))
    assert "injected batch fault" in openai_error(response, 500)["message"]
    monkeypatch.undo()
    _wait_for(lambda: _sample(live, "hotlora_batch_rows") == 0)  # the batch was reset
    assert live.post("/v1/chat/completions", json=_body("after the fault")).status_code == 200


@pytest.fixture(params=[0, 2], ids=["in-its-prefill", "in-a-decode-step"])
def nan_logits_for_boom(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the logits of the request with id BOOM NaN at its first token (sampled after its prefill) or its
    third (a decode step), as an adapter that overflows would."""
    from hotlora_server.engine.scheduler import Scheduler

    original = Scheduler._sample

    def _sample(self: Scheduler, rows: list[Any], logits: Any) -> None:
        logits = logits.clone()
        for i, row in enumerate(rows):
            if row.job.request.request_id == BOOM and row.generated == request.param:
                logits[i] = float("nan")
        original(self, rows, logits)

    monkeypatch.setattr(Scheduler, "_sample", _sample)


def test_a_row_whose_logits_are_not_finite_fails_alone(
    live: httpx.Client, nan_logits_for_boom: None, openai_error: Any
) -> None:
    """Its request ends with its own error; the requests in the same prefill group or decode step go on
    with exactly the tokens they produce alone."""
    prompts = ["first bystander", "second bystander", "third one"]
    alone = [live.post("/v1/chat/completions", json=_body(p)).json()["choices"] for p in prompts]
    failed_before = _sample(live, "hotlora_requests_failed_total")
    with ThreadPoolExecutor(4) as pool:
        boom = pool.submit(
            live.post, "/v1/chat/completions", json=_body("the unlucky one"), headers={"X-Request-ID": BOOM}
        )
        others = [pool.submit(live.post, "/v1/chat/completions", json=_body(p)) for p in prompts]
        error = openai_error(boom.result(), 500)
        assert error["type"] == "server_error" and "not finite" in error["message"]
        assert [o.result().json()["choices"] for o in others] == alone
    assert _sample(live, "hotlora_requests_failed_total") == failed_before + 1


def test_a_tiny_temperature_samples_greedily_beside_other_streams(live: httpx.Client) -> None:
    """Temperatures so small that dividing by them overflows are greedy (as in vLLM), and a greedy stream
    sharing their batch steps is untouched."""
    stream_body = _body("a stream beside it", max_tokens=40, stream=True)
    with live.stream("POST", "/v1/chat/completions", json=stream_body) as r:
        alone = list(_frames(r))
    greedy = live.post("/v1/chat/completions", json=_body("how cold is it")).json()["choices"]

    def stream() -> list[Any]:
        with live.stream("POST", "/v1/chat/completions", json=stream_body) as r:
            return list(_frames(r))

    with ThreadPoolExecutor(4) as pool:
        beside = pool.submit(stream)
        tiny = [
            pool.submit(live.post, "/v1/chat/completions", json=_body("how cold is it", temperature=t))
            for t in (1e-40, 1e-37, 1e-6)
        ]
        for response in tiny:
            assert response.result().status_code == 200, response.result().text
            assert response.result().json()["choices"] == greedy
        frames = beside.result()

    def content(frames: list[Any]) -> list[Any]:
        return [c["delta"] for f in frames[:-1] if "choices" in f for c in f["choices"]]

    assert frames[-1] == "[DONE]" and not any("error" in f for f in frames[:-1])
    assert content(frames) == content(alone)


def test_an_adapter_unloaded_mid_flight_finishes_cleanly(live: httpx.Client) -> None:
    body = {**_body("long answer please", max_tokens=200, stream=True), "model": ADAPTER_NAME}
    try:
        with live.stream("POST", "/v1/chat/completions", json=body) as r:
            frames = _frames(r)
            next(frames)
            assert live.delete(f"/v1/adapters/{ADAPTER_NAME}").status_code == 200
            rest = list(frames)
        assert rest[-1] == "[DONE]"
        finish = [
            c["finish_reason"]
            for f in rest[:-1]
            if "choices" in f
            for c in f["choices"]
            if c["finish_reason"]
        ]
        assert len(finish) == 1  # it ends normally: the request keeps the weights it started with
        refused = live.post("/v1/chat/completions", json={**body, "stream": False})
        assert refused.status_code == 404
        assert (
            live.post("/v1/chat/completions", json=_body("the base without any adapter")).status_code == 200
        )
    finally:
        assert live.post("/v1/adapters", json={"name": ADAPTER_NAME}).status_code == 200
    assert live.post("/v1/chat/completions", json={**body, "stream": False}).status_code == 200
