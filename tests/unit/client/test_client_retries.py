"""Retries against a real HTTP server: connection failures, 429 and 503 are retried (after `Retry-After`),
every other error status is not; the error raised carries the server's message, param and code."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from hotlora_client import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AsyncClient,
    AuthenticationError,
    BadRequestError,
    Client,
    ConflictError,
    NotFoundError,
    PayloadTooLargeError,
    RateLimitError,
    ServerError,
)

from support.scripted_server import ScriptedServer, error, hang_up, reply, slow

HEALTHY = reply(200, {"status": "ok", "model": "base"})


def test_503_with_retry_after_is_retried_after_that_many_seconds(scripted: ScriptedServer) -> None:
    scripted.answer(
        error(503, "the model is still loading", "service_unavailable", {"Retry-After": "1"}), HEALTHY
    )
    with Client(scripted.url) as client:
        assert client.health().status == "ok"
    assert len(scripted.hits) == 2
    # the client's own first backoff is at most 0.5 s: waiting >= 1 s means it honoured Retry-After
    assert scripted.gaps()[0] >= 0.95


def test_429_is_retried_then_succeeds(scripted: ScriptedServer) -> None:
    scripted.answer(error(429, "slow down", "rate_limit_exceeded", {"Retry-After": "0"}), HEALTHY)
    with Client(scripted.url) as client:
        assert client.health().status == "ok"
    assert len(scripted.hits) == 2


def test_without_retry_after_it_backs_off(scripted: ScriptedServer) -> None:
    scripted.answer(error(503, "busy"), error(503, "busy"), HEALTHY)
    with Client(scripted.url) as client:
        client.health()
    first, second = scripted.gaps()
    assert 0.3 <= first <= 1.5 and second >= 0.7  # 0.5 s, then 1 s, less up to a quarter of jitter


def test_retries_stop_after_max_retries_and_raise_with_retry_after(scripted: ScriptedServer) -> None:
    scripted.answer(error(503, "still loading", "service_unavailable", {"Retry-After": "0"}))
    with Client(scripted.url, max_retries=2) as client, pytest.raises(ServerError) as caught:
        client.health()
    assert len(scripted.hits) == 3
    assert caught.value.status_code == 503 and caught.value.retry_after == 0
    assert caught.value.message == "still loading" and caught.value.code == "service_unavailable"


def test_max_retries_zero_sends_once(scripted: ScriptedServer) -> None:
    scripted.answer(error(429, "slow down", headers={"Retry-After": "0"}))
    with Client(scripted.url, max_retries=0) as client, pytest.raises(RateLimitError):
        client.health()
    assert len(scripted.hits) == 1


def test_a_retry_after_too_long_to_wait_raises_at_once(scripted: ScriptedServer) -> None:
    scripted.answer(error(503, "maintenance", headers={"Retry-After": "3600"}), HEALTHY)
    with Client(scripted.url) as client, pytest.raises(ServerError) as caught:
        client.health()
    assert len(scripted.hits) == 1 and caught.value.retry_after == 3600


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, BadRequestError),
        (401, AuthenticationError),
        (404, NotFoundError),
        (409, ConflictError),
        (413, PayloadTooLargeError),
        (500, ServerError),
        (418, APIStatusError),
    ],
)
def test_other_errors_are_not_retried(
    scripted: ScriptedServer, status: int, cls: type[APIStatusError]
) -> None:
    detail = {
        "message": f"no ({status})",
        "type": "invalid_request_error",
        "param": "temperature",
        "code": "x",
    }
    body = {"error": detail}
    scripted.answer(reply(status, body, {"Retry-After": "0"}), HEALTHY)
    with Client(scripted.url) as client, pytest.raises(cls) as caught:
        client.chat("hi", model="m", temperature=9)
    assert len(scripted.hits) == 1
    assert type(caught.value) is cls
    assert (caught.value.status_code, caught.value.param, caught.value.code) == (status, "temperature", "x")
    assert caught.value.message == f"no ({status})"
    assert caught.value.body == body and caught.value.response is not None


def test_an_error_that_is_not_json_keeps_its_text(scripted: ScriptedServer) -> None:
    scripted.answer(reply(502, "Bad Gateway from the proxy"))
    with Client(scripted.url) as client, pytest.raises(ServerError) as caught:
        client.models.list()
    assert caught.value.message == "Bad Gateway from the proxy" and caught.value.status_code == 502
    assert len(scripted.hits) == 1


def test_a_dropped_connection_is_retried(scripted: ScriptedServer) -> None:
    scripted.answer(hang_up, hang_up, HEALTHY)
    with Client(scripted.url) as client:
        assert client.health().status == "ok"
    assert len(scripted.hits) == 3


def test_connection_failures_raise_apiconnectionerror_after_the_retries(scripted: ScriptedServer) -> None:
    scripted.answer(hang_up)
    with Client(scripted.url, max_retries=1) as client, pytest.raises(APIConnectionError) as caught:
        client.health()
    assert len(scripted.hits) == 2
    assert scripted.url in caught.value.message


def test_nothing_listening_is_a_readable_connection_error() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.monotonic()
    with (
        Client(f"http://127.0.0.1:{port}", max_retries=1) as client,
        pytest.raises(APIConnectionError) as caught,
    ):
        client.health()
    assert "cannot connect" in caught.value.message and "hotlora serve" in caught.value.message
    assert not isinstance(caught.value, APITimeoutError)
    assert time.monotonic() - started < 5


def test_a_read_timeout_is_not_retried(scripted: ScriptedServer) -> None:
    # the request may have been processed (a generation ran): sending it again is not the client's call
    scripted.answer(slow(1.0, HEALTHY))
    with Client(scripted.url, timeout=0.3) as client, pytest.raises(APITimeoutError):
        client.health()
    assert len(scripted.hits) == 1


def test_async_client_retries_the_same_way(scripted: ScriptedServer) -> None:
    scripted.answer(error(503, "loading", "service_unavailable", {"Retry-After": "1"}), HEALTHY)

    async def go() -> None:
        async with AsyncClient(scripted.url) as client:
            assert (await client.health()).status == "ok"
            scripted.answer(error(400, "bad temperature"), HEALTHY)
            with pytest.raises(BadRequestError, match="bad temperature"):
                await client.chat("hi", model="m")

    asyncio.run(go())
    assert len(scripted.hits) == 3  # 503, 200, then the 400 once
    assert scripted.gaps()[0] >= 0.95
