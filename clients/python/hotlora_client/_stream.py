"""Server-Sent Events decoded into typed chunks, and the errors a stream can end with."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

import httpx
from pydantic import ValidationError

from . import errors
from .types import ChatCompletionChunk, Completion, Usage

C = TypeVar("C", ChatCompletionChunk, Completion)


class StreamDecoder(Generic[C]):
    """Server-Sent Events → typed chunks. Feed it the body line by line, then call `end()`.

    An `{"error": ...}` frame raises the matching `APIStatusError`; a body that ends without `[DONE]`
    raises `APIConnectionError`. `text` is the first choice's text so far, `usage` the last usage seen.
    """

    def __init__(self, chunk: type[C], response: httpx.Response | None = None) -> None:
        self._chunk: type[C] = chunk
        self._response = response
        self._data: list[str] = []
        self.done = False
        self.text = ""
        self.usage: Usage | None = None

    def feed(self, line: str) -> list[C]:
        if self.done:
            return []
        if not line:
            return self._dispatch()
        field_name, _, value = line.partition(":")
        if field_name == "data":  # ignore comments (keep-alive pings), `event:`, `id:`, `retry:`
            self._data.append(value.removeprefix(" "))
        return []

    def end(self) -> list[C]:
        chunks = self._dispatch()
        if not self.done:
            raise errors.APIConnectionError("the stream ended before [DONE]: the server stopped mid-answer")
        return chunks

    def _dispatch(self) -> list[C]:
        if not self._data:
            return []
        data = "\n".join(self._data)
        self._data.clear()
        if data == "[DONE]":
            self.done = True
            return []
        try:
            payload = json.loads(data)
        except ValueError:
            raise errors.APIError(f"malformed event in the stream: {data[:200]!r}") from None
        if isinstance(payload, dict) and "error" in payload:
            raise errors.stream_error(payload, self._response)
        try:
            chunk = self._chunk.model_validate(payload)
        except ValidationError as exc:
            raise errors.APIError(f"unexpected event in the stream: {exc}", body=payload) from None
        self.text += chunk.text
        if chunk.usage is not None:
            self.usage = chunk.usage
        return [chunk]


@contextmanager
def stream_transport_errors(base_url: str) -> Iterator[None]:
    """While reading a stream: a dropped connection raises `APIConnectionError`."""
    try:
        yield
    except httpx.TransportError as exc:
        raise errors.connection_error(exc, base_url) from exc
