"""Tools in the prompt, with the real SmolLM2 tokenizer: its ChatML template has no tool support, so the
conversation is written in the documented fallback format; a template that reads `tools` gets them as
they are. A call the fallback shows in the history reads back as the same call."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from hotlora_server.engine.prompts import chat_prompt_text
from hotlora_server.errors import InvalidRequestError
from hotlora_server.tools import get_tool_parser, read_all, supports_tools
from hotlora_server.tools.prompt import TOOLS_PROMPT

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": {"city": "Zürich"}},
}
HISTORY = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Zürich and Bern?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            CALL,
            {
                "id": "call_2",
                "type": "function",
                "function": {"name": "get_weather", "arguments": {"city": "Bern"}},
            },
        ],
    },
    {"role": "tool", "content": "rain", "tool_call_id": "call_1"},
    {"role": "tool", "content": "sun", "tool_call_id": "call_2"},
]

# a template in the style of Qwen 2.5's, which renders tools, calls and results itself
TOOL_TEMPLATE = (
    "{% if tools %}TOOLS:{% for t in tools %} {{ t.function.name }}{% endfor %}{{ '\\n' }}{% endif %}"
    "{% for m in messages %}[{{ m.role }}] {{ m.content }}"
    "{% for c in m.tool_calls or [] %} CALL {{ c.function.name }} {{ c.function.arguments | tojson }}{% endfor %}"
    "{% if m.tool_call_id %} FOR {{ m.tool_call_id }}{% endif %}{{ '\\n' }}{% endfor %}"
)


@pytest.fixture(scope="module")
def smol(real_tokenizer: Any) -> Any:
    return real_tokenizer


@pytest.fixture(scope="module")
def tool_tokenizer(real_tokenizer: Any) -> Any:
    tokenizer = copy.deepcopy(real_tokenizer)
    tokenizer.chat_template = TOOL_TEMPLATE
    return tokenizer


def test_tool_support_is_read_from_the_template(smol: Any) -> None:
    assert not supports_tools(smol.get_chat_template())  # SmolLM2-135M-Instruct's ChatML
    assert supports_tools(TOOL_TEMPLATE)
    assert not supports_tools("{% for m in messages %}{{ m.content }}{% endfor %}")


def test_fallback_prompt_on_smollm2(smol: Any) -> None:
    text = chat_prompt_text(smol, HISTORY, [WEATHER])
    tools_block = TOOLS_PROMPT.format(tools=json.dumps(WEATHER, ensure_ascii=False))
    assert text == (
        f"<|im_start|>system\nBe brief.\n\n{tools_block}<|im_end|>\n"
        "<|im_start|>user\nWeather in Zürich and Bern?<|im_end|>\n"
        "<|im_start|>assistant\n"
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Zürich"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Bern"}}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\n<tool_response>\nrain\n</tool_response>\n"
        "<tool_response>\nsun\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_fallback_without_a_system_message_makes_the_tools_one(smol: Any) -> None:
    text = chat_prompt_text(smol, [{"role": "user", "content": "hi"}], [WEATHER])
    assert text.startswith("<|im_start|>system\n# Tools\n")
    assert "You are a helpful AI assistant named SmolLM" not in text  # the tools block is the system turn


def test_no_tools_leaves_the_history_rendered_alike(smol: Any) -> None:
    """`tool_choice: "none"` offers no tools; the calls already made still read as they did."""
    with_tools, without = chat_prompt_text(smol, HISTORY, [WEATHER]), chat_prompt_text(smol, HISTORY)
    assert "# Tools" not in without and "<tools>" not in without
    assert without.split("<|im_start|>user", 1)[1] == with_tools.split("<|im_start|>user", 1)[1]


def test_plain_chat_is_unchanged(smol: Any) -> None:
    messages = [{"role": "user", "content": "hi"}]
    assert chat_prompt_text(smol, messages) == smol.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=False
    )


def test_a_call_in_the_fallback_reads_back_as_the_same_call(smol: Any) -> None:
    text = chat_prompt_text(smol, HISTORY[:3], add_generation_prompt=False)
    reply = text.rsplit("<|im_start|>assistant\n", 1)[1].removesuffix("<|im_end|>\n")
    content, calls = read_all(get_tool_parser("hermes")(["get_weather"], None), reply)
    assert content == ""
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [
        ("get_weather", {"city": "Zürich"}),
        ("get_weather", {"city": "Bern"}),
    ]


def test_a_template_with_tool_support_renders_them_itself(tool_tokenizer: Any) -> None:
    text = chat_prompt_text(tool_tokenizer, HISTORY, [WEATHER], add_generation_prompt=False)
    assert text.startswith("TOOLS: get_weather\n")
    # arguments reach the template as an object (`tojson` writes it once, not as a quoted string)
    assert 'CALL get_weather {"city": "Zürich"}' in text
    assert "[tool] rain FOR call_1" in text
    assert not chat_prompt_text(tool_tokenizer, HISTORY, None).startswith("TOOLS")


def test_a_template_that_refuses_the_messages_is_a_400(smol: Any) -> None:
    tokenizer = copy.deepcopy(smol)
    tokenizer.chat_template = "{% for m in messages %}{% if m.role == 'tool' %}{{ raise_exception('no tools') }}{% endif %}{% endfor %}{{ tools }}"
    with pytest.raises(InvalidRequestError, match="no tools"):
        chat_prompt_text(tokenizer, HISTORY, [WEATHER])
