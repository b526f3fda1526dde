"""One request as a plan: retries with backoff and `Retry-After`, the SDK's errors for failures, and the
answer parsed into its type. Every API call goes through `request` (or `call`)."""

from __future__ import annotations

import itertools
import math
import random
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError

from . import errors
from ._config import Config
from ._plan import Plan, Send, Sleep

M = TypeVar("M", bound=BaseModel)

RETRY_STATUSES = frozenset({429, 503})
# Failures where the request cannot have been processed, or the connection dropped before any answer.
RETRYABLE_TRANSPORT_ERRORS = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.RemoteProtocolError,
)
MAX_RETRY_AFTER = 60.0  # a server asking for a longer wait gets the error (with `retry_after`) at once
BACKOFF_FIRST, BACKOFF_MAX = 0.5, 8.0


def backoff(attempt: int) -> float:
    """Seconds before retry `attempt + 1`: 0.5, 1, 2, … up to 8, with jitter."""
    return float(min(BACKOFF_MAX, BACKOFF_FIRST * 2**attempt) * (1 - 0.25 * random.random()))


def retry_after(headers: httpx.Headers) -> float | None:
    """`Retry-After` in seconds (a number or an HTTP date); None when absent or unreadable."""
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, IndexError):
            return None
    return max(0.0, seconds) if math.isfinite(seconds) else None


def request(
    config: Config,
    method: str,
    path: str,
    *,
    json: Any = None,
    params: Mapping[str, str] | None = None,
    stream: bool = False,
    files: Mapping[str, tuple[str, bytes]] | None = None,
    data: Mapping[str, str] | None = None,
) -> Plan[httpx.Response]:
    """Send a request, retrying connection failures, 429 and 503 (after `Retry-After` when the server
    sends one) up to `config.max_retries` times; any other error status raises at once."""
    send = Send(method, path, json, params, stream, files, data)
    for attempt in itertools.count():
        may_retry = attempt < config.max_retries
        try:
            response: httpx.Response = yield send
        except httpx.TransportError as exc:
            if may_retry and isinstance(exc, RETRYABLE_TRANSPORT_ERRORS):
                yield Sleep(backoff(attempt))
                continue
            raise errors.connection_error(exc, config.base_url) from exc
        if not response.is_error:
            return response
        wait = retry_after(response.headers)
        if may_retry and response.status_code in RETRY_STATUSES and (wait is None or wait <= MAX_RETRY_AFTER):
            yield Sleep(backoff(attempt) if wait is None else wait)
            continue
        raise response_error(response, wait)
    raise AssertionError("unreachable")


def response_error(response: httpx.Response, wait: float | None) -> errors.APIStatusError:
    try:
        body = response.json()
    except ValueError:
        body = response.text
    return errors.status_error(response.status_code, body, response=response, retry_after=wait)


def parse(model: type[M], response: httpx.Response) -> M:
    try:
        return model.model_validate_json(response.content)
    except ValidationError as exc:
        raise errors.APIError(
            f"unexpected answer from {response.request.method} {response.request.url.path}: {exc}",
            status_code=response.status_code,
            body=response.text,
        ) from None


def call(config: Config, model: type[M], method: str, path: str, **kwargs: Any) -> Plan[M]:
    response = yield from request(config, method, path, **kwargs)
    return parse(model, response)


def segment(name: str, safe: str = "") -> str:
    """A name in a URL path (`safe="/"` for model ids, which may be hub ids like `org/model`)."""
    return quote(name, safe=safe)
