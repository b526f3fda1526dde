"""Server-Sent Events decoded into typed chunks, and the errors a stream can end with."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

import httpx
from pydantic import ValidationError

from . import errors
from .types import ChatCompletionChunk, Completion, FunctionCall, ToolCall, Usage

C = TypeVar("C", ChatCompletionChunk, Completion)


class StreamDecoder(Generic[C]):
    """Server-Sent Events → typed chunks. Feed it the body line by line, then call `end()`.

    An `{"error": ...}` frame raises the matching `APIStatusError`; a body that ends without `[DONE]`
    raises `APIConnectionError`. `text` is the first choice's text so far, `tool_calls` its calls put
    together from their pieces, `usage` the last usage seen.
    """

    def __init__(self, chunk: type[C], response: httpx.Response | None = None) -> None:
        self._chunk: type[C] = chunk
        self._response = response
        self._data: list[str] = []
        self.done = False
        self.text = ""
        self.usage: Usage | None = None
        self._calls: dict[int, dict[str, str]] = {}  # the first choice's calls by index: id, name, arguments

    @property
    def tool_calls(self) -> list[ToolCall]:
        return [
            ToolCall(id=c["id"], function=FunctionCall(name=c["name"], arguments=c["arguments"]))
            for _, c in sorted(self._calls.items())
        ]

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
        if isinstance(chunk, ChatCompletionChunk):
            self._add_calls(chunk)
        if chunk.usage is not None:
            self.usage = chunk.usage
        return [chunk]

    def _add_calls(self, chunk: ChatCompletionChunk) -> None:
        for choice in chunk.choices:
            for piece in (choice.delta.tool_calls or []) if choice.index == 0 else []:
                call = self._calls.setdefault(piece.index, {"id": "", "name": "", "arguments": ""})
                call["id"] = piece.id or call["id"]
                if piece.function is not None:
                    call["name"] += piece.function.name or ""
                    call["arguments"] += piece.function.arguments or ""


@contextmanager
def stream_transport_errors(base_url: str) -> Iterator[None]:
    """While reading a stream: a dropped connection raises `APIConnectionError`."""
    try:
        yield
    except httpx.TransportError as exc:
        raise errors.connection_error(exc, base_url) from exc
