"""Telling a running server: wait until it serves the adapter (through the client SDK); the curl line to try it."""

from __future__ import annotations

import json
import shlex
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from hotlora_trainer import ServerWaitError, notify
from hotlora_trainer.notify import curl_line, wait_until_served

CARD = {"id": "bot", "object": "adapter", "created": 1, "size_bytes": 10, "version": "v1", "manifest": None}


class FakeServer:
    """A loopback HTTP server answering `GET /v1/adapters/bot` as hotlora does: 404 (not in the store yet)
    before the `appears_after`-th request, then the adapter with `status`; 503 for the first `loading`
    requests; 401 without `key`."""

    def __init__(
        self, appears_after: int, key: str | None = None, status: str = "available", loading: int = 0
    ) -> None:
        self.calls = 0
        self.appears_after = appears_after
        self.key = key
        self.status = status
        self.loading = loading
        self.headers: list[dict[str, str]] = []
        self.paths: list[str] = []
        self.url = ""

    def answer(self, path: str, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
        self.calls += 1
        self.paths.append(path)
        self.headers.append(headers)
        if self.key and headers.get("Authorization") != f"Bearer {self.key}":
            return 401, {
                "error": {"message": "bad key", "type": "invalid_request_error", "code": "invalid_api_key"}
            }
        if self.calls <= self.loading:
            return 503, {"error": {"message": "the model is still loading", "type": "server_error"}}
        if path != "/v1/adapters/bot" or self.calls < self.appears_after:
            return 404, {"error": {"message": "not in the store", "type": "invalid_request_error"}}
        error = "rank 64 > --max-lora-rank 16" if self.status == "invalid" else None
        return 200, {**CARD, "status": self.status, "error": error}


@pytest.fixture
def serve() -> Iterator[Any]:
    servers: list[ThreadingHTTPServer] = []

    def start(fake: FakeServer) -> FakeServer:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                status, body = fake.answer(self.path, dict(self.headers))
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *_: Any) -> None:
                pass

        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        servers.append(httpd)
        fake.url = f"http://127.0.0.1:{httpd.server_address[1]}"
        return fake

    yield start
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def fast_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(notify, "POLL_S", 0.0)


def test_waits_until_the_server_serves_the_adapter(serve: Any, fast_polls: None) -> None:
    server = serve(FakeServer(appears_after=3, key="k"))
    lines: list[str] = []
    wait_until_served(server.url, "bot", api_key="k", out=lines.append)
    assert server.calls == 3
    assert server.paths == ["/v1/adapters/bot"] * 3
    assert server.headers[0]["Authorization"] == "Bearer k"
    assert lines and "serves 'bot'" in lines[0]


def test_a_server_still_loading_is_asked_again(serve: Any, fast_polls: None) -> None:
    server = serve(FakeServer(appears_after=1, loading=2))
    wait_until_served(server.url, "bot", api_key=None, out=lambda _: None)
    assert server.calls == 3  # two 503s (no retries of the client's own: the wait asks again), then served


def test_a_wrong_key_says_so(serve: Any, fast_polls: None) -> None:
    server = serve(FakeServer(appears_after=1, key="k"))
    with pytest.raises(ServerWaitError, match="HOTLORA_API_KEY"):
        wait_until_served(server.url, "bot", api_key=None, out=lambda _: None)
    assert server.calls == 1  # at once, not after the whole wait


def test_no_key_given_sends_none_even_if_the_environment_has_one(
    serve: Any, fast_polls: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOTLORA_API_KEY", "k")  # the trainer passes the key of its own `env`, or none
    server = serve(FakeServer(appears_after=1, key="k"))
    with pytest.raises(ServerWaitError, match="401"):
        wait_until_served(server.url, "bot", api_key=None, out=lambda _: None)
    assert "Authorization" not in server.headers[0]


def test_a_server_on_another_store_times_out_with_a_hint(serve: Any, fast_polls: None) -> None:
    server = serve(FakeServer(appears_after=10**9))
    with pytest.raises(ServerWaitError, match="same adapter store"):
        wait_until_served(server.url, "bot", api_key=None, wait_s=0.05, out=lambda _: None)
    assert server.calls >= 1


def test_an_adapter_the_server_refuses_times_out_with_its_status(serve: Any, fast_polls: None) -> None:
    server = serve(FakeServer(appears_after=1, status="invalid"))
    with pytest.raises(ServerWaitError, match=r"status there: invalid: rank 64 > --max-lora-rank 16"):
        wait_until_served(server.url, "bot", api_key=None, wait_s=0.05, out=lambda _: None)


def test_an_unreachable_server_times_out(fast_polls: None) -> None:
    with pytest.raises(ServerWaitError, match="last error"):
        wait_until_served("http://127.0.0.1:9", "bot", api_key=None, wait_s=0.05, out=lambda _: None)


@pytest.mark.parametrize("chat", [True, False])
def test_curl_line_is_shell_safe(chat: bool) -> None:
    sample = 'It\'s a "quoted" $HOME `tick` sentence.'
    line = curl_line("http://127.0.0.1:8000", "bot", chat=chat, sample=sample, api_key_set=True)
    argv = shlex.split(line)
    assert argv[0] == "curl"
    assert argv[1] == f"http://127.0.0.1:8000/v1/{'chat/completions' if chat else 'completions'}"
    assert "Authorization: Bearer $HOTLORA_API_KEY" in argv  # left for the shell to expand
    body: Any = json.loads(argv[argv.index("-d") + 1])
    assert body["model"] == "bot"
    assert (body["messages"][0]["content"] if chat else body["prompt"]) == sample
