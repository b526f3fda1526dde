"""`tool_choice: "required"` and a named function: the reply decoded under a JSON schema, as vLLM does it, so
even a small model returns a call that parses and fits the function's parameters.

A named function's reply is its arguments object, decoded under the function's `parameters`. `required`
decodes a JSON array of `{"name": ..., "parameters": {...}}`, each item one of the tools (an `anyOf` over
them; one item at most without parallel calls). Both are read back into calls here, streamed like any.

Objects that do not say whether they take other properties are closed (`additionalProperties: false`, as
OpenAI's strict mode requires): a function has no use for arguments it did not declare, and a small model
left free to add some copies the tool's schema from its prompt into the arguments.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from .calls import (
    CallArguments,
    CallScanner,
    CallStart,
    CallStream,
    CallSyntax,
    Item,
    call_head,
    gap,
    new_call_id,
)

EMPTY_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}
_DEFS = ("$defs", "definitions")
_OPEN_ENDED = ("additionalProperties", "patternProperties", "unevaluatedProperties")
_COMBINED = ("allOf", "anyOf", "oneOf", "$ref")
_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "prefixItems")
_SUBSCHEMA_MAPS = ("properties", "$defs", "definitions", "dependentSchemas")
_SUBSCHEMAS = ("items", "not", "if", "then", "else", "contains", "additionalItems")


class ForcedToolError(ValueError):
    """The tools cannot be put under one schema (two define the same `$defs` entry differently)."""


def schema_text(schema: Mapping[str, Any]) -> str:
    """A schema as compact JSON text (key order kept: it is the order a grammar writes the properties in)."""
    return json.dumps(schema, separators=(",", ":"), ensure_ascii=False)


def named_schema(parameters: Mapping[str, Any] | None) -> dict[str, Any]:
    """A named function's reply: its arguments object (no parameters: an empty object), closed."""
    return closed(parameters or EMPTY_PARAMETERS)


def closed(schema: Any) -> Any:
    """`schema` with every object that lists `properties`, and says nothing of other ones, closed.

    An object whose properties come from a combination (`allOf`, `$ref`, ...) is left as it is, and so are
    the branches of an `allOf`: closing either would refuse the properties the other part declares.
    """
    if not isinstance(schema, Mapping):
        return schema
    out = dict(schema)
    if "properties" in out and not any(k in out for k in (*_OPEN_ENDED, *_COMBINED)):
        out["additionalProperties"] = False
    for key in _SUBSCHEMA_LISTS:
        if isinstance(out.get(key), list):
            out[key] = [closed(s) for s in out[key]]
    for key in _SUBSCHEMA_MAPS:
        if isinstance(out.get(key), Mapping):
            out[key] = {name: closed(s) for name, s in out[key].items()}
    for key in _SUBSCHEMAS:
        if key in out:
            out[key] = closed(out[key])
    return out


def required_schema(tools: Sequence[tuple[str, Mapping[str, Any] | None]], parallel: bool) -> dict[str, Any]:
    """`required`'s reply: an array of calls, each `{"name": <a tool>, "parameters": <its arguments>}`.

    References inside a tool's parameters (`#/$defs/x`) point at the root of the schema they were written
    in; under the array they would point at its root, so every tool's `$defs` move there.
    """
    defs: dict[str, Any] = {}
    choices = []
    for name, parameters in tools:
        params = named_schema(parameters)
        for key in _DEFS:
            for def_name, definition in (params.pop(key, None) or {}).items():
                if defs.setdefault(def_name, definition) != definition:
                    raise ForcedToolError(
                        f"tool '{name}' defines `{key}.{def_name}` differently from another tool: with "
                        '`tool_choice: "required"` the tools share one schema, so give them distinct names'
                    )
        choices.append(
            {
                "type": "object",
                "properties": {"name": {"type": "string", "enum": [name]}, "parameters": params},
                "required": ["name", "parameters"],
                "additionalProperties": False,
            }
        )
    schema: dict[str, Any] = {"type": "array", "minItems": 1, "items": {"anyOf": choices}}
    if not parallel:
        schema["maxItems"] = 1
    if defs:
        schema["$defs"] = defs
    return schema


def required_calls(names: Sequence[str], max_calls: int | None) -> CallStream:
    """Calls read from `required`'s array; its brackets and commas are not content."""
    syntax = CallSyntax(
        opener=r"[\[,]", head=call_head(names, ("parameters",)), closer=gap() + r"\}", content=False
    )
    return CallScanner(syntax, max_calls)


class NamedCall:
    """A named function's reply: one call, whose arguments are the whole text (leading whitespace left out)."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._started = False
        self._leading = True  # no text seen yet but whitespace

    def feed(self, text: str) -> list[Item]:
        out = self._start()
        if self._leading:
            text = text.lstrip()
            self._leading = not text
        if text:
            out.append(CallArguments(0, text))
        return out

    def finish(self) -> list[Item]:
        return self._start()

    def _start(self) -> list[Item]:
        if self._started:
            return []
        self._started = True
        return [CallStart(0, new_call_id(), self._name)]
