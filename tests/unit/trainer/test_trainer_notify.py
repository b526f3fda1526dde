"""Telling a running server: wait until it lists the adapter; the curl line to try it."""

from __future__ import annotations

import json
import shlex
from typing import Any

import httpx
import pytest

from hotlora_trainer import ServerWaitError
from hotlora_trainer import notify
from hotlora_trainer.notify import curl_line, wait_until_served


class FakeServer:
    """Answers GET /v1/models; lists the adapter from the `appears_after`-th call on."""

    def __init__(self, appears_after: int, key: str | None = None) -> None:
        self.calls = 0
        self.appears_after = appears_after
        self.key = key
        self.headers: list[dict[str, str]] = []

    def get(self, url: str, headers: dict[str, str], timeout: float) -> httpx.Response:
        self.calls += 1
        self.headers.append(headers)
        request = httpx.Request("GET", url)
        if self.key and headers.get("Authorization") != f"Bearer {self.key}":
            return httpx.Response(401, json={"error": {"message": "bad key"}}, request=request)
        ids = ["smollm2-135m-instruct"] + (["bot"] if self.calls >= self.appears_after else [])
        return httpx.Response(200, json={"object": "list", "data": [{"id": i} for i in ids]}, request=request)


@pytest.fixture
def fast_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(notify, "POLL_S", 0.0)


def test_waits_until_the_server_lists_the_adapter(monkeypatch: pytest.MonkeyPatch, fast_polls: None) -> None:
    server = FakeServer(appears_after=3, key="k")
    monkeypatch.setattr(httpx, "get", server.get)
    lines: list[str] = []
    wait_until_served("http://127.0.0.1:9", "bot", api_key="k", out=lines.append)
    assert server.calls == 3
    assert server.headers[0] == {"Authorization": "Bearer k"}
    assert lines and "serves 'bot'" in lines[0]


def test_a_wrong_key_says_so(monkeypatch: pytest.MonkeyPatch, fast_polls: None) -> None:
    monkeypatch.setattr(httpx, "get", FakeServer(appears_after=1, key="k").get)
    with pytest.raises(ServerWaitError, match="HOTLORA_API_KEY"):
        wait_until_served("http://127.0.0.1:9", "bot", api_key=None, out=lambda _: None)


def test_a_server_on_another_store_times_out_with_a_hint(monkeypatch: pytest.MonkeyPatch, fast_polls: None) -> None:
    monkeypatch.setattr(httpx, "get", FakeServer(appears_after=10**9).get)
    with pytest.raises(ServerWaitError, match="same adapter store"):
        wait_until_served("http://127.0.0.1:9", "bot", api_key=None, wait_s=0.05, out=lambda _: None)


def test_an_unreachable_server_times_out(fast_polls: None) -> None:
    with pytest.raises(ServerWaitError, match="last error"):
        wait_until_served("http://127.0.0.1:9", "bot", api_key=None, wait_s=0.05, out=lambda _: None)


@pytest.mark.parametrize("chat", [True, False])
def test_curl_line_is_shell_safe(chat: bool) -> None:
    sample = "It's a \"quoted\" $HOME `tick` sentence."
    line = curl_line("http://127.0.0.1:8000", "bot", chat=chat, sample=sample, api_key_set=True)
    argv = shlex.split(line)
    assert argv[0] == "curl"
    assert argv[1] == f"http://127.0.0.1:8000/v1/{'chat/completions' if chat else 'completions'}"
    assert "Authorization: Bearer $HOTLORA_API_KEY" in argv  # left for the shell to expand
    body: Any = json.loads(argv[argv.index("-d") + 1])
    assert body["model"] == "bot"
    assert (body["messages"][0]["content"] if chat else body["prompt"]) == sample
