"""Everything the SDK raises: one class per HTTP status, carrying the server's error body.

```
HotloraError
├── APIError                      message, type, param, code, status_code, body (itself: a malformed answer)
│   ├── APIStatusError            the server answered with an error status (also: an error frame in a stream)
│   │   ├── BadRequestError       400
│   │   ├── AuthenticationError   401
│   │   ├── NotFoundError         404
│   │   ├── ConflictError         409
│   │   ├── PayloadTooLargeError  413
│   │   ├── RateLimitError        429
│   │   └── ServerError           5xx
│   └── APIConnectionError        no answer: refused, dropped, or a stream cut short
│       └── APITimeoutError       no answer in time
├── AdapterNotReadyError          `adapters.wait_until_ready` ran out of time (also a TimeoutError)
├── IncompleteOutputError         `parse`: a choice reached max_tokens before its JSON was complete
└── JobNotDoneError               `fine_tuning.jobs.wait` ran out of time (also a TimeoutError)
```
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AdapterNotReadyError",
    "AuthenticationError",
    "BadRequestError",
    "ConflictError",
    "HotloraError",
    "IncompleteOutputError",
    "JobNotDoneError",
    "NotFoundError",
    "PayloadTooLargeError",
    "RateLimitError",
    "ServerError",
]


class HotloraError(Exception):
    """Base class of every exception the SDK raises."""


class APIError(HotloraError):
    """A request failed. `message` is the server's own message when it sent one."""

    def __init__(
        self,
        message: str,
        *,
        type: str | None = None,  # noqa: A002 - the wire field's name
        param: str | None = None,
        code: str | None = None,
        status_code: int | None = None,
        body: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.status_code = status_code
        self.body = body

    def __str__(self) -> str:
        where = " ".join(str(part) for part in (self.status_code, self.code) if part is not None)
        return f"{where}: {self.message}" if where else self.message


class APIStatusError(APIError):
    """The server answered with an error status and an OpenAI-shaped body `{"error": {...}}`.

    `retry_after` is the server's `Retry-After` in seconds (on 429 and 503). For an error frame inside a
    stream (the response itself was 200), `status_code` is the status the same error has outside a stream
    and `response` is the streaming response.
    """

    def __init__(
        self,
        message: str,
        *,
        response: httpx.Response | None = None,
        retry_after: float | None = None,
        **fields: Any,
    ) -> None:
        super().__init__(message, **fields)
        self.response = response
        self.retry_after = retry_after


class BadRequestError(APIStatusError):
    """400: the request is invalid (bad field, unsupported feature, context too long, bad blend)."""


class AuthenticationError(APIStatusError):
    """401: the API key is missing or wrong."""


class NotFoundError(APIStatusError):
    """404: no such model, adapter or route."""


class ConflictError(APIStatusError):
    """409: the name is taken (e.g. saving a blend under an existing adapter's name)."""


class PayloadTooLargeError(APIStatusError):
    """413: the request body is too large."""


class RateLimitError(APIStatusError):
    """429: the server is overloaded; retried automatically, honouring `Retry-After`."""


class ServerError(APIStatusError):
    """5xx: the server failed or is not ready (503 is retried automatically, honouring `Retry-After`)."""


class APIConnectionError(APIError):
    """The server could not be reached, dropped the connection, or a stream ended before `[DONE]`."""


class APITimeoutError(APIConnectionError):
    """The server did not answer in time."""


class AdapterNotReadyError(HotloraError, TimeoutError):
    """`adapters.wait_until_ready` timed out; `status` is the adapter's last status (None: not in the store)."""

    def __init__(self, message: str, *, name: str, status: str | None, error: str | None = None) -> None:
        super().__init__(message)
        self.name = name
        self.status = status
        self.error = error


class IncompleteOutputError(HotloraError):
    """`parse` got a choice cut short by `max_tokens`: its text is not a whole JSON value. `completion` is
    the answer as it came (OpenAI's SDK raises `LengthFinishReasonError` there)."""

    def __init__(self, message: str, *, completion: Any) -> None:
        super().__init__(message)
        self.completion = completion


class JobNotDoneError(HotloraError, TimeoutError):
    """`fine_tuning.jobs.wait` timed out; `job` is the job as last seen (still queued or running)."""

    def __init__(self, message: str, *, job: Any) -> None:
        super().__init__(message)
        self.job = job


_BY_STATUS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    422: BadRequestError,
    429: RateLimitError,
}
# An error frame in a stream has no status of its own: the status its code (else its type) has elsewhere.
_STATUS_BY_CODE = {
    "invalid_api_key": 401,
    "model_not_found": 404,
    "conflict": 409,
    "payload_too_large": 413,
    "rate_limit_exceeded": 429,
    "service_unavailable": 503,
}


def error_class(status: int) -> type[APIStatusError]:
    if status >= 500:
        return ServerError
    return _BY_STATUS.get(status, APIStatusError)


def status_error(
    status: int, body: Any, *, response: httpx.Response | None = None, retry_after: float | None = None
) -> APIStatusError:
    """The exception for an error answer: its class from the status, its fields from the error body."""
    detail = body.get("error") if isinstance(body, Mapping) else None
    if not isinstance(detail, Mapping):  # not our shape (a proxy's page, say): keep what there is
        reason = httpx.codes.get_reason_phrase(status) or "error"
        text = body.strip()[:500] if isinstance(body, str) and body.strip() else reason
        detail = {"message": text}
    return error_class(status)(
        str(detail.get("message") or "(no message)"),
        type=_opt_str(detail.get("type")),
        param=_opt_str(detail.get("param")),
        code=_opt_str(detail.get("code")),
        status_code=status,
        body=body,
        response=response,
        retry_after=retry_after,
    )


def stream_error(body: Mapping[str, Any], response: httpx.Response | None) -> APIStatusError:
    """The exception for an `{"error": {...}}` frame inside a Server-Sent Events stream."""
    detail = body.get("error")
    fields = detail if isinstance(detail, Mapping) else {}
    status = _STATUS_BY_CODE.get(str(fields.get("code")))
    if status is None:
        status = 400 if fields.get("type") == "invalid_request_error" else 500
    return status_error(status, body, response=response)


def connection_error(exc: httpx.TransportError, base_url: str) -> APIConnectionError:
    """The exception for a request that got no answer from the server at `base_url`."""
    detail = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.TimeoutException):
        return APITimeoutError(f"no answer from the hotlora server at {base_url} in time ({detail})")
    if isinstance(exc, httpx.ConnectError):
        return APIConnectionError(
            f"cannot connect to the hotlora server at {base_url} ({detail}); is `hotlora serve` running "
            "there? (set HOTLORA_BASE_URL or base_url for another address)"
        )
    return APIConnectionError(f"the connection to the hotlora server at {base_url} failed ({detail})")


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)
