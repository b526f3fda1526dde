"""Talk to a running hotlora server over HTTP: wait until it serves the new adapter; the curl line to try it.

The trainer never imports the server: the server watches the same store and picks the adapter up by
itself; the trainer only asks `GET /v1/models` until the adapter is listed (servable).
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Callable

from .errors import ServerWaitError

WAIT_S = 30.0
POLL_S = 0.25


def served_models(server: str, *, api_key: str | None, timeout: float = 5.0) -> list[str]:
    """The ids `GET {server}/v1/models` lists."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    response = httpx.get(f"{server}/v1/models", headers=headers, timeout=timeout)
    if response.status_code == 401:
        raise ServerWaitError(
            f"{server} refused the request (401): set HOTLORA_API_KEY to the server's API key"
        )
    response.raise_for_status()
    return [m["id"] for m in response.json().get("data", [])]


def wait_until_served(
    server: str,
    name: str,
    *,
    api_key: str | None,
    wait_s: float = WAIT_S,
    out: Callable[[str], None] = print,
) -> float:
    """Poll until `server` lists `name`; return the seconds it took. `ServerWaitError` if it never does."""
    import httpx

    started = time.monotonic()
    deadline = started + wait_s
    last_error = ""
    while True:
        try:
            if name in served_models(server, api_key=api_key):
                waited = time.monotonic() - started
                out(f"{server} serves {name!r} ({waited:.1f} s after registration)")
                return waited
        except httpx.HTTPError as e:
            last_error = f" (last error: {e})"
        if time.monotonic() >= deadline:
            raise ServerWaitError(
                f"the adapter {name!r} is registered, but {server} did not list it within {wait_s:.0f} s"
                f"{last_error}: is that server running on the same adapter store (--adapters-dir)?"
            )
        time.sleep(POLL_S)


def curl_line(server: str, name: str, *, chat: bool, sample: str | None, api_key_set: bool) -> str:
    """A shell-ready `curl` that asks the adapter something (the first evaluation or training input)."""
    if chat:
        body = {"model": name, "messages": [{"role": "user", "content": sample or "Hello!"}]}
        route = "chat/completions"
    else:
        body = {"model": name, "prompt": sample or "Once upon a time", "max_tokens": 64}
        route = "completions"
    parts = [f"curl {server}/v1/{route}", "-H 'Content-Type: application/json'"]
    if api_key_set:
        parts.append('-H "Authorization: Bearer $HOTLORA_API_KEY"')
    parts.append(f"-d {shlex.quote(json.dumps(body, ensure_ascii=False))}")
    return " ".join(parts)
