"""A real HTTP server on a loopback port that answers from a script: for the client's retries and streams.

Not a mock of the SDK: the client under test sends real requests over real sockets with httpx and reads
real answers, so what is checked is what a server would see (how many requests, when) and what a user
gets back.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Action = Callable[[BaseHTTPRequestHandler], None]


@dataclass
class Hit:
    at: float  # time.monotonic() when the request arrived
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


def reply(status: int, body: Any = None, headers: dict[str, str] | None = None) -> Action:
    """Answer with `status` and a JSON body (or text when `body` is a str)."""

    def act(handler: BaseHTTPRequestHandler) -> None:
        data = (
            body.encode() if isinstance(body, str) else json.dumps(body if body is not None else {}).encode()
        )
        handler.send_response(status)
        handler.send_header("Content-Type", "text/plain" if isinstance(body, str) else "application/json")
        handler.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(data)

    return act


def error(
    status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None
) -> Action:
    """An OpenAI-shaped error, as hotlora sends them."""
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return reply(status, {"error": {"message": message, "type": kind, "param": None, "code": code}}, headers)


def sse(*events: Any, done: bool = True) -> Action:
    """A 200 Server-Sent Events stream of `events` (dicts as JSON), ending with `[DONE]` unless not `done`."""

    def act(handler: BaseHTTPRequestHandler) -> None:
        frames = [f"data: {json.dumps(e) if not isinstance(e, str) else e}\r\n\r\n" for e in events]
        payload = ": ping\r\n\r\n" + "".join(frames) + ("data: [DONE]\r\n\r\n" if done else "")
        data = payload.encode()
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    return act


def hang_up(handler: BaseHTTPRequestHandler) -> None:
    """Close the connection without answering (the client sees a dropped connection)."""
    handler.close_connection = True
    handler.connection.close()


def slow(seconds: float, then: Action) -> Action:
    def act(handler: BaseHTTPRequestHandler) -> None:
        time.sleep(seconds)
        then(handler)

    return act


class ScriptedServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.script: list[Action] = []
        self.hits: list[Hit] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def answer(self, *actions: Action) -> None:
        """Answer the next requests with `actions` in turn; the last one answers every request after."""
        self.script = list(actions)

    def next_action(self) -> Action:
        with self.lock:
            return self.script.pop(0) if len(self.script) > 1 else self.script[0]

    def gaps(self) -> list[float]:
        """Seconds between one request and the next."""
        return [b.at - a.at for a, b in zip(self.hits, self.hits[1:], strict=False)]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ScriptedServer

    def _serve(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        hit = Hit(
            time.monotonic(), self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body
        )
        self.server.hits.append(hit)
        self.server.next_action()(self)

    do_GET = do_POST = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        pass


@contextmanager
def running() -> Iterator[ScriptedServer]:
    server = ScriptedServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
