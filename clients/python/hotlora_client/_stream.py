"""Server-Sent Events decoded into typed chunks, the errors a stream can end with, and the `Stream` and
`AsyncStream` a streamed call returns."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Generic, TypeVar

import httpx
from pydantic import ValidationError

from . import errors
from .types import ChatCompletionChunk, Completion, FunctionCall, ToolCall, Usage

if TYPE_CHECKING:
    from typing import Self

    from ._plan import Streaming

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


class _StreamBase(Generic[C]):
    def __init__(self, streaming: Streaming[C], base_url: str) -> None:
        self.response = streaming.response
        self._decoder: StreamDecoder[C] = streaming.decoder
        self._base_url = base_url

    @property
    def text(self) -> str:
        """The first choice's text received so far (all of it once the stream is consumed)."""
        return self._decoder.text

    @property
    def tool_calls(self) -> list[ToolCall]:
        """The first choice's tool calls received so far, their pieces put together (a chat stream)."""
        return self._decoder.tool_calls

    @property
    def usage(self) -> Usage | None:
        """Token usage, once received (ask for it with `stream_options={"include_usage": True}`)."""
        return self._decoder.usage


class Stream(_StreamBase[C]):
    """The chunks of a streamed answer as they arrive. Iterate it once (or its `.text_stream`); it closes
    itself at the end; `close()` it, or use it in a `with`, to stop early. An error frame in the stream
    raises the matching `APIStatusError`, a cut-short stream `APIConnectionError`."""

    def __iter__(self) -> Iterator[C]:
        try:
            with stream_transport_errors(self._base_url):
                for line in self.response.iter_lines():
                    yield from self._decoder.feed(line)
                    if self._decoder.done:
                        return
                yield from self._decoder.end()
        finally:
            self.response.close()

    @property
    def text_stream(self) -> Iterator[str]:
        """Only the first choice's new text, piece by piece."""
        return (chunk.text for chunk in self if chunk.text)

    def close(self) -> None:
        self.response.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncStream(_StreamBase[C]):
    """`Stream` for `AsyncClient`: `async for chunk in stream`, `async for text in stream.text_stream`."""

    async def __aiter__(self) -> AsyncIterator[C]:
        try:
            with stream_transport_errors(self._base_url):
                async for line in self.response.aiter_lines():
                    for chunk in self._decoder.feed(line):
                        yield chunk
                    if self._decoder.done:
                        return
                for chunk in self._decoder.end():
                    yield chunk
        finally:
            await self.response.aclose()

    @property
    def text_stream(self) -> AsyncIterator[str]:
        """Only the first choice's new text, piece by piece."""
        return (chunk.text async for chunk in self if chunk.text)

    async def close(self) -> None:
        await self.response.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
