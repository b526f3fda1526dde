"""Tool calls read from a reply's text: the JSON scanner against `json.loads`, the `hermes` parser on whole
replies and on every way a stream can split them, the forced formats of `required` and a named function,
and the parser registry."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from hotlora_server.tools import (
    TOOL_PARSERS,
    CallArguments,
    CallStart,
    CallStream,
    ContentText,
    Item,
    NamedCall,
    get_tool_parser,
    read_all,
    required_calls,
)
from hotlora_server.tools.json_prefix import JsonObjectScanner, Step

NAMES = ["get_weather", "get_time", "f"]


def hermes(max_calls: int | None = None) -> CallStream:
    return get_tool_parser("hermes")(NAMES, max_calls)


def reassemble(items: list[Item]) -> tuple[str, list[tuple[str, str]]]:
    """A stream's items as a client rebuilds them: the content, and each call's name and arguments."""
    content = "".join(i.text for i in items if isinstance(i, ContentText))
    names = {i.index: i.name for i in items if isinstance(i, CallStart)}
    args: dict[int, str] = {}
    for item in items:
        if isinstance(item, CallArguments):
            assert item.index in names, "arguments before their call's start"
            args[item.index] = args.get(item.index, "") + item.text
    assert sorted(names) == list(range(len(names))), "call indexes are 0, 1, ... in order"
    return content, [(names[i], args.get(i, "")) for i in sorted(names)]


def whole(stream: CallStream, text: str) -> tuple[str, list[tuple[str, str]]]:
    content, calls = read_all(stream, text)
    assert all(c.id.startswith("call_") and len(c.id) == 29 for c in calls)
    return content, [(c.name, c.arguments) for c in calls]


# -- the JSON object scanner -----------------------------------------------------------------------------


def scan(text: str) -> tuple[str, int]:
    scanner = JsonObjectScanner()
    for i, ch in enumerate(text):
        step = scanner.feed(ch)
        if step is not Step.ACCEPT:
            return ("done" if step is Step.DONE else "reject"), i
    return "open", len(text)


def _random_value(rng: random.Random, depth: int) -> Any:
    kind = rng.randrange(7 if depth < 4 else 4)
    if kind == 0:
        return rng.choice([0, -1, 1.5, -0.25e-3, 123456789, 1e20, 0.0, 2**70])
    if kind == 1:
        return rng.choice(["", 'a"b', "\\", "é\n", "\u2028", "}]", "\x7f"])
    if kind == 2:
        return rng.choice([True, False, None])
    if kind == 3:
        return rng.randrange(-5, 5)
    if kind == 4:
        return {f"k{i}": _random_value(rng, depth + 1) for i in range(rng.randrange(3))}
    return [_random_value(rng, depth + 1) for _ in range(rng.randrange(3))]


def _parses_as_object(text: str) -> bool:
    def refuse(constant: str) -> None:
        raise ValueError(constant)  # NaN and Infinity are not JSON

    try:
        return isinstance(json.loads(text, parse_constant=refuse), dict)
    except ValueError:
        return False


def test_json_scanner_agrees_with_json_loads() -> None:
    """On thousands of JSON objects and mutations of them: the scanner ends an object exactly where a
    valid one ends, and what it accepts as complete parses."""
    rng = random.Random(0)
    noise = list('{}[]",:. \n\t-+0123456789eEtrufalsn\\/xé') + ["\\u00e9", "\x01", "\\x"]
    for _ in range(6000):
        obj = {f"k{i}": _random_value(rng, 1) for i in range(rng.randrange(4))}
        text = json.dumps(obj, indent=rng.choice([None, 1]), ensure_ascii=rng.random() < 0.5)
        if rng.random() < 0.6:
            chars = list(text)
            for _ in range(rng.randrange(1, 3)):
                at = rng.randrange(len(chars) + 1)
                op = rng.randrange(3)
                if op == 0 and chars:
                    del chars[min(at, len(chars) - 1)]
                elif op == 1:
                    chars.insert(at, rng.choice(noise))
                elif chars:
                    chars[min(at, len(chars) - 1)] = rng.choice(noise)
            text = "".join(chars)
        verdict, at = scan(text)
        ends = len(text.rstrip(" \t\n\r")) - 1
        assert ((verdict, at) == ("done", ends)) == _parses_as_object(text), text
        if verdict == "done":
            assert _parses_as_object(text[: at + 1]), text


@pytest.mark.parametrize(
    ("text", "verdict"),
    [
        ('{"a": 01}', ("reject", 7)),
        ('{"a": 1.}', ("reject", 8)),
        ('{"a": NaN}', ("reject", 6)),
        ('{"a": "\x01"}', ("reject", 7)),
        ('{"a": "\\q"}', ("reject", 8)),
        ('{"a": [1, 2,]}', ("reject", 12)),
        ('{"a": "}"}', ("done", 9)),
        ('{"a": {"b": [1e-3, true, null]}}', ("done", 31)),
        ('{"a": 1', ("open", 7)),
        ("[1]", ("reject", 0)),
    ],
)
def test_json_scanner_cases(text: str, verdict: tuple[str, int]) -> None:
    assert scan(text) == verdict


def test_json_scanner_rejects_a_character_without_changing_state() -> None:
    scanner = JsonObjectScanner()
    for ch in '{"a": 12':
        assert scanner.feed(ch) is Step.ACCEPT
    assert scanner.feed("x") is Step.REJECT
    assert scanner.feed("}") is Step.DONE and scanner.done


# -- the hermes parser -------------------------------------------------------------------------------------

CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": [1, {"x": "}"}]}}\n</tool_call>'
CASES = [
    # (reply, content, calls)
    (CALL, "", [("get_weather", '{"city": "Paris", "days": [1, {"x": "}"}]}')]),
    (
        'Let me check.\n<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>\n'
        '<tool_call>{"name":"get_time","arguments":{}}</tool_call>\n',
        "Let me check.",
        [("get_weather", '{"city": "Paris"}'), ("get_time", "{}")],
    ),
    # the closing tag may be left out, before the next call or at the end
    (
        '<tool_call>{"name": "f", "arguments": {"a": 1}}\n<tool_call>{"name": "f", "arguments": {"a": 2}}',
        "",
        [("f", '{"a": 1}'), ("f", '{"a": 2}')],
    ),
    # Llama's spelling of the arguments key
    ('<tool_call>{"name": "f", "parameters": {"a": 1}}</tool_call>', "", [("f", '{"a": 1}')]),
    # not JSON, an unknown function, arguments that are not an object: content, as written
    ("Hello <tool_call>not json</tool_call> there", "Hello <tool_call>not json</tool_call> there", []),
    (
        '<tool_call>{"name": "unknown", "arguments": {}}</tool_call>',
        '<tool_call>{"name": "unknown", "arguments": {}}</tool_call>',
        [],
    ),
    (
        '<tool_call>{"name": "f", "arguments": "a"}</tool_call>',
        '<tool_call>{"name": "f", "arguments": "a"}</tool_call>',
        [],
    ),
    ("<tool_call><tool_call>", "<tool_call><tool_call>", []),
    (
        '<tool_call>{"name": "f", "arguments": {"ville": "Zürich", "pluie": "🌧"}}</tool_call>',
        "",
        [("f", '{"ville": "Zürich", "pluie": "🌧"}')],
    ),
    ("  a reply with no call, spaces kept  \n", "  a reply with no call, spaces kept  \n", []),
    ("<tool_c", "<tool_c", []),
    ("", "", []),
    # cut off by max_tokens in the arguments: the call is made, its arguments as far as they got
    ('<tool_call>{"name": "f", "arguments": {"a": [1, ', "", [("f", '{"a": [1, ')]),
    # after the arguments object, what breaks the format is dropped up to the closing tag
    (
        '<tool_call>{"name": "f", "arguments": {"a": 1}, "extra": 2}</tool_call> done',
        " done",
        [("f", '{"a": 1}')],
    ),
]


@pytest.mark.parametrize(("text", "content", "calls"), CASES)
def test_hermes_reads_whole_replies(text: str, content: str, calls: list[tuple[str, str]]) -> None:
    assert whole(hermes(), text) == (content, calls)


@pytest.mark.parametrize(("text", "content", "calls"), CASES)
def test_hermes_streams_the_same_reply_however_it_is_split(
    text: str, content: str, calls: list[tuple[str, str]]
) -> None:
    """Split at every character boundary (the engine hands over whole characters; in these replies that is
    every byte boundary but inside the non-ASCII ones), at pairs of them, and one character at a time: the
    reassembled stream is the whole reply's answer, and no markup leaks into the content."""
    expected = (content, calls)
    one_by_one = hermes()
    items = [item for ch in text for item in one_by_one.feed(ch)] + one_by_one.finish()
    assert reassemble(items) == expected
    for i in range(len(text) + 1):
        for j in range(i, len(text) + 1, 1 if len(text) < 60 else 7):
            stream = hermes()
            items = [
                *stream.feed(text[:i]),
                *stream.feed(text[i:j]),
                *stream.feed(text[j:]),
                *stream.finish(),
            ]
            assert reassemble(items) == expected, (i, j)


def test_hermes_streams_a_call_as_openai_does() -> None:
    """Content first; a call's first item names it; its arguments follow as they are generated."""
    stream = hermes()
    pieces = [
        "Sure",
        "!\n<tool",
        '_call>\n{"name": "get_',
        'weather", "arguments": {"ci',
        'ty": "Pa',
        'ris"}}',
        "\n</tool_call>",
    ]
    out = [stream.feed(p) for p in pieces] + [stream.finish()]
    assert out[0] == [ContentText("Sure")]
    assert out[1] == [ContentText("!")]  # the newline is held: only content may follow it
    assert out[2] == []
    start, first = out[3]
    assert isinstance(start, CallStart) and start.name == "get_weather" and start.index == 0
    assert first == CallArguments(0, '{"ci')
    assert out[4] == [CallArguments(0, 'ty": "Pa')]
    assert out[5] == [CallArguments(0, 'ris"}')]
    assert out[6] == [] and out[7] == []


def test_hermes_without_parallel_calls_makes_one() -> None:
    text = (
        '<tool_call>{"name": "f", "arguments": {"a": 1}}</tool_call>\n'
        '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>'
    )
    assert whole(hermes(max_calls=1), text) == ("", [("f", '{"a": 1}')])
    assert whole(hermes(), text) == ("", [("f", '{"a": 1}'), ("get_time", "{}")])


# -- required and named ----------------------------------------------------------------------------------


def test_required_array_is_read_as_calls() -> None:
    text = '[{"name": "get_weather", "parameters": {"city": "Paris"}}, {"name": "f", "parameters": {}}]'
    expected = ("", [("get_weather", '{"city": "Paris"}'), ("f", "{}")])
    assert whole(required_calls(NAMES, None), text) == expected
    for cut in range(len(text) + 1):
        stream = required_calls(NAMES, None)
        assert reassemble([*stream.feed(text[:cut]), *stream.feed(text[cut:]), *stream.finish()]) == expected
    assert whole(required_calls(NAMES, 1), text) == ("", [("get_weather", '{"city": "Paris"}')])


def test_named_choice_reply_is_the_arguments() -> None:
    assert whole(NamedCall("f"), ' \n{"a": 1}') == ("", [("f", '{"a": 1}')])
    stream = NamedCall("f")
    items = [*stream.feed(" "), *stream.feed(" {"), *stream.feed('"a": 1}'), *stream.finish()]
    assert isinstance(items[0], CallStart) and items[0].name == "f"
    assert reassemble(items) == ("", [("f", '{"a": 1}')])
    assert whole(NamedCall("f"), "") == ("", [("f", "")])  # cut before any text: the call, empty


# -- the registry ------------------------------------------------------------------------------------------


def test_parser_registry() -> None:
    assert "hermes" in TOOL_PARSERS
    with pytest.raises(ValueError, match="hermes"):
        get_tool_parser("no-such-parser")
