"""Talk to a running hotlora server over HTTP: wait until it serves the new adapter; the curl line to try it.

The trainer never imports the server: the server watches the same store and picks the adapter up by
itself; the trainer asks it, through the client SDK, until the adapter is ready (servable).
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Callable
from typing import Any

from .errors import ServerWaitError

WAIT_S = 30.0
POLL_S = 0.25
REQUEST_TIMEOUT_S = 5.0


def wait_until_served(
    server: str,
    name: str,
    *,
    api_key: str | None,
    wait_s: float = WAIT_S,
    out: Callable[[str], None] = print,
) -> float:
    """Poll until `server` serves `name`; return the seconds it took. `ServerWaitError` if it never does.

    The client's `wait_until_ready` polls; a server that cannot be reached or answers an error (one still
    loading its model, say) is asked again until `wait_s` is over. A refused key fails at once.
    """
    from hotlora_client import Client, errors

    started = time.monotonic()
    deadline = started + wait_s
    why = ""
    # "" rather than None: no key means none, not the client's own look at $HOTLORA_API_KEY
    with Client(server, api_key=api_key or "", timeout=REQUEST_TIMEOUT_S, max_retries=0) as client:
        while True:
            try:
                client.adapters.wait_until_ready(name, max(0.0, deadline - time.monotonic()), interval=POLL_S)
            except errors.AuthenticationError:
                raise ServerWaitError(
                    f"{server} refused the request (401): set HOTLORA_API_KEY to the server's API key"
                ) from None
            except errors.AdapterNotReadyError as e:
                if e.status is not None:
                    why = f" (its status there: {e.status}{f': {e.error}' if e.error else ''})"
                break
            except errors.APIError as e:
                why = f" (last error: {e})"
            else:
                waited = time.monotonic() - started
                out(f"{server} serves {name!r} ({waited:.1f} s after registration)")
                return waited
            if time.monotonic() >= deadline:
                break
            time.sleep(POLL_S)
    raise ServerWaitError(
        f"the adapter {name!r} is registered, but {server} did not list it within {wait_s:.0f} s"
        f"{why}: is that server running on the same adapter store (--adapters-dir)?"
    )


def curl_line(server: str, name: str, *, chat: bool, sample: str | None, api_key_set: bool) -> str:
    """A shell-ready `curl` that asks the adapter something (the first evaluation or training input)."""
    body: dict[str, Any]
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
