"""The tools a chat request offers the model: `tools`, `tool_choice` and `parallel_tool_calls`, as OpenAI's.

What OpenAI refuses is refused here with a 400 naming the field: a function name outside its rule, two
tools of one name, parameters that are not a JSON schema of an object, a `tool_choice` that needs tools
without any, or one naming a function that is not among them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any, Literal

import jsonschema_rs
from pydantic import Field, ValidationInfo, field_validator

from .common import FunctionName, Text, _Open, _Strict

MAX_TOOLS = 128  # OpenAI's limit


def schema_problem(schema: dict[str, Any]) -> str | None:
    """What makes `schema` no valid JSON schema (checked against its draft's meta-schema), or None."""
    try:
        jsonschema_rs.meta.validate(schema)
    except Exception as exc:  # a ValidationError, or a meta-schema the library cannot resolve
        where = ".".join(map(str, getattr(exc, "instance_path", ()) or ()))
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"{first} (at `{where}`)" if where else first
    return None


def check_unique_names(names: Iterable[str]) -> None:
    """Two tools of one name are refused, as OpenAI does: a call could not say which it means."""
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"two tools are named '{name}': function names must be unique")
        seen.add(name)


def check_choice(forced: bool, named: str | None, tool_names: Iterable[str]) -> None:
    """A `tool_choice` that forces a call needs tools, and one naming a function needs it among them."""
    names = set(tool_names)
    if forced and not names:
        raise ValueError("a `tool_choice` that requires a call needs `tools` to call")
    if named is not None and named not in names:
        raise ValueError(f"names function '{named}', which is not among `tools` ({', '.join(sorted(names))})")


class FunctionDefinition(_Strict):
    name: FunctionName
    description: Text | None = None
    parameters: dict[str, Any] | None = None  # a JSON schema of the arguments object; None: no arguments
    strict: bool | None = None  # accepted; calls follow the schema exactly under `required` or a named choice

    @field_validator("parameters")
    @classmethod
    def _check_parameters(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return value
        kind = value.get("type", "object")
        if kind != "object":
            raise ValueError(
                f'must be a JSON schema of `type: "object"` (the arguments are an object), not {kind!r}'
            )
        problem = schema_problem(value)
        if problem is not None:
            raise ValueError(f"not a valid JSON schema: {problem}")
        return value

    def template_dict(self) -> dict[str, Any]:
        """The function as chat templates take it (OpenAI's shape, without the fields left out)."""
        return self.model_dump(exclude_none=True, exclude={"strict"})


class ToolDefinition(_Strict):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Strict):
    name: FunctionName


class NamedToolChoice(_Strict):
    """`{"type": "function", "function": {"name": ...}}`: the reply is a call to that function."""

    type: Literal["function"]
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice
Tools = Annotated[list[ToolDefinition], Field(max_length=MAX_TOOLS, fail_fast=True)]


class _ToolFields(_Open):
    """A chat request's tool fields (a mixin of `ChatCompletionRequest`)."""

    tools: Tools | None = None
    tool_choice: ToolChoice | None = None  # default: "auto" with tools, "none" without (OpenAI's)
    parallel_tool_calls: bool | None = None  # default true; false: at most one call

    @field_validator("tools")
    @classmethod
    def _unique_names(cls, tools: list[ToolDefinition] | None) -> list[ToolDefinition] | None:
        check_unique_names(tool.function.name for tool in tools or ())
        return tools

    @field_validator("tool_choice")
    @classmethod
    def _choice_fits_tools(cls, choice: ToolChoice | None, info: ValidationInfo) -> ToolChoice | None:
        if "tools" not in info.data:  # `tools` itself is invalid: that is the error to report
            return choice
        named = choice.function.name if isinstance(choice, NamedToolChoice) else None
        tools = info.data["tools"] or ()
        check_choice(choice == "required" or named is not None, named, (tool.function.name for tool in tools))
        return choice

    def offered_tools(self) -> list[FunctionDefinition]:
        """The functions the model may call: none with `tool_choice: "none"`."""
        if self.tool_choice == "none":
            return []
        return [tool.function for tool in self.tools or ()]

    def parallel_calls(self) -> bool:
        return self.parallel_tool_calls is not False
