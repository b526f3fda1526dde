"""Tool-call parsers by name, as vLLM's `--tool-call-parser`: how a model writes its calls in the text.

A parser turns a request's function names (and whether parallel calls are allowed) into a `CallStream`
for each choice. Register one with `@tool_parser("name")`; `--tool-call-parser` picks it by that name.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .calls import CallScanner, CallStream, CallSyntax, call_head, gap

ToolParser = Callable[[Sequence[str], int | None], CallStream]
"""(the request's function names, the most calls to make or None) -> a choice's stream."""

TOOL_PARSERS: dict[str, ToolParser] = {}
DEFAULT_TOOL_PARSER = "hermes"


def tool_parser(name: str) -> Callable[[ToolParser], ToolParser]:
    def register(parser: ToolParser) -> ToolParser:
        TOOL_PARSERS[name] = parser
        return parser

    return register


def get_tool_parser(name: str) -> ToolParser:
    try:
        return TOOL_PARSERS[name]
    except KeyError:
        raise ValueError(
            f"no tool-call parser named {name!r} (there are: {', '.join(sorted(TOOL_PARSERS))})"
        ) from None


@tool_parser("hermes")
def hermes(names: Sequence[str], max_calls: int | None) -> CallStream:
    """Hermes' and Qwen's format, which the fallback prompt asks for (`prompt.py`):
    `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, one block per call. The closing tag may be
    left out; `"parameters"` is read as `"arguments"` (Llama's spelling)."""
    syntax = CallSyntax(
        opener=r"<tool_call>",
        head=call_head(names, ("arguments", "parameters")),
        closer=gap() + r"\}",
        after=gap() + r"</tool_call>",
        skip_to=r"</tool_call>",
    )
    return CallScanner(syntax, max_calls)
