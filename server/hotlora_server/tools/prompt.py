"""Tools in the prompt: the model's chat template renders them when it can, this fallback when it cannot.

A template that reads a `tools` variable renders the tool definitions, assistant `tool_calls` and `tool`
messages itself (transformers decides the same way: the variables a template reads, by `jinja2.meta`).
Others, such as SmolLM2's plain ChatML, get the conversation rewritten as plain system, user and
assistant turns in Hermes' and Qwen 2.5's format, which the `hermes` parser reads back:

- the tools, as JSON, in a `# Tools` block appended to the system message (or as the system message);
- an assistant's calls as `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` lines after its text;
- tool results as `<tool_response>...</tool_response>` blocks, consecutive ones in one user turn.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import jinja2
from jinja2 import meta
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

TOOLS_PROMPT = """# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{tools}
</tools>

For each function call, return a json object with function name and arguments within \
<tool_call></tool_call> XML tags:
<tool_call>
{{"name": <function-name>, "arguments": <args-json-object>}}
</tool_call>"""


@lru_cache(maxsize=16)
def supports_tools(template: str) -> bool:
    """Whether `template` renders tools itself: it reads the `tools` variable."""
    env = ImmutableSandboxedEnvironment(extensions=[loopcontrols])
    try:
        return "tools" in meta.find_undeclared_variables(env.parse(template))
    except jinja2.TemplateSyntaxError:  # rendering reports it
        return False


def tools_block(tools: Sequence[dict[str, Any]]) -> str:
    return TOOLS_PROMPT.format(tools="\n".join(json.dumps(t, ensure_ascii=False) for t in tools))


def call_text(call: dict[str, Any]) -> str:
    """One call as the fallback prompt shows it (arguments as the client sent them when not an object)."""
    function = call["function"]
    body = json.dumps({"name": function["name"], "arguments": function["arguments"]}, ensure_ascii=False)
    return f"<tool_call>\n{body}\n</tool_call>"


def fallback_messages(
    messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] | None
) -> list[dict[str, Any]]:
    """The conversation as plain turns for a template without tool support (see the module's doc)."""
    out: list[dict[str, Any]] = []
    results = False  # the last turn holds tool results: the next result joins it
    for message in messages:
        role, content = message["role"], message.get("content") or ""
        if role == "tool":
            block = f"<tool_response>\n{content}\n</tool_response>"
            if results:
                out[-1]["content"] += "\n" + block
            else:
                out.append({"role": "user", "content": block})
            results = True
            continue
        results = False
        if message.get("tool_calls"):
            calls = "\n".join(call_text(call) for call in message["tool_calls"])
            content = f"{content}\n{calls}" if content else calls
        out.append({"role": role, "content": content})
    if tools:
        if out and out[0]["role"] == "system":
            out[0]["content"] = f"{out[0]['content']}\n\n{tools_block(tools)}"
        else:
            out.insert(0, {"role": "system", "content": tools_block(tools)})
    return out
