"""Tools in a chat request and its answer: what the prompt offers, the schema that forces a call, the reader
that splits each choice's text into content and calls, and those as OpenAI's message and stream deltas.

`tool_choice` decides: `none` (or no tools) leaves the reply plain content; `auto` reads calls the model
writes with the `--tool-call-parser`; `required` and a named function decode the reply under a schema
(`tools.forced`) and read it back as calls.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .. import protocol as p
from ..errors import InvalidRequestError
from ..tools import (
    CallArguments,
    CallStart,
    CallStream,
    ContentText,
    ForcedToolError,
    Item,
    NamedCall,
    ToolCall,
    ToolParser,
    named_schema,
    required_calls,
    required_schema,
    schema_text,
)
from ..types import FinishReason, StructuredOutput, TemplateTool

CallReader = Callable[[], CallStream]
"""A new choice's reader of tool calls."""


def template_tools(functions: Sequence[p.FunctionDefinition]) -> tuple[TemplateTool, ...] | None:
    """The functions as the prompt shows them (None: no tools in the prompt)."""
    return tuple({"type": "function", "function": f.template_dict()} for f in functions) or None


def forced_output(body: p.ChatCompletionRequest) -> StructuredOutput | None:
    """The schema a reply is decoded under when `tool_choice` requires a call (None: it does not)."""
    choice, functions = body.tool_choice, body.offered_tools()
    if isinstance(choice, p.NamedToolChoice):
        function = next(f for f in functions if f.name == choice.function.name)
        return StructuredOutput(json_schema=schema_text(named_schema(function.parameters)))
    if choice != "required":
        return None
    try:
        schema = required_schema([(f.name, f.parameters) for f in functions], body.parallel_calls())
    except ForcedToolError as exc:
        raise InvalidRequestError(str(exc), param="tools") from None
    return StructuredOutput(json_schema=schema_text(schema))


def call_reader(body: p.ChatCompletionRequest, parser: ToolParser) -> CallReader | None:
    """How each choice's text is read for calls (None: it is all content)."""
    choice, functions = body.tool_choice, body.offered_tools()
    if not functions:
        return None
    if isinstance(choice, p.NamedToolChoice):
        name = choice.function.name
        return lambda: NamedCall(name)
    names = [f.name for f in functions]
    max_calls = None if body.parallel_calls() else 1
    if choice == "required":
        return lambda: required_calls(names, max_calls)
    return lambda: parser(names, max_calls)


def message(content: str, calls: Sequence[ToolCall]) -> p.AssistantMessage:
    """A whole reply: content null when it is only calls, as OpenAI's."""
    if not calls:
        return p.AssistantMessage(content=content)
    tool_calls = [
        p.ToolCall(id=c.id, function=p.FunctionCall(name=c.name, arguments=c.arguments)) for c in calls
    ]
    return p.AssistantMessage(content=content or None, tool_calls=tool_calls)


def delta(item: Item) -> p.Delta:
    """One item of a streamed reply as OpenAI's delta."""
    if isinstance(item, ContentText):
        return p.Delta(content=item.text)
    if isinstance(item, CallStart):
        function = p.DeltaFunctionCall(name=item.name, arguments="")
        return p.Delta(
            tool_calls=[p.DeltaToolCall(index=item.index, id=item.id, type="function", function=function)]
        )
    assert isinstance(item, CallArguments)
    function = p.DeltaFunctionCall(arguments=item.text)
    return p.Delta(tool_calls=[p.DeltaToolCall(index=item.index, function=function)])


def finish_reason(reason: FinishReason | None, called: bool) -> p.ChatFinishReason:
    """`tool_calls` for a reply that made calls and ended by itself; a reply cut by `max_tokens` says so."""
    if called and reason in (None, "stop"):
        return "tool_calls"
    return reason or "stop"
