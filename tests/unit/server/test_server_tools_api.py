"""Tools on `/v1/chat/completions` over the real engine on the tiny model: OpenAI-shaped 400s for what
OpenAI refuses, the engine request each `tool_choice` makes (tools in the prompt, a schema that forces a
call), a tool round trip, and replies with calls as whole answers and as OpenAI's stream of deltas."""

from __future__ import annotations

import json
from typing import Any

import pytest

from hotlora_server import protocol as p
from hotlora_server.api.serving import ChoiceAccumulator
from hotlora_server.api.serving_chat import ServingChat
from hotlora_server.metrics import Metrics
from hotlora_server.types import ChoiceDelta

from support.tiny_server import TINY_NAME

CHAT = "/v1/chat/completions"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TIME = {"type": "function", "function": {"name": "get_time"}}
USER = {"role": "user", "content": "Weather in Paris?"}
CALLED = {
    "role": "assistant",
    "content": None,
    "tool_calls": [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        }
    ],
}
RESULT = {"role": "tool", "tool_call_id": "call_1", "content": "rain"}


def body(**fields: Any) -> dict[str, Any]:
    return {"model": TINY_NAME, "messages": [USER], "max_tokens": 8, "temperature": 0, **fields}


def tool(name: str, parameters: Any = None, **function: Any) -> dict[str, Any]:
    spec = {"name": name, **function}
    if parameters is not None:
        spec["parameters"] = parameters
    return {"type": "function", "function": spec}


# -- what is refused -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "param", "says"),
    [
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice",
            "nope",
        ),
        ({"tool_choice": "required"}, "tool_choice", "needs `tools`"),
        (
            {"tools": [], "tool_choice": {"type": "function", "function": {"name": "f"}}},
            "tool_choice",
            "needs",
        ),
        ({"tools": [WEATHER], "tool_choice": "always"}, "tool_choice", "auto"),
        ({"tools": [tool("f", {"type": "string"})]}, "tools.0.function.parameters", 'type: "object"'),
        (
            {"tools": [tool("f", {"type": "object", "properties": {"x": "string"}})]},
            "tools.0.function.parameters",
            "not a valid JSON schema",
        ),
        (
            {"tools": [tool("f", {"type": "object", "required": "x"})]},
            "tools.0.function.parameters",
            "required",
        ),
        ({"tools": [tool("f", [1])]}, "tools.0.function.parameters", None),
        ({"tools": [WEATHER, WEATHER]}, "tools", "unique"),
        ({"tools": [tool("get weather")]}, "tools.0.function.name", None),
        ({"tools": [tool("x" * 65)]}, "tools.0.function.name", None),
        ({"tools": [{"type": "custom", "custom": {"name": "f"}}]}, "tools.0.type", None),
        ({"tools": [tool(f"f{i}") for i in range(129)]}, "tools", "at most 128"),
        ({"messages": [USER, RESULT]}, "messages", "call_1"),
        ({"messages": [USER, CALLED, {**RESULT, "tool_call_id": "call_2"}]}, "messages", "call_2"),
        ({"messages": [USER, CALLED, {"role": "tool", "content": "rain"}]}, "messages.2", "tool_call_id"),
        ({"messages": [{**USER, "tool_calls": CALLED["tool_calls"]}]}, "messages.0", "only assistant"),
        ({"messages": [{**USER, "tool_call_id": "call_1"}]}, "messages.0", "only tool"),
        ({"messages": [USER, {"role": "assistant", "content": None}]}, "messages.1", "`tool_calls`"),
        (
            {"messages": [USER, {**CALLED, "tool_calls": [{"id": "c", "function": {"name": "f"}}]}]},
            "messages.1",
            None,
        ),
        ({"parallel_tool_calls": "no"}, "parallel_tool_calls", None),
    ],
)
def test_bad_tools_are_400s(
    client: Any, openai_error: Any, fields: dict[str, Any], param: str, says: str | None
) -> None:
    error = openai_error(client.post(CHAT, json=body(**fields)), 400)
    assert error["type"] == "invalid_request_error"
    assert error["param"] is not None and error["param"].startswith(param), error
    if says is not None:
        assert says in error["message"], error


def test_required_with_tools_that_clash_in_defs_is_400(client: Any, openai_error: Any) -> None:
    a = tool(
        "a",
        {"type": "object", "$defs": {"x": {"type": "string"}}, "properties": {"v": {"$ref": "#/$defs/x"}}},
    )
    b = tool(
        "b",
        {"type": "object", "$defs": {"x": {"type": "integer"}}, "properties": {"v": {"$ref": "#/$defs/x"}}},
    )
    error = openai_error(client.post(CHAT, json=body(tools=[a, b], tool_choice="required")), 400)
    assert error["param"] == "tools" and "$defs.x" in error["message"]


def test_tools_stay_refused_on_text_completions(client: Any, openai_error: Any) -> None:
    response = client.post("/v1/completions", json={"model": TINY_NAME, "prompt": "x", "tools": [WEATHER]})
    assert "not supported" in openai_error(response, 400)["message"]


# -- the engine request --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chat(tiny_engine: Any) -> ServingChat:
    return ServingChat(tiny_engine, Metrics(tiny_engine.stats))


def engine_request(chat: ServingChat, **fields: Any) -> Any:
    return chat.engine_request(p.ChatCompletionRequest.model_validate(body(**fields)), "r1")


def test_tool_choice_decides_the_prompt_and_the_schema(chat: ServingChat) -> None:
    auto = engine_request(chat, tools=[WEATHER, TIME])
    assert auto.tools == (WEATHER, TIME) and auto.structured is None
    none = engine_request(chat, tools=[WEATHER], tool_choice="none", messages=[USER, CALLED, RESULT])
    assert none.tools is None and none.structured is None
    assert none.messages[1]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}  # an object
    assert none.messages[2] == {"role": "tool", "content": "rain", "tool_call_id": "call_1"}

    named = engine_request(
        chat, tools=[WEATHER, TIME], tool_choice={"type": "function", "function": {"name": "get_weather"}}
    )
    assert named.tools == (WEATHER, TIME)
    assert named.structured is not None
    assert json.loads(named.structured.json_schema) == {
        **WEATHER["function"]["parameters"],
        "additionalProperties": False,
    }
    no_parameters = engine_request(
        chat, tools=[TIME], tool_choice={"type": "function", "function": {"name": "get_time"}}
    )
    assert no_parameters.structured is not None
    assert json.loads(no_parameters.structured.json_schema) == {
        "type": "object",
        "properties": {},
        "additionalProperties": False,
    }


def test_required_decodes_an_array_of_calls_under_one_schema(chat: ServingChat) -> None:
    import jsonschema_rs

    refs = tool(
        "lookup",
        {
            "type": "object",
            "$defs": {"id": {"type": "integer"}},
            "properties": {"id": {"$ref": "#/$defs/id"}},
        },
    )
    request = engine_request(chat, tools=[WEATHER, TIME, refs], tool_choice="required")
    schema = json.loads(request.structured.json_schema)
    assert "maxItems" not in schema
    valid = jsonschema_rs.validator_for(schema)
    assert valid.is_valid(
        [{"name": "get_weather", "parameters": {"city": "Paris"}}, {"name": "get_time", "parameters": {}}]
    )
    assert valid.is_valid([{"name": "lookup", "parameters": {"id": 7}}])
    for wrong in (
        [],
        [{"name": "get_weather", "parameters": {}}],  # a required argument missing
        [{"name": "nope", "parameters": {}}],
        [{"name": "lookup", "parameters": {"id": "seven"}}],  # the moved $defs still apply
        [{"name": "get_time", "parameters": {}, "extra": 1}],
        [{"name": "get_weather", "parameters": {"city": "Paris", "type": "object"}}],  # closed arguments
    ):
        assert not valid.is_valid(wrong), wrong
    single = engine_request(chat, tools=[WEATHER], tool_choice="required", parallel_tool_calls=False)
    assert json.loads(single.structured.json_schema)["maxItems"] == 1


def test_forced_arguments_are_closed_objects_unless_the_schema_says_otherwise() -> None:
    from hotlora_server.tools import named_schema

    schema = {
        "type": "object",
        "properties": {
            "place": {"type": "object", "properties": {"city": {"type": "string"}}},
            "tags": {"type": "array", "items": {"type": "object", "properties": {"k": {"type": "string"}}}},
            "extra": {"type": "object", "properties": {}, "additionalProperties": {"type": "string"}},
            "both": {"allOf": [{"type": "object", "properties": {"a": {}}}, {"properties": {"b": {}}}]},
        },
        "$defs": {"x": {"type": "object", "properties": {"y": {}}}},
    }
    out = named_schema(schema)
    assert out["additionalProperties"] is False
    props = out["properties"]
    assert props["place"]["additionalProperties"] is False
    assert props["tags"]["items"]["additionalProperties"] is False
    assert props["extra"]["additionalProperties"] == {"type": "string"}  # said otherwise: kept
    assert all("additionalProperties" not in branch for branch in props["both"]["allOf"])  # would clash
    assert out["$defs"]["x"]["additionalProperties"] is False
    assert "additionalProperties" not in schema  # the request's own schema is left as it was


# -- replies -----------------------------------------------------------------------------------------------


def test_a_tool_round_trip_is_served(client: Any) -> None:
    response = client.post(CHAT, json=body(tools=[WEATHER], messages=[USER, CALLED, RESULT]))
    assert response.status_code == 200, response.text
    message = response.json()["choices"][0]["message"]
    assert message["role"] == "assistant" and (message["content"] is not None or message.get("tool_calls"))


def test_tokenize_renders_the_tools_as_chat_does(client: Any) -> None:
    tokens = client.post("/tokenize", json={"messages": [USER, CALLED, RESULT], "tools": [WEATHER]}).json()[
        "tokens"
    ]
    prompt = client.post("/detokenize", json={"tokens": tokens}).json()["prompt"]
    assert "# Tools" in prompt and '"name": "get_weather"' in prompt
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in prompt
    assert "<tool_response>\nrain\n</tool_response>" in prompt


def test_named_choice_always_answers_with_that_call(client: Any, sse: Any) -> None:
    """Whatever the tiny model writes is the call's arguments (decoded under the parameters' schema
    wherever the engine enforces `structured`), streamed like OpenAI's and reassembled alike."""
    fields = body(
        tools=[WEATHER, TIME],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=6,
    )
    answer = client.post(CHAT, json=fields).json()
    choice = answer["choices"][0]
    assert choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] == "get_weather"
    assert choice["finish_reason"] in ("tool_calls", "length")

    with client.stream("POST", CHAT, json={**fields, "stream": True}) as response:
        chunks = [c for c in sse(response) if c != "[DONE]"]
    deltas = [c["choices"][0] for c in chunks]
    assert deltas[0]["delta"] == {"role": "assistant", "content": ""}
    first = deltas[1]["delta"]["tool_calls"][0]
    assert set(first) == {"index", "id", "type", "function"} and first["function"] == {
        "name": "get_weather",
        "arguments": "",
    }
    pieces = [d["delta"]["tool_calls"][0] for d in deltas[2:] if d["delta"].get("tool_calls")]
    assert all(
        set(piece) == {"index", "function"} and set(piece["function"]) == {"arguments"} for piece in pieces
    )
    assert "".join(piece["function"]["arguments"] for piece in pieces) == call["function"]["arguments"]
    assert deltas[-1]["finish_reason"] == choice["finish_reason"]
    assert not any(d["delta"].get("content") for d in deltas)


def test_auto_streams_what_it_answers_whole(client: Any, sse: Any) -> None:
    """The tiny random model rarely writes a call; whatever it writes, streamed and whole agree."""
    fields = body(tools=[WEATHER], max_tokens=24, n=2, temperature=1.0, seed=3)
    whole = client.post(CHAT, json=fields).json()["choices"]
    with client.stream("POST", CHAT, json={**fields, "stream": True}) as response:
        chunks = [c for c in sse(response) if c != "[DONE]"]
    for choice in whole:
        deltas = [c["choices"][0] for c in chunks if c["choices"][0]["index"] == choice["index"]]
        content = "".join(d["delta"].get("content") or "" for d in deltas)
        assert content == (choice["message"]["content"] or "")
        assert deltas[-1]["finish_reason"] == choice["finish_reason"]


# -- replies with calls, as the serving layer writes them --------------------------------------------------

REPLY = [
    "Checking.",
    "\n<tool_call>\n",
    '{"name": "get_weather", "arguments": {"city"',
    ': "Paris"}}\n</tool_call>\n<tool_call>{"name": "get_time", ',
    '"arguments": {}}</tool_call>',
]


def test_calls_stream_as_openai_deltas_and_whole_answers_agree(chat: ServingChat) -> None:
    request = p.ChatCompletionRequest.model_validate(body(tools=[WEATHER, TIME]))
    build = chat.delta_choices(request)
    events = [ChoiceDelta(index=0, text=t) for t in REPLY[:-1]] + [
        ChoiceDelta(0, REPLY[-1], finish_reason="stop")
    ]
    chunks = [c.model_dump() for e in events for c in build(e)]
    assert chunks[0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[1]["delta"]["content"] == "Checking."
    tool_deltas = [c["delta"]["tool_calls"][0] for c in chunks if c["delta"].get("tool_calls")]
    starts = [d for d in tool_deltas if "id" in d]
    assert [(d["index"], d["type"], d["function"]) for d in starts] == [
        (0, "function", {"name": "get_weather", "arguments": ""}),
        (1, "function", {"name": "get_time", "arguments": ""}),
    ]
    arguments = {
        i: "".join(d["function"].get("arguments", "") for d in tool_deltas if d["index"] == i) for i in (0, 1)
    }
    assert arguments == {0: '{"city": "Paris"}', 1: "{}"}
    assert not any("<tool" in (c["delta"].get("content") or "") for c in chunks)
    assert chunks[-1]["finish_reason"] == "tool_calls"

    acc = ChoiceAccumulator()
    for event in events:
        acc.add(event)
    answer = chat.choice(request, 0, acc).model_dump()
    assert answer["message"]["content"] == "Checking."
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in answer["message"]["tool_calls"]] == [
        ("get_weather", '{"city": "Paris"}'),
        ("get_time", "{}"),
    ]
    assert answer["finish_reason"] == "tool_calls"


def test_calls_with_tool_choice_none_are_content(chat: ServingChat) -> None:
    request = p.ChatCompletionRequest.model_validate(body(tools=[WEATHER], tool_choice="none"))
    acc = ChoiceAccumulator()
    acc.add(ChoiceDelta(0, "".join(REPLY), finish_reason="stop"))
    answer = chat.choice(request, 0, acc).model_dump()
    assert answer["message"] == {"role": "assistant", "content": "".join(REPLY)}
    assert answer["finish_reason"] == "stop"


def test_a_reply_cut_by_max_tokens_keeps_length(chat: ServingChat) -> None:
    request = p.ChatCompletionRequest.model_validate(body(tools=[WEATHER]))
    acc = ChoiceAccumulator()
    acc.add(ChoiceDelta(0, '<tool_call>{"name": "get_weather", "arguments": {"ci', finish_reason="length"))
    answer = chat.choice(request, 0, acc).model_dump()
    assert answer["message"]["tool_calls"][0]["function"]["arguments"] == '{"ci'
    assert answer["finish_reason"] == "length"
