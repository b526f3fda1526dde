"""Function tools on `POST /v1/responses` over the tiny engine: the chat request they map to (tools,
`tool_choice`, function calls and their outputs in `input`), calls as `function_call` output items, whole
and as OpenAI's event stream (read by the official `openai` SDK too), and what is refused."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from hotlora_server import protocol as p
from hotlora_server.api.serving_chat import ServingChat
from hotlora_server.api.serving_responses import Answer, ResponseEvents
from hotlora_server.metrics import Metrics
from hotlora_server.types import ChoiceDelta, FinishReason, Usage

from support.tiny_server import TINY_NAME, live_app

RESPONSES = "/v1/responses"
PARAMETERS = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": PARAMETERS,
}
TIME = {"type": "function", "name": "get_time", "strict": False}
CHAT_WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "description": "The weather in a city", "parameters": PARAMETERS},
}
CHAT_TIME = {"type": "function", "function": {"name": "get_time", "strict": False}}
NAMED = {"type": "function", "name": "get_weather"}
QUESTION = "Weather in Paris?"
GREEDY = {"temperature": 0, "max_output_tokens": 8}
# an earlier answer sent back: its text, two calls, and their outputs
ROUND_TRIP: list[dict[str, Any]] = [
    {"role": "user", "content": QUESTION},
    {
        "type": "message",
        "id": "msg_1",
        "status": "completed",
        "role": "assistant",
        "content": [{"type": "output_text", "text": "Checking.", "annotations": []}],
    },
    {
        "type": "function_call",
        "id": "fc_1",
        "call_id": "call_1",
        "name": "get_weather",
        "arguments": '{"city": "Paris"}',
        "status": "completed",
    },
    {"type": "function_call", "call_id": "call_2", "name": "get_time", "arguments": "{}"},
    {"type": "function_call_output", "call_id": "call_1", "output": "rain"},
    {"type": "function_call_output", "call_id": "call_2", "output": [{"type": "input_text", "text": "noon"}]},
]
CHAT_ROUND_TRIP: list[dict[str, Any]] = [
    {"role": "user", "content": QUESTION},
    {
        "role": "assistant",
        "content": "Checking.",
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            },
            {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "rain"},
    {"role": "tool", "tool_call_id": "call_2", "content": "noon"},
]
# a reply as the engine writes it: text, then two calls in the hermes format
REPLY = [
    "Checking.",
    "\n<tool_call>\n",
    '{"name": "get_weather", "arguments": {"city"',
    ': "Paris"}}\n</tool_call>\n<tool_call>{"name": "get_time", ',
    '"arguments": {}}</tool_call>',
]


def request(**fields: Any) -> p.ResponsesRequest:
    return p.ResponsesRequest.model_validate({"model": TINY_NAME, "input": QUESTION, **GREEDY, **fields})


@pytest.fixture(scope="module")
def chat(tiny_engine: Any) -> ServingChat:
    return ServingChat(tiny_engine, Metrics(tiny_engine.stats))


def test_tools_and_calls_map_onto_chats_request(chat: ServingChat) -> None:
    """Same engine request as chat's for the same conversation: the prompt's tools and messages, and the
    schema a forced call is decoded under."""
    for choice, chat_choice in [
        (None, None),
        ("none", "none"),
        ("required", "required"),
        (NAMED, {"type": "function", "function": {"name": "get_weather"}}),
    ]:
        body = request(input=ROUND_TRIP, tools=[WEATHER, TIME], tool_choice=choice, parallel_tool_calls=False)
        chat_body = p.ChatCompletionRequest.model_validate(
            {
                "model": TINY_NAME,
                "messages": CHAT_ROUND_TRIP,
                "tools": [CHAT_WEATHER, CHAT_TIME],
                "tool_choice": chat_choice,
                "parallel_tool_calls": False,
                "temperature": 0,
                "max_completion_tokens": 8,
            }
        )
        ours, theirs = chat.engine_request(body.chat, "r1"), chat.engine_request(chat_body, "r1")
        assert ours == theirs, choice
    named = chat.engine_request(request(tools=[WEATHER, TIME], tool_choice=NAMED).chat, "r1")
    assert named.structured is not None and json.loads(named.structured.json_schema)["required"] == ["city"]


def test_consecutive_calls_are_one_assistant_turn() -> None:
    items = [
        {"role": "user", "content": QUESTION},
        ROUND_TRIP[2],
        ROUND_TRIP[4],
        {**ROUND_TRIP[2], "call_id": "call_3"},
        {**ROUND_TRIP[3], "call_id": "call_4"},
        {"type": "function_call_output", "call_id": "call_3", "output": "sun"},
        {"role": "assistant", "content": "Done."},
    ]
    messages = [
        m.model_dump(exclude_none=True) for m in request(input=items, tools=[WEATHER, TIME]).chat.messages
    ]
    assert [(m["role"], [c["id"] for c in m.get("tool_calls", [])]) for m in messages] == [
        ("user", []),
        ("assistant", ["call_1"]),
        ("tool", []),
        ("assistant", ["call_3", "call_4"]),
        ("tool", []),
        ("assistant", []),
    ]
    assert "content" not in messages[1] and messages[-1]["content"] == "Done."


# -- the answer, as the writer puts it together ------------------------------------------------------------


def write(
    chat: ServingChat, body: p.ResponsesRequest, pieces: list[str], finish: FinishReason
) -> list[tuple[str, Any]]:
    """The events a stream of `pieces` makes, as `(type, data)`."""
    writer = ResponseEvents(Answer(body, "r1", 1700000000), chat.call_reader(body.chat))
    deltas = [ChoiceDelta(0, t) for t in pieces[:-1]] + [ChoiceDelta(0, pieces[-1], finish_reason=finish)]
    frames = [f for d in deltas for f in writer.frames(d)] + writer.frames(
        Usage(prompt_tokens=7, completion_tokens=9)
    )
    events = [(f["event"], json.loads(f["data"])) for f in frames]
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    return events


def test_a_reply_with_text_and_calls_streams_as_openais_items(chat: ServingChat) -> None:
    events = write(chat, request(tools=[WEATHER, TIME]), REPLY, "stop")
    names = [name for name, _ in events]
    args = "response.function_call_arguments.delta"
    text = "response.output_text.delta"
    squeezed = [n for i, n in enumerate(names) if n not in (args, text) or names[i - 1] != n]
    assert squeezed == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        text,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        args,
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.output_item.added",
        args,
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    added = [data for name, data in events if name == "response.output_item.added"]
    assert [(a["output_index"], a["item"]["type"], a["item"]["status"]) for a in added] == [
        (0, "message", "in_progress"),
        (1, "function_call", "in_progress"),
        (2, "function_call", "in_progress"),
    ]
    first_call = added[1]["item"]
    assert (
        first_call["id"] == "fc_" + first_call["call_id"].removeprefix("call_")
        and first_call["arguments"] == ""
    )
    assert (first_call["name"], added[2]["item"]["name"]) == ("get_weather", "get_time")
    for index, arguments in [(1, '{"city": "Paris"}'), (2, "{}")]:
        pieces = [d for n, d in events if n == args and d["output_index"] == index]
        assert "".join(d["delta"] for d in pieces) == arguments and len(pieces) >= 1
        assert {d["item_id"] for d in pieces} == {added[index]["item"]["id"]}
        (done,) = [
            d
            for n, d in events
            if n == "response.function_call_arguments.done" and d["output_index"] == index
        ]
        assert done["arguments"] == arguments and done["item_id"] == added[index]["item"]["id"]
    final = events[-1][1]["response"]
    assert final["status"] == "completed" and final["incomplete_details"] is None
    assert final["output"] == [data["item"] for name, data in events if name == "response.output_item.done"]
    message, weather, time_call = final["output"]
    assert message["content"][0]["text"] == "Checking." and message["status"] == "completed"
    assert (weather["type"], weather["name"], weather["arguments"], weather["status"]) == (
        "function_call",
        "get_weather",
        '{"city": "Paris"}',
        "completed",
    )
    assert time_call["call_id"].startswith("call_") and time_call["call_id"] != weather["call_id"]
    assert [t["name"] for t in final["tools"]] == ["get_weather", "get_time"] and final[
        "tool_choice"
    ] == "auto"


def test_a_reply_of_calls_only_has_no_message_and_one_cut_short_is_incomplete(chat: ServingChat) -> None:
    whole = write(
        chat,
        request(tools=[WEATHER], tool_choice="required"),
        ['[{"name": "get_weather", "parameters": {"city": "Rome"}}]'],
        "stop",
    )
    final = whole[-1][1]["response"]
    assert [(o["type"], o["arguments"]) for o in final["output"]] == [("function_call", '{"city": "Rome"}')]
    assert final["tool_choice"] == "required"

    cut = write(chat, request(tools=[WEATHER], tool_choice=NAMED), ['{"city": "Ro'], "length")
    final = cut[-1]
    assert final[0] == "response.incomplete" and final[1]["response"]["incomplete_details"] == {
        "reason": "max_output_tokens"
    }
    (call,) = final[1]["response"]["output"]
    assert (call["arguments"], call["status"]) == ('{"city": "Ro', "incomplete")
    assert final[1]["response"]["tool_choice"] == NAMED


def test_a_failure_mid_call_fails_the_response_with_the_call_so_far(chat: ServingChat) -> None:
    body = request(tools=[WEATHER], tool_choice=NAMED)
    writer = ResponseEvents(Answer(body, "r1", 1700000000), chat.call_reader(body.chat))
    writer.frames(ChoiceDelta(0, '{"city"'))
    events = [
        (f["event"], json.loads(f["data"]))
        for f in writer.failed(p.ErrorDetail(message="boom", type="server_error"))
    ]
    assert [name for name, _ in events] == ["error", "response.failed"]
    (call,) = events[1][1]["response"]["output"]
    assert (call["type"], call["arguments"], call["status"]) == ("function_call", '{"city"', "incomplete")


# -- over HTTP and the official SDK -------------------------------------------------------------------------


def test_a_named_choice_answers_with_a_function_call_whole_and_streamed(client: Any) -> None:
    """Whatever the tiny model writes is the call's arguments (decoded under the parameters' schema
    wherever the engine enforces `structured`)."""
    body = {"model": TINY_NAME, "input": QUESTION, **GREEDY, "tools": [WEATHER, TIME], "tool_choice": NAMED}
    answer = client.post(RESPONSES, json=body).json()
    (call,) = answer["output"]
    assert call["type"] == "function_call" and call["name"] == "get_weather" and call["id"].startswith("fc_")
    chat = client.post(
        "/v1/chat/completions",
        json={
            "model": TINY_NAME,
            "messages": [{"role": "user", "content": QUESTION}],
            "temperature": 0,
            "max_tokens": 8,
            "tools": [CHAT_WEATHER, CHAT_TIME],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        },
    ).json()
    assert call["arguments"] == chat["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]
    assert answer["usage"]["input_tokens"] == chat["usage"]["prompt_tokens"]

    with client.stream("POST", RESPONSES, json={**body, "stream": True}) as response:
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    events = [json.loads(line.removeprefix("data: ")) for line in lines]
    deltas = [e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta"]
    assert "".join(deltas) == call["arguments"]
    assert [o["arguments"] for o in events[-1]["response"]["output"]] == [call["arguments"]]


def test_a_round_trip_is_chats_conversation(client: Any) -> None:
    """(Only `get_time` offered: the tiny model's context holds no more.)"""
    body = {"model": TINY_NAME, "input": ROUND_TRIP, **GREEDY, "tools": [TIME]}
    answer = client.post(RESPONSES, json=body).json()
    chat = client.post(
        "/v1/chat/completions",
        json={
            "model": TINY_NAME,
            "messages": CHAT_ROUND_TRIP,
            "temperature": 0,
            "max_tokens": 8,
            "tools": [CHAT_TIME],
        },
    ).json()
    assert answer["usage"]["input_tokens"] == chat["usage"]["prompt_tokens"]
    text = "".join(
        part["text"] for item in answer["output"] if item["type"] == "message" for part in item["content"]
    )
    assert text == (chat["choices"][0]["message"]["content"] or "")


@pytest.fixture(scope="module")
def sdk(tiny_engine: Any) -> Iterator[Any]:
    import openai

    from hotlora_server.api import create_app

    with live_app(create_app(tiny_engine)) as http:
        yield openai.OpenAI(base_url=f"{str(http.base_url).rstrip('/')}/v1", api_key="unused", max_retries=0)


def test_the_openai_sdk_reads_function_calls_and_their_stream(sdk: Any) -> None:
    import openai

    fields = {"model": TINY_NAME, "input": QUESTION, "tools": [WEATHER, TIME], "tool_choice": NAMED, **GREEDY}
    whole = sdk.responses.create(**fields)
    (call,) = whole.output
    assert isinstance(call, openai.types.responses.ResponseFunctionToolCall) and call.name == "get_weather"
    with sdk.responses.stream(**fields) as stream:
        events = list(stream)
    deltas = [e for e in events if e.type == "response.function_call_arguments.delta"]
    assert deltas and deltas[-1].snapshot == call.arguments
    final = events[-1].response  # `response.incomplete`: the tiny model runs into `max_output_tokens`
    assert [(o.type, o.name, o.arguments) for o in final.output] == [
        ("function_call", "get_weather", call.arguments)
    ]
    with pytest.raises(openai.BadRequestError) as info:
        sdk.responses.create(model=TINY_NAME, input=QUESTION, tools=[{"type": "web_search"}])
    assert info.value.param == "tools.0" and "web_search" in info.value.message


# -- what is refused ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "param", "words"),
    [
        ({"tools": [{"type": "web_search_preview"}]}, "tools.0", "`web_search_preview` are not supported"),
        ({"tools": [WEATHER, {"type": "file_search", "vector_store_ids": []}]}, "tools.1", "`file_search`"),
        ({"tools": [{**WEATHER, "name": "get weather"}]}, "tools.0.name", "pattern"),
        ({"tools": [{**WEATHER, "parameters": {"type": "string"}}]}, "tools.0.parameters", 'type: "object"'),
        ({"tools": [WEATHER, WEATHER]}, "tools", "unique"),
        ({"tool_choice": "required"}, "tool_choice", "needs `tools`"),
        ({"tool_choice": NAMED}, "tool_choice", "needs `tools`"),
        ({"tools": [TIME], "tool_choice": NAMED}, "tool_choice", "not among `tools`"),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "allowed_tools", "mode": "auto", "tools": []}},
            "tool_choice",
            "`allowed_tools`",
        ),
        ({"tools": [WEATHER], "tool_choice": "always"}, "tool_choice", "auto"),
        ({"parallel_tool_calls": "no"}, "parallel_tool_calls", None),
        ({"input": [ROUND_TRIP[0], ROUND_TRIP[4]]}, "input", "call_1"),
        ({"input": [ROUND_TRIP[0], {**ROUND_TRIP[2], "name": "a b"}]}, "input.1.name", "pattern"),
        ({"input": [ROUND_TRIP[0], {**ROUND_TRIP[2], "call_id": ""}]}, "input.1.call_id", "at least 1"),
        (
            {"input": [ROUND_TRIP[0], {"type": "function_call", "call_id": "c", "name": "f"}]},
            "input.1.arguments",
            "required",
        ),
        (
            {
                "input": [
                    *ROUND_TRIP[:3],
                    {**ROUND_TRIP[4], "output": [{"type": "input_image", "image_url": "x"}]},
                ]
            },
            "input.3.output",
            "input_text",
        ),
        ({"input": [{"type": "reasoning", "summary": []}]}, "input.0", "`reasoning` are not supported"),
    ],
)
def test_refused_with_a_400_that_names_the_problem(
    client: Any, openai_error: Any, fields: dict[str, Any], param: str, words: str | None
) -> None:
    body = {"model": TINY_NAME, "input": QUESTION, **fields}
    error = openai_error(client.post(RESPONSES, json=body), 400)
    assert error["type"] == "invalid_request_error"
    assert error["param"] is not None and error["param"].startswith(param), error
    if words is not None:
        assert words in error["message"], error
