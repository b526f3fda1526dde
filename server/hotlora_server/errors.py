"""Domain errors shared by the engine and the HTTP layer.

Each error knows its HTTP status and OpenAI error `type`/`code`, so the API maps every one of them to an
OpenAI-shaped body in one place and the engine never needs to know about HTTP.
"""

from __future__ import annotations


class HotloraError(Exception):
    """Base class: a failure a client should see as an OpenAI error body."""

    status: int = 500
    type: str = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.retry_after = retry_after


class InvalidRequestError(HotloraError):
    status = 400
    type = "invalid_request_error"


class UnsupportedSchemaError(InvalidRequestError):
    """A JSON schema the grammar engine cannot compile or enforce; the message names the problem. Its
    `param` is `response_format` unless the schema came from elsewhere (a forced tool call's parameters)."""

    def __init__(self, message: str, *, param: str | None = "response_format") -> None:
        super().__init__(message, param=param)


class ContextLengthExceededError(InvalidRequestError):
    code = "context_length_exceeded"


class AuthenticationError(HotloraError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class HostNotAllowedError(HotloraError):
    """The request's `Host` is not one this server answers (DNS rebinding): 403, as the request is well
    formed and only its destination is refused; OpenAI's SDK raises `PermissionDeniedError` for it."""

    status = 403
    type = "invalid_request_error"
    code = "host_not_allowed"


class NotFoundError(HotloraError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class ConflictError(HotloraError):
    status = 409
    type = "invalid_request_error"
    code = "conflict"


class PayloadTooLargeError(HotloraError):
    status = 413
    type = "invalid_request_error"
    code = "payload_too_large"


class OverloadedError(HotloraError):
    """Too many requests already wait for the running batch: retry after `Retry-After` seconds."""

    status = 429
    type = "rate_limit_error"
    code = "overloaded"


class ServiceUnavailableError(HotloraError):
    status = 503
    type = "server_error"
    code = "service_unavailable"
