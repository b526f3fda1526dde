"""The real server under signals and scrapes: SIGTERM drains in-flight streams, `/metrics` behind the key."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from support.live_server import API_KEY, BASE_ID, RunningServer, start_server

pytestmark = pytest.mark.integration


def _stream(
    server: RunningServer, content: str, max_tokens: int, out: list[list[str]], started: threading.Event
) -> None:
    body = {
        "model": BASE_ID,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    lines: list[str] = []
    with httpx.stream("POST", f"{server.v1}/chat/completions", json=body, timeout=120) as response:
        for line in response.iter_lines():
            if line.startswith("data:"):
                lines.append(line[5:].strip())
                started.set()
    out.append(lines)


def test_sigterm_drains_in_flight_streams_then_exits(tmp_path: Path, hotlora_home: Path) -> None:
    server = start_server(
        ["--home", str(hotlora_home), "--adapters-dir", str(tmp_path / "store")], tmp_path / "log"
    )
    results: list[list[str]] = []
    started = [threading.Event(), threading.Event()]
    threads = [
        threading.Thread(target=_stream, args=(server, text, 48, results, event))
        for text, event in zip(["Tell me about the sea.", "Describe a forest."], started, strict=True)
    ]
    try:
        for thread in threads:
            thread.start()
        assert all(event.wait(120) for event in started)
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(60) == 0  # exits cleanly once both streams are done
        for thread in threads:
            thread.join(10)
    finally:
        if server.process.poll() is None:
            server.process.kill()
    assert len(results) == 2
    for lines in results:
        assert lines[-1] == "[DONE]", lines[-3:]
        chunks = [json.loads(line) for line in lines[:-1]]
        assert not any("error" in chunk for chunk in chunks)
        assert [c["finish_reason"] for chunk in chunks for c in chunk["choices"] if c["finish_reason"]] in (
            ["length"],
            ["stop"],
        )
        assert 0 < chunks[-1]["usage"]["completion_tokens"] <= 48
    with pytest.raises(httpx.TransportError):  # gone: nothing listens any more
        httpx.get(f"{server.base_url}/health", timeout=2)
    assert "Waiting for connections to close" in server.output() or "Shutting down" in server.output()


def test_metrics_on_the_real_server(server: RunningServer, http: httpx.Client) -> None:
    assert httpx.get(f"{server.base_url}/metrics", timeout=10).status_code == 401  # the key guards it
    body = {"model": BASE_ID, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    assert http.post("/v1/chat/completions", json=body).status_code == 200
    deadline = time.monotonic() + 10
    while "hotlora_requests_running 0.0" not in (text := http.get("/metrics").text):
        assert time.monotonic() < deadline, "the running gauge never went back to 0"
        time.sleep(0.1)
    for series in (
        "hotlora_requests_waiting 0.0",
        "hotlora_generation_tokens_total",
        "hotlora_time_to_first_token_seconds_bucket",
        'endpoint="/v1/chat/completions",status="200"',
    ):
        assert series in text, series
    assert API_KEY not in server.output()
