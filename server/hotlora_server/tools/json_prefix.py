"""Reads a JSON object character by character, as a model writes it: where it ends, and the first character
that no valid JSON could have there.

A streamed tool call's arguments are sent on as they are generated; this is what says which characters
still belong to them (a nested `}` does not end them, a `}` inside a string neither) and where they end,
without waiting for the whole call to parse it once. It follows RFC 8259 exactly (no NaN, no comments, no
control characters in strings), so a complete object it accepts is one `json.loads` parses.
"""

from __future__ import annotations

from enum import Enum, auto

_WS = frozenset(" \t\n\r")
_DIGITS = frozenset("0123456789")
_HEX = frozenset("0123456789abcdefABCDEF")
_ESCAPES = frozenset('"\\/bfnrtu')
_LITERALS = {"t": "rue", "f": "alse", "n": "ull"}


class Step(Enum):
    ACCEPT = auto()  # the character belongs to the object, which goes on
    DONE = auto()  # the character closes the object
    REJECT = auto()  # no JSON object has this character here (nothing changed)


class _S(Enum):
    START = auto()  # before the opening `{`
    VALUE = auto()  # a value must come (after `:` or `,` in an array)
    VALUE_OR_CLOSE = auto()  # after `[`
    KEY_OR_CLOSE = auto()  # after `{`
    KEY = auto()  # after `,` in an object
    COLON = auto()  # after a key
    COMMA_OR_CLOSE = auto()  # after a value inside a container
    STRING = auto()
    NUMBER = auto()
    LITERAL = auto()
    DONE = auto()


class _N(Enum):
    """Where a number is in `-?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?`."""

    MINUS = auto()
    ZERO = auto()
    INT = auto()
    DOT = auto()
    FRAC = auto()
    E = auto()
    E_SIGN = auto()
    EXP = auto()


_NUMBER_ENDS = frozenset({_N.ZERO, _N.INT, _N.FRAC, _N.EXP})  # a number may stop here


class JsonObjectScanner:
    """One JSON object, fed one character at a time (`feed`); a rejected character changes nothing."""

    def __init__(self) -> None:
        self._state = _S.START
        self._stack: list[str] = []  # the open containers, `{` or `[`
        self._key = False  # the string being read is an object key
        self._escape = -1  # -1: no escape; 0: after a backslash; 1-4: hex digits of a \u escape still due
        self._number = _N.MINUS
        self._literal = ""  # the letters of true, false or null still due

    @property
    def done(self) -> bool:
        return self._state is _S.DONE

    def feed(self, ch: str) -> Step:
        state = self._state
        if state is _S.STRING:
            return self._string(ch)
        if state is _S.NUMBER:
            step = self._number_char(ch)
            return step if step is not None else self._after_number(ch)
        if state is _S.LITERAL:
            if ch != self._literal[0]:
                return Step.REJECT
            self._literal = self._literal[1:]
            if not self._literal:
                return self._value_ended()
            return Step.ACCEPT
        return self._structure(ch)

    def _structure(self, ch: str) -> Step:
        state = self._state
        if state is _S.DONE:
            return Step.REJECT
        if ch in _WS:
            return Step.ACCEPT
        if state is _S.START:
            return self._open(ch) if ch == "{" else Step.REJECT
        if state in (_S.KEY_OR_CLOSE, _S.KEY):
            if ch == '"':
                self._state, self._key = _S.STRING, True
                return Step.ACCEPT
            if ch == "}" and state is _S.KEY_OR_CLOSE:
                return self._close()
            return Step.REJECT
        if state is _S.COLON:
            if ch != ":":
                return Step.REJECT
            self._state = _S.VALUE
            return Step.ACCEPT
        if state is _S.COMMA_OR_CLOSE:
            return self._comma_or_close(ch)
        if ch == "]" and state is _S.VALUE_OR_CLOSE:
            return self._close()
        return self._value_start(ch)

    def _after_number(self, ch: str) -> Step:
        """`ch` follows a complete number, a value inside a container (never alone: the object holds it)."""
        number, self._state = self._state, _S.COMMA_OR_CLOSE
        step = Step.ACCEPT if ch in _WS else self._comma_or_close(ch)
        if step is Step.REJECT:
            self._state = number
        return step

    def _comma_or_close(self, ch: str) -> Step:
        top = self._stack[-1]
        if ch == ",":
            self._state = _S.KEY if top == "{" else _S.VALUE
            return Step.ACCEPT
        if (ch == "}" and top == "{") or (ch == "]" and top == "["):
            return self._close()
        return Step.REJECT

    def _value_start(self, ch: str) -> Step:
        if ch in "{[":
            return self._open(ch)
        if ch == '"':
            self._state, self._key = _S.STRING, False
            return Step.ACCEPT
        if ch == "-" or ch in _DIGITS:
            self._state = _S.NUMBER
            self._number = _N.MINUS if ch == "-" else _N.ZERO if ch == "0" else _N.INT
            return Step.ACCEPT
        if ch in _LITERALS:
            self._state, self._literal = _S.LITERAL, _LITERALS[ch]
            return Step.ACCEPT
        return Step.REJECT

    def _open(self, ch: str) -> Step:
        self._stack.append(ch)
        self._state = _S.KEY_OR_CLOSE if ch == "{" else _S.VALUE_OR_CLOSE
        return Step.ACCEPT

    def _close(self) -> Step:
        self._stack.pop()
        return self._value_ended()

    def _value_ended(self) -> Step:
        if not self._stack:
            self._state = _S.DONE
            return Step.DONE
        self._state = _S.COMMA_OR_CLOSE
        return Step.ACCEPT

    def _string(self, ch: str) -> Step:
        if ord(ch) < 0x20:
            return Step.REJECT
        if self._escape == 0:
            if ch not in _ESCAPES:
                return Step.REJECT
            self._escape = 4 if ch == "u" else -1
            return Step.ACCEPT
        if self._escape > 0:
            if ch not in _HEX:
                return Step.REJECT
            self._escape = self._escape - 1 if self._escape > 1 else -1
            return Step.ACCEPT
        if ch == "\\":
            self._escape = 0
            return Step.ACCEPT
        if ch == '"':
            if self._key:
                self._state = _S.COLON
                return Step.ACCEPT
            return self._value_ended()
        return Step.ACCEPT

    def _number_char(self, ch: str) -> Step | None:
        """ACCEPT when `ch` continues the number, REJECT when the number cannot stop here, None when the
        number is complete and `ch` comes after it."""
        n, digit = self._number, ch in _DIGITS
        follow: _N | None = None
        if n is _N.MINUS:
            follow = _N.ZERO if ch == "0" else _N.INT if digit else None
        elif n in (_N.ZERO, _N.INT, _N.FRAC):
            if digit and n is not _N.ZERO:
                follow = n
            elif ch == "." and n is not _N.FRAC:
                follow = _N.DOT
            elif ch in "eE":
                follow = _N.E
        elif n is _N.DOT:
            follow = _N.FRAC if digit else None
        elif n is _N.E:
            follow = _N.E_SIGN if ch in "+-" else _N.EXP if digit else None
        elif n in (_N.E_SIGN, _N.EXP):
            follow = _N.EXP if digit else None
        if follow is not None:
            self._number = follow
            return Step.ACCEPT
        return None if n in _NUMBER_ENDS else Step.REJECT
