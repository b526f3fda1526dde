"""A reply's text as it is generated, split into content and tool calls, for streaming and whole answers.

A `CallStream` is fed a choice's text in whatever pieces the engine produced and gives back items in
OpenAI's streaming order: content text, the start of a call (its index, id and function name), then
fragments of the call's arguments as they are generated. A whole answer is the same stream fed all at once
(`read_all`), so a streamed reply reassembles to exactly the non-streamed one.

`CallScanner` reads calls written in one `CallSyntax` (a registered parser's, or the forced `required`
format): text until an opener, a head naming one of the request's functions up to the `{` of its arguments,
the arguments object (read by `JsonObjectScanner`, sent on as it comes), then a closer. A call is made once
its head is read: before that, text that turns out not to be a call is content, as the model wrote it;
after it, what breaks the syntax, up to the syntax's end marker, is dropped. Whitespace before a call and
at the end of a reply with calls is not content.
"""

from __future__ import annotations

import secrets
import string
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum, auto
from typing import Protocol

import regex

from .json_prefix import JsonObjectScanner, Step

MAX_GAP = (
    256  # whitespace allowed between the parts of a call's syntax (a model spamming newlines is not a call)
)
_ID_ALPHABET = string.ascii_letters + string.digits


@dataclass(frozen=True)
class ContentText:
    text: str


@dataclass(frozen=True)
class CallStart:
    index: int
    id: str
    name: str


@dataclass(frozen=True)
class CallArguments:
    index: int
    text: str


Item = ContentText | CallStart | CallArguments


class CallStream(Protocol):
    """One choice's text in, its content and tool calls out."""

    def feed(self, text: str) -> list[Item]: ...

    def finish(self) -> list[Item]:
        """The generation ended: what was held back, resolved."""
        ...


def new_call_id() -> str:
    """OpenAI's shape: `call_` and 24 random letters and digits."""
    return "call_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(24))


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str


def read_all(stream: CallStream, text: str) -> tuple[str, list[ToolCall]]:
    """A whole reply: its content and its calls, through the same stream a streamed reply goes through."""
    content: list[str] = []
    calls: list[ToolCall] = []
    for item in [*stream.feed(text), *stream.finish()]:
        if isinstance(item, ContentText):
            content.append(item.text)
        elif isinstance(item, CallStart):
            calls.append(ToolCall(item.id, item.name, ""))
        else:
            last = calls[-1]
            calls[-1] = ToolCall(last.id, last.name, last.arguments + item.text)
    return "".join(content), calls


def merge(items: list[Item]) -> list[Item]:
    """Adjacent content, and adjacent fragments of one call's arguments, as one item each."""
    out: list[Item] = []
    for item in items:
        last = out[-1] if out else None
        if isinstance(item, ContentText) and isinstance(last, ContentText):
            out[-1] = ContentText(last.text + item.text)
        elif isinstance(item, CallArguments) and isinstance(last, CallArguments) and last.index == item.index:
            out[-1] = CallArguments(item.index, last.text + item.text)
        elif not (isinstance(item, (ContentText, CallArguments)) and not item.text):
            out.append(item)
    return out


def gap() -> str:
    """Whitespace between two parts of a call's syntax."""
    return rf"\s{{0,{MAX_GAP}}}"


def call_head(names: Sequence[str], arguments_keys: Sequence[str]) -> str:
    """`{"name": "<one of names>", "<arguments key>": {` with JSON's whitespace anywhere between."""
    g = gap()
    name = "|".join(regex.escape(n) for n in sorted(names, key=len, reverse=True))
    keys = "|".join(regex.escape(k) for k in arguments_keys)
    return rf'{g}\{{{g}"name"{g}:{g}"(?P<name>{name})"{g},{g}"(?:{keys})"{g}:{g}\{{'


@dataclass(frozen=True)
class CallSyntax:
    """How calls are written in a reply, as regular expressions (the `regex` module's, which can tell a
    text that may still become a match from one that cannot)."""

    opener: str  # what starts a call in the text
    head: str  # after the opener, up to and including the `{` of the arguments; group `name`
    closer: str  # after the arguments object
    after: str | None = None  # an optional end marker after the closer, dropped when present
    skip_to: str | None = None  # after a broken call, text up to and including this is dropped (None: all)
    content: bool = True  # text outside calls is content (False: it is the format's punctuation)


class _Mode(Enum):
    TEXT = auto()
    HEAD = auto()
    ARGS = auto()
    CLOSE = auto()
    AFTER = auto()
    SKIP = auto()


class CallScanner:
    """A `CallStream` for calls written in `syntax`; at most `max_calls` are made (later ones are read and
    dropped: `parallel_tool_calls: false`)."""

    def __init__(self, syntax: CallSyntax, max_calls: int | None = None) -> None:
        self._syntax = syntax
        self._opener = regex.compile(syntax.opener)
        self._head = regex.compile(syntax.head)
        self._closer = regex.compile(syntax.closer)
        self._after = regex.compile(syntax.after) if syntax.after else None
        self._skip_to = regex.compile(syntax.skip_to) if syntax.skip_to else None
        self._max_calls = max_calls
        self._mode = _Mode.TEXT
        self._buf = ""  # text not yet resolved in the current mode
        self._opened = ""  # the opener of the call being read, content again if its head fails
        self._space = ""  # whitespace held back: content only if more content follows
        self._calls = 0  # calls started (made or dropped)
        self._args: JsonObjectScanner | None = None
        self._out: list[Item] = []

    def feed(self, text: str) -> list[Item]:
        self._buf += text
        while self._step():
            pass
        return self._take()

    def finish(self) -> list[Item]:
        if self._mode is _Mode.TEXT:
            self._content(self._buf)
        elif self._mode is _Mode.HEAD:  # cut off before it was a call: what it was, is content
            self._content(self._opened + self._buf)
        if self._calls == 0 and self._syntax.content:
            self._emit(ContentText(self._space))
        self._buf = self._space = ""
        self._mode = _Mode.TEXT
        return self._take()

    # -- one step of the current mode; False when it needs more text ------------------------------------

    def _step(self) -> bool:
        return {
            _Mode.TEXT: self._text,
            _Mode.HEAD: self._head_step,
            _Mode.ARGS: self._arguments,
            _Mode.CLOSE: self._close,
            _Mode.AFTER: self._end_marker,
            _Mode.SKIP: self._skip,
        }[self._mode]()

    def _text(self) -> bool:
        m = self._opener.search(self._buf, partial=True)
        if m is None or (m.partial and m.start() == len(self._buf)):
            self._content(self._buf)
            self._buf = ""
            return False
        self._content(self._buf[: m.start()])
        if m.partial:  # may still become an opener: held back
            self._buf = self._buf[m.start() :]
            return False
        self._opened, self._buf = m.group(), self._buf[m.end() :]
        self._mode = _Mode.HEAD
        return True

    def _head_step(self) -> bool:
        m = self._head.match(self._buf, partial=True)
        if m is None:  # not a call after all: the opener is content, and the text after it is read again
            self._content(self._opened)
            self._mode = _Mode.TEXT
            return True
        if m.partial:
            return False
        self._space = ""  # whitespace before a call is not content
        index = self._calls
        self._calls += 1
        self._args = JsonObjectScanner()
        self._args.feed("{")
        if self._keeps(index):
            self._emit(CallStart(index, new_call_id(), m.group("name")), CallArguments(index, "{"))
        self._buf = self._buf[m.end() :]
        self._mode = _Mode.ARGS
        return True

    def _arguments(self) -> bool:
        assert self._args is not None
        index = self._calls - 1
        for i, ch in enumerate(self._buf):
            step = self._args.feed(ch)
            if step is Step.ACCEPT:
                continue
            if step is Step.DONE:
                i += 1
            if self._keeps(index):
                self._emit(CallArguments(index, self._buf[:i]))
            self._buf = self._buf[i:]
            self._mode = _Mode.CLOSE if step is Step.DONE else _Mode.SKIP
            return True
        if self._keeps(index):
            self._emit(CallArguments(index, self._buf))
        self._buf = ""
        return False

    def _close(self) -> bool:
        m = self._closer.match(self._buf, partial=True)
        if m is None:
            self._mode = _Mode.SKIP
            return True
        if m.partial:
            return False
        self._buf = self._buf[m.end() :]
        self._mode = _Mode.AFTER if self._after is not None else _Mode.TEXT
        return True

    def _end_marker(self) -> bool:
        assert self._after is not None
        m = self._after.match(self._buf, partial=True)
        if m is not None and m.partial:
            return False
        if m is not None:
            self._buf = self._buf[m.end() :]
        self._mode = _Mode.TEXT
        return True

    def _skip(self) -> bool:
        m = self._skip_to.search(self._buf, partial=True) if self._skip_to is not None else None
        if m is None or m.partial:
            self._buf = self._buf[m.start() :] if m is not None else ""
            return False
        self._buf = self._buf[m.end() :]
        self._mode = _Mode.TEXT
        return True

    # -- output ----------------------------------------------------------------------------------------

    def _keeps(self, index: int) -> bool:
        return self._max_calls is None or index < self._max_calls

    def _content(self, text: str) -> None:
        """Text outside calls; trailing whitespace waits to see whether content or a call follows."""
        if not self._syntax.content or not text:
            return
        text = self._space + text
        kept = text.rstrip()
        self._space = text[len(kept) :]
        self._emit(ContentText(kept))

    def _emit(self, *items: Item) -> None:
        self._out.extend(items)

    def _take(self) -> list[Item]:
        out, self._out = merge(self._out), []
        return out
