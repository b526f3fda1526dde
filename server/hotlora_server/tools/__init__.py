"""Tool calling, free of the model stack: the prompt's tools (`prompt`), parsers of the calls a model writes
(`parsers`, picked by `--tool-call-parser`), the schemas that force a call (`forced`), and the stream that
splits a reply into content and calls (`calls`, over `json_prefix`).
"""

from .calls import (
    CallArguments,
    CallStart,
    CallStream,
    ContentText,
    Item,
    ToolCall,
    new_call_id,
    read_all,
)
from .forced import ForcedToolError, NamedCall, named_schema, required_calls, required_schema, schema_text
from .parsers import DEFAULT_TOOL_PARSER, TOOL_PARSERS, ToolParser, get_tool_parser, tool_parser
from .prompt import fallback_messages, supports_tools

__all__ = [
    "DEFAULT_TOOL_PARSER",
    "TOOL_PARSERS",
    "CallArguments",
    "CallStart",
    "CallStream",
    "ContentText",
    "ForcedToolError",
    "Item",
    "NamedCall",
    "ToolCall",
    "ToolParser",
    "fallback_messages",
    "get_tool_parser",
    "named_schema",
    "new_call_id",
    "read_all",
    "required_calls",
    "required_schema",
    "schema_text",
    "supports_tools",
    "tool_parser",
]
