"""vLLM's error answers as hotlora's errors: the client sees hotlora's OpenAI-shaped bodies and statuses,
never vLLM's (its older `{"object": "error", ...}` bodies included), and never a 500 for a bad request."""

from __future__ import annotations

import json

from ..errors import HotloraError, InvalidRequestError, NotFoundError, ServiceUnavailableError


class ReplicaDown(ServiceUnavailableError):
    """A vLLM server could not be reached: another one may take the request."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retry_after=2)


def from_vllm(status: int, body: bytes, *, what: str) -> HotloraError:
    """The error for vLLM's answer `status`/`body` to `what` hotlora asked of it."""
    message, param = _message(body)
    if status == 400 or status == 422:
        return InvalidRequestError(message, param=param)
    if status == 404:
        return NotFoundError(message, param=param)
    if status in (429, 503):
        return ServiceUnavailableError(f"vLLM is busy ({message}); retry", retry_after=1)
    return ServiceUnavailableError(f"vLLM failed {what}: {message}", retry_after=1)


def _message(body: bytes) -> tuple[str, str | None]:
    try:
        data = json.loads(body)
    except ValueError:
        return body.decode(errors="replace")[:500] or "no message", None
    error = data.get("error", data) if isinstance(data, dict) else {}
    if not isinstance(error, dict):
        return str(error)[:500], None
    if isinstance(error.get("detail"), list):  # FastAPI's validation body
        return "; ".join(str(d.get("msg", d)) for d in error["detail"])[:500], None
    param = error.get("param")
    return str(error.get("message") or error.get("detail") or data)[:500], param if isinstance(
        param, str
    ) else None
