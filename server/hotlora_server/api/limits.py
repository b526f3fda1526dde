"""Request body size limit: 413 before an oversized body is read into memory.

Pure ASGI (not `BaseHTTPMiddleware`), so it sees the body as it arrives and never buffers a streamed response.
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import PayloadTooLargeError
from .errors import error_response


class _BodyTooLarge(Exception):
    """Aborts the app's read of a body that went past the limit (the 413 is already sent)."""


def _refusal(limit: int, flag: str) -> Response:
    message = f"the request body is larger than {limit} bytes, this server's limit ({flag})"
    return error_response(PayloadTooLargeError(message))


class BodyLimitMiddleware:
    """Refuse bodies over `max_bytes`: by `Content-Length` before reading, or while a chunked body streams in.

    `max_bytes=None` passes everything through (an app built without a limit). `paths` gives routes a
    limit of their own, with the flag that sets it (file uploads: `--max-file-bytes`).
    """

    def __init__(
        self, app: ASGIApp, max_bytes: int | None, paths: Mapping[str, tuple[int, str]] | None = None
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.paths = dict(paths or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, flag = self.paths.get(scope["path"], (self.max_bytes, "--max-body-bytes"))
        if limit is None:
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            await _refusal(limit, flag)(scope, receive, send)
            return
        received = 0
        refused = False
        started = False

        async def counted_receive() -> Message:
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    if not started and not refused:
                        refused = True
                        await _refusal(limit, flag)(scope, receive, send)
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused:  # the app's own answer to the aborted read (a 400) is dropped: the 413 went out
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except _BodyTooLarge:
            if not refused:  # the response had already started: nothing to answer, drop the connection
                raise
