"""Regular expressions from adapter configs, matched in time linear in the name, whatever the pattern.

PEFT reads `target_modules` and `exclude_modules` (when strings) and the keys of `rank_pattern` and
`alpha_pattern` as Python regular expressions and runs them with `re` on every module name. `re`
backtracks: a pattern such as `(a|a)*b` takes exponential time and freezes the process. So the registry
never hands such a pattern to `re`: it is parsed by Python's own parser (the syntax PEFT's users wrote),
refused when it uses what only a backtracking matcher can do (backreferences, lookaround, conditionals,
atomic groups, possessive repeats, case-insensitive matching), and matched by simulating its automaton
(Thompson's construction): every step advances a set of states, so a match costs at most the name's length
times the pattern's size. The server then hands PEFT the module names it resolved, never a pattern.
"""

from __future__ import annotations

import re
import re._constants as _c  # Python's own regex parser (3.11+): the exact syntax PEFT's users wrote
import re._parser as _parser
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

MAX_PATTERN_CHARS = 1000
MAX_STATES = 1000  # after counted repeats are expanded: `x{500}` is 500 copies of `x`
MAX_NESTING = 100
MAX_REMEMBERED_STEPS = 4096  # per pattern

_REFUSED = {
    _c.GROUPREF: "a backreference",
    _c.GROUPREF_EXISTS: "a conditional group",
    _c.ASSERT: "a lookahead or lookbehind",
    _c.ASSERT_NOT: "a negative lookahead or lookbehind",
    _c.ATOMIC_GROUP: "an atomic group",
    _c.POSSESSIVE_REPEAT: "a possessive repeat",
}


class UnsafePattern(ValueError):
    """A pattern this matcher does not evaluate; the message says why."""


# An automaton state: ("char", test, next) consumes one character passing `test`; ("split", a, b) and
# ("empty", assertion, next) consume nothing (an assertion sees the text and the position); ("match",).
_State = tuple[Any, ...]


@dataclass
class _Automaton:
    states: list[_State] = field(default_factory=list)

    def add(self, state: _State) -> int:
        if len(self.states) >= MAX_STATES:
            raise UnsafePattern(f"it expands to more than {MAX_STATES} states (a large counted repeat?)")
        self.states.append(state)
        return len(self.states) - 1


@dataclass(frozen=True)
class Pattern:
    """A compiled pattern: `fullmatch` as `re.fullmatch`, `matches_name` as PEFT's rank/alpha keys.

    Steps already taken are remembered (a lazily built DFA): module names repeat the same few parts, so
    after the first names most characters cost one dict lookup.
    """

    source: str
    literal: str | None  # the one text it matches when it is plain text (the common case: a module name)
    _states: tuple[_State, ...] = ()
    _start: int = 0
    _asserts: bool = (
        False  # whether a state asks where it is (`^`, `$`, word boundaries): steps depend on that
    )
    _steps: dict[tuple[frozenset[int], str, _Context], frozenset[int]] = field(
        default_factory=dict, compare=False
    )

    def fullmatch(self, text: str, start: int = 0) -> bool:
        """Whether `text[start:]` matches as a whole (assertions such as `^` see all of `text`)."""
        if self.literal is not None:
            return text[start:] == self.literal
        current = self._closure({self._start}, self._context(text, start))
        for pos in range(start, len(text)):
            key = (current, text[pos], self._context(text, pos + 1))
            following = self._steps.get(key)
            if following is None:
                stepped = {
                    self._states[s][2]
                    for s in current
                    if self._states[s][0] == "char" and self._states[s][1](key[1])
                }
                following = self._closure(stepped, key[2])
                if len(self._steps) >= MAX_REMEMBERED_STEPS:
                    self._steps.clear()
                self._steps[key] = following
            if not following:
                return False
            current = following
        return any(self._states[s][0] == "match" for s in current)

    def matches_name(self, name: str) -> bool:
        """PEFT's rule for `rank_pattern`/`alpha_pattern` keys, `re.match(rf"(.*\\.)?({key})$", name)`: the
        pattern matches the whole name or the part after one of its dots."""
        starts = [0] + [i + 1 for i, char in enumerate(name) if char == "."]
        return any(self.fullmatch(name, start) for start in starts)

    def _context(self, text: str, pos: int) -> _Context:
        return _context(text, pos) if self._asserts else _NOWHERE

    def _closure(self, states: set[int], context: _Context) -> frozenset[int]:
        seen: set[int] = set()
        todo = list(states)
        while todo:
            index = todo.pop()
            if index in seen:
                continue
            seen.add(index)
            state = self._states[index]
            if state[0] == "split":
                todo += [state[1], state[2]]
            elif state[0] == "empty" and state[1](context):
                todo.append(state[2])
        return frozenset(seen)


# What assertions see at a position: at the start, at the end, before a final newline, after a word
# character, before a word character.
_Context = tuple[bool, bool, bool, bool, bool]


_NOWHERE: _Context = (False, False, False, False, False)


def _context(text: str, pos: int) -> _Context:
    return (
        pos == 0,
        pos == len(text),
        pos == len(text) - 1 and text[pos] == "\n",
        _is_word(text, pos - 1),
        _is_word(text, pos),
    )


def _is_word(text: str, pos: int) -> bool:
    return 0 <= pos < len(text) and (text[pos].isalnum() or text[pos] == "_")


@lru_cache(maxsize=256)
def compile_pattern(source: str) -> Pattern:
    """Parse `source` with Python's parser and build its automaton; `UnsafePattern` saying why not."""
    if len(source) > MAX_PATTERN_CHARS:
        raise UnsafePattern(f"it is longer than {MAX_PATTERN_CHARS} characters")
    if _nesting(source) > MAX_NESTING:  # Python's parser recurses per level
        raise UnsafePattern(f"its groups are nested more than {MAX_NESTING} deep")
    try:
        parsed = _parser.parse(source)
        flags = parsed.state.flags
        if flags & re.IGNORECASE:
            raise UnsafePattern("case-insensitive matching ((?i)) is not supported")
        literal = _literal_text(list(parsed))
        if literal is not None:
            return Pattern(source, literal)
        automaton = _Automaton()
        match = automaton.add(("match",))
        start = _build(list(parsed), match, automaton, dotall=bool(flags & re.DOTALL))
    except re.error as e:
        raise UnsafePattern(f"it is not a valid regular expression ({e})") from None
    asserts = any(state[0] == "empty" for state in automaton.states)
    return Pattern(source, None, tuple(automaton.states), start, asserts)


def _nesting(source: str) -> int:
    """How deep the pattern's groups nest (escapes and character classes skipped)."""
    depth = deepest = 0
    escaped = in_class = False
    for char in source:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
        elif char in "()":
            depth += 1 if char == "(" else -1
            deepest = max(deepest, depth)
    return deepest


def _literal_text(items: list[tuple[Any, Any]]) -> str | None:
    """The text a pattern of plain characters matches (None if it uses anything else)."""
    if all(op is _c.LITERAL for op, _ in items):
        return "".join(chr(code) for _, code in items)
    return None


def _build(items: list[tuple[Any, Any]], then: int, automaton: _Automaton, *, dotall: bool) -> int:
    """States matching `items` in sequence, continuing at `then`; returns the entry state."""
    entry = then
    for op, arg in reversed(items):
        entry = _build_one(op, arg, entry, automaton, dotall=dotall)
    return entry


def _build_one(op: Any, arg: Any, then: int, automaton: _Automaton, *, dotall: bool) -> int:
    if op in _REFUSED:
        raise UnsafePattern(f"it uses {_REFUSED[op]}, which only a backtracking matcher evaluates")
    if op is _c.LITERAL:
        return automaton.add(("char", _between(arg, arg), then))
    if op is _c.NOT_LITERAL:
        return automaton.add(("char", lambda ch, code=arg: ord(ch) != code, then))
    if op is _c.ANY:
        return automaton.add(("char", (lambda ch: True) if dotall else (lambda ch: ch != "\n"), then))
    if op is _c.IN:
        return automaton.add(("char", _class_test(arg), then))
    if op is _c.AT:
        return automaton.add(("empty", _assertion(arg), then))
    if op is _c.SUBPATTERN:
        _group, add_flags, _del_flags, sub = arg
        if add_flags & re.IGNORECASE:
            raise UnsafePattern("case-insensitive matching ((?i:...)) is not supported")
        return _build(list(sub), then, automaton, dotall=dotall or bool(add_flags & re.DOTALL))
    if op is _c.BRANCH:
        alternatives = [_build(list(sub), then, automaton, dotall=dotall) for sub in arg[1]]
        entry = alternatives[-1]
        for alternative in reversed(alternatives[:-1]):
            entry = automaton.add(("split", alternative, entry))
        return entry
    if op in (_c.MAX_REPEAT, _c.MIN_REPEAT):  # laziness changes which match is found, not whether one is
        low, high, sub = arg
        return _repeat(list(sub), low, None if high is _c.MAXREPEAT else high, then, automaton, dotall=dotall)
    raise UnsafePattern(f"it uses {str(op).lower()}, which this matcher does not support")


def _repeat(
    sub: list[tuple[Any, Any]], low: int, high: int | None, then: int, automaton: _Automaton, *, dotall: bool
) -> int:
    entry = then
    if high is None:  # x* after the required copies: a loop
        loop = automaton.add(("split", -1, then))
        body = _build(sub, loop, automaton, dotall=dotall)
        automaton.states[loop] = ("split", body, then)
        entry = loop
    else:
        for _ in range(high - low):  # optional copies: x? x? ... (each may stop the repeat)
            body = _build(sub, entry, automaton, dotall=dotall)
            entry = automaton.add(("split", body, then))
    for _ in range(low):
        entry = _build(sub, entry, automaton, dotall=dotall)
    return entry


_CATEGORIES: dict[Any, Callable[[str], bool]] = {
    _c.CATEGORY_DIGIT: str.isdecimal,
    _c.CATEGORY_NOT_DIGIT: lambda ch: not ch.isdecimal(),
    _c.CATEGORY_SPACE: str.isspace,
    _c.CATEGORY_NOT_SPACE: lambda ch: not ch.isspace(),
    _c.CATEGORY_WORD: lambda ch: ch.isalnum() or ch == "_",
    _c.CATEGORY_NOT_WORD: lambda ch: not (ch.isalnum() or ch == "_"),
}


def _class_test(items: list[tuple[Any, Any]]) -> Callable[[str], bool]:
    negate = False
    tests: list[Callable[[str], bool]] = []
    for op, arg in items:
        if op is _c.NEGATE:
            negate = True
        elif op is _c.LITERAL:
            tests.append(_between(arg, arg))
        elif op is _c.RANGE:
            tests.append(_between(*arg))
        elif op is _c.CATEGORY and arg in _CATEGORIES:
            tests.append(_CATEGORIES[arg])
        else:
            raise UnsafePattern(
                f"its character class uses {str(op).lower()}, which this matcher does not support"
            )
    return lambda ch: any(test(ch) for test in tests) != negate


def _between(low: int, high: int) -> Callable[[str], bool]:
    return lambda ch: low <= ord(ch) <= high


def _assertion(at: Any) -> Callable[[_Context], bool]:
    assertions: dict[Any, Callable[[_Context], bool]] = {
        _c.AT_BEGINNING: lambda ctx: ctx[0],  # no MULTILINE: module names hold no newline
        _c.AT_BEGINNING_STRING: lambda ctx: ctx[0],
        _c.AT_END: lambda ctx: ctx[1] or ctx[2],
        _c.AT_END_STRING: lambda ctx: ctx[1],
        _c.AT_BOUNDARY: lambda ctx: ctx[3] != ctx[4],
        _c.AT_NON_BOUNDARY: lambda ctx: ctx[3] == ctx[4],
    }
    if at not in assertions:
        raise UnsafePattern(f"it uses {str(at).lower()}, which this matcher does not support")
    return assertions[at]
