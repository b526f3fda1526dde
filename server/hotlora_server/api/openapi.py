"""What `/openapi.json` promises beyond the routes' own types: every error body and the streaming variant.

The schema is checked against the running app by schemathesis (tests/unit/server/test_server_schema_fuzz.py),
so whatever the server can answer has to be declared here.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from ..protocol import ErrorResponse

Responses = dict[int | str, dict[str, Any]]

_RETRY_AFTER = {
    "Retry-After": {"description": "seconds to wait", "required": True, "schema": {"type": "integer"}}
}


def _error(description: str, *, retry_after: bool = False) -> dict[str, Any]:
    return {
        "model": ErrorResponse,
        "description": description,
        **({"headers": _RETRY_AFTER} if retry_after else {}),
    }


ERROR_RESPONSES: Responses = {
    400: _error(
        "Invalid request: malformed JSON, a wrong type, a value out of range, an unsupported feature"
    ),
    401: _error("Missing or wrong API key"),
    403: _error("The request's Host is not one this server answers (--allowed-hosts: DNS rebinding)"),
    404: _error("Unknown model, adapter or route"),
    409: _error("Name conflict in the adapter store"),
    413: _error("Request body larger than --max-body-bytes"),
    429: _error("Too many requests waiting (--max-queue)", retry_after=True),
    503: _error("Not ready yet, shutting down, or an adapter is changing on disk", retry_after=True),
    # declaring `default` also keeps FastAPI from documenting its 422, which this server never sends
    "default": _error("Any other error, in the same shape"),
}


def _event(data: str, named: bool) -> dict[str, Any]:
    """One Server-Sent Event (OpenAPI 3.1 has an event-stream schema describe a single event)."""
    return {
        "type": "object",
        "required": ["event", "data"] if named else ["data"],
        "properties": {"data": {"type": "string", "description": data}, "event": {"type": "string"}},
    }


_CHUNK_EVENT = _event("a chunk as JSON, an error body if generation fails, `[DONE]` last", named=False)
_NAMED_EVENT = _event(
    "the event as JSON, its `type` the event's name: `response.created` first, `response.completed`, "
    "`response.incomplete` or (after an `error` event) `response.failed` last",
    named=True,
)

# for routes declared with `response_class=Response`, so that their errors are still documented as JSON
PLAIN_TEXT: Responses = {200: {"content": {"text/plain": {"schema": {"type": "string"}}}}}


def streamed(model: type[BaseModel], *, named: bool = False) -> Responses:
    """A 200 that is `model` as JSON, or Server-Sent Events with `"stream": true`: its chunks, or with
    `named`, the Responses API's named events."""
    event = _NAMED_EVENT if named else _CHUNK_EVENT
    return {200: {"model": model, "content": {"text/event-stream": {"schema": event}}}}
