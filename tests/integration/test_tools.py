"""Tool calling end to end: the real SmolLM2-135M-Instruct in 4-bit behind `hotlora serve`, talked to with the
official `openai` SDK, LangChain's `ChatOpenAI`, our SDK and curl.

SmolLM2's template has no tool support, so the server writes the tools into the prompt in its fallback
format. A 135M model does not call tools reliably from a bare question; after three earlier questions
answered by a call, its result and a sentence, greedy decoding (temperature 0) calls the tool for the
fourth city and, given its result, answers in a sentence: that makes `auto` deterministic here. `required` and a named function must give a valid call whatever
the model would write: they are decoded under the tools' JSON schemas (the engine's `structured` output).
"""

from __future__ import annotations

import json
import shutil
from typing import Any

import openai
import pytest

from support.live_server import API_KEY, BASE_ID, RunningServer, curl

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Get the local time in a time zone",
        "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]},
    },
}


def call_message(i: int, city: str) -> dict[str, Any]:
    arguments = json.dumps({"city": city})
    call = {
        "id": f"call_{i}",
        "type": "function",
        "function": {"name": "get_weather", "arguments": arguments},
    }
    return {"role": "assistant", "content": None, "tool_calls": [call]}


# three questions, each answered by a call, its result and a sentence: the model follows the pattern
FEW_SHOT: list[dict[str, Any]] = []
for _i, _city in enumerate(["London", "Berlin", "Rome"]):
    FEW_SHOT += [
        {"role": "user", "content": f"What is the weather in {_city}?"},
        call_message(_i, _city),
        {"role": "tool", "tool_call_id": f"call_{_i}", "content": "sunny"},
        {"role": "assistant", "content": f"It is sunny in {_city}."},
    ]
FEW_SHOT.append({"role": "user", "content": "What is the weather in Paris?"})
PLAIN = [{"role": "user", "content": "What is the weather in Paris?"}]


def chat(client: openai.OpenAI, messages: list[Any], **options: Any) -> Any:
    return client.chat.completions.create(
        model=BASE_ID, messages=messages, **{"temperature": 0, "max_tokens": 40, **options}
    )


def reassemble(chunks: list[Any]) -> tuple[str, list[tuple[str, str, str]], str | None]:
    """Content, calls (id, name, arguments) and finish reason of a streamed answer, as a client joins them."""
    content, calls, finish = "", {}, None
    for chunk in chunks:
        for choice in chunk.choices:
            content += choice.delta.content or ""
            for piece in choice.delta.tool_calls or []:
                call = calls.setdefault(piece.index, ["", "", ""])
                if piece.id:
                    call[0] = piece.id
                if piece.function and piece.function.name:
                    call[1] += piece.function.name
                if piece.function and piece.function.arguments:
                    call[2] += piece.function.arguments
            finish = choice.finish_reason or finish
    return content, [tuple(calls[i]) for i in sorted(calls)], finish


# -- auto --------------------------------------------------------------------------------------------


def test_openai_sdk_tool_call_and_round_trip(client: openai.OpenAI) -> None:
    answer = chat(client, FEW_SHOT, tools=[WEATHER, TIME])
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.id.startswith("call_") and call.type == "function"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}

    conversation = [
        *FEW_SHOT,
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "rain, 11 degrees"},
    ]
    reply = chat(client, conversation, tools=[WEATHER, TIME])
    assert reply.choices[0].finish_reason == "stop"
    assert reply.choices[0].message.tool_calls is None
    assert "Paris" in (reply.choices[0].message.content or "")


def test_openai_sdk_streams_the_same_call(client: openai.OpenAI) -> None:
    whole = chat(client, FEW_SHOT, tools=[WEATHER, TIME]).choices[0]
    chunks = list(chat(client, FEW_SHOT, tools=[WEATHER, TIME], stream=True))
    content, calls, finish = reassemble(chunks)
    assert (content, finish) == ("", "tool_calls")
    assert [(name, args) for _, name, args in calls] == [
        ("get_weather", whole.message.tool_calls[0].function.arguments)
    ]
    first = next(c.choices[0].delta.tool_calls[0] for c in chunks if c.choices[0].delta.tool_calls)
    assert first.id and first.type == "function" and first.function.arguments == ""
    assert sum(bool(c.choices[0].delta.tool_calls) for c in chunks) > 2  # the arguments come in pieces

    # the SDK's own stream helper puts the call together the same way
    with client.chat.completions.stream(
        model=BASE_ID, messages=FEW_SHOT, tools=[WEATHER, TIME], temperature=0, max_tokens=40
    ) as stream:
        final = stream.get_final_completion().choices[0]
    assert final.finish_reason == "tool_calls"
    assert [(c.function.name, c.function.arguments) for c in final.message.tool_calls] == [
        ("get_weather", whole.message.tool_calls[0].function.arguments)
    ]


def test_auto_answers_a_plain_question_with_text(client: openai.OpenAI) -> None:
    """Offered tools, the model may answer in words: then it is content, and `stop`."""
    choice = chat(client, [{"role": "user", "content": "Say hello."}], tools=[WEATHER]).choices[0]
    if choice.message.tool_calls is None:
        assert choice.message.content and "<tool_call>" not in choice.message.content
        assert choice.finish_reason in ("stop", "length")
    else:
        assert choice.finish_reason in ("tool_calls", "length")


def test_tool_choice_none_never_calls(client: openai.OpenAI) -> None:
    choice = chat(client, FEW_SHOT, tools=[WEATHER], tool_choice="none").choices[0]
    assert choice.message.tool_calls is None and choice.finish_reason in ("stop", "length")


def test_langchain_bind_tools_and_tool_message(server: RunningServer) -> None:
    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    @tool
    def get_weather(city: str) -> str:
        """Get the current weather in a city"""
        return f"rain in {city}"

    history: list[Any] = []
    for i, city in enumerate(["London", "Berlin", "Rome"]):
        history += [
            HumanMessage(f"What is the weather in {city}?"),
            AIMessage("", tool_calls=[{"name": "get_weather", "args": {"city": city}, "id": f"call_{i}"}]),
            ToolMessage("sunny", tool_call_id=f"call_{i}"),
            AIMessage(f"It is sunny in {city}."),
        ]
    history.append(HumanMessage("What is the weather in Paris?"))
    model = ChatOpenAI(
        base_url=server.v1, api_key=API_KEY, model=BASE_ID, temperature=0, max_tokens=40, max_retries=0
    ).bind_tools([get_weather])

    answer = model.invoke(history)
    assert [(c["name"], c["args"]) for c in answer.tool_calls] == [("get_weather", {"city": "Paris"})]
    result = get_weather.invoke(answer.tool_calls[0])
    assert isinstance(result, ToolMessage) and result.tool_call_id == answer.tool_calls[0]["id"]
    reply = model.invoke([*history, answer, result])
    assert not reply.tool_calls and "Paris" in reply.content


def test_our_sdk_types_the_calls(server: RunningServer) -> None:
    from hotlora_client import Client

    with Client(server.base_url, api_key=API_KEY, max_retries=0) as sdk:
        answer = sdk.chat(FEW_SHOT, tools=[WEATHER], temperature=0, max_tokens=40)
        assert [(c.function.name, c.function.parsed_arguments()) for c in answer.tool_calls] == [
            ("get_weather", {"city": "Paris"})
        ]
        with sdk.chat(FEW_SHOT, tools=[WEATHER], temperature=0, max_tokens=40, stream=True) as stream:
            chunks = list(stream)
        assert [(c.function.name, c.function.arguments) for c in stream.tool_calls] == [
            (c.function.name, c.function.arguments) for c in answer.tool_calls
        ]
        assert chunks[-1].choices[0].finish_reason == "tool_calls"


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_tool_call_whole_and_streamed(server: RunningServer) -> None:
    body = {"model": BASE_ID, "messages": FEW_SHOT, "tools": [WEATHER], "temperature": 0, "max_tokens": 40}
    message = json.loads(curl(server, "/chat/completions", body))["choices"][0]["message"]
    assert message["content"] is None
    assert message["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}

    events = [
        line.removeprefix("data: ")
        for line in curl(server, "/chat/completions", {**body, "stream": True}).splitlines()
        if line.startswith("data: ")
    ]
    assert events[-1] == "[DONE]"
    pieces = [
        c["choices"][0]["delta"]["tool_calls"][0]
        for c in map(json.loads, events[:-1])
        if c["choices"][0]["delta"].get("tool_calls")
    ]
    assert pieces[0]["function"]["name"] == "get_weather"
    assert "".join(p["function"]["arguments"] for p in pieces) == '{"city": "Paris"}'


# -- required and a named function (decoded under the tools' schemas) ------------------------------------
# These need the engine to enforce `GenerationRequest.structured` (the structured-outputs work).


def test_named_function_gives_valid_arguments_from_a_plain_question(client: openai.OpenAI) -> None:
    named = {"type": "function", "function": {"name": "get_weather"}}
    choice = chat(client, PLAIN, tools=[WEATHER, TIME], tool_choice=named).choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather"
    arguments = json.loads(call.function.arguments)
    assert set(arguments) == {"city"} and isinstance(arguments["city"], str)

    content, calls, finish = reassemble(
        list(chat(client, PLAIN, tools=[WEATHER, TIME], tool_choice=named, stream=True))
    )
    assert (content, [(name, args) for _, name, args in calls], finish) == (
        "",
        [("get_weather", call.function.arguments)],
        "tool_calls",
    )


@pytest.mark.parametrize("parallel", [True, False])
def test_required_gives_valid_calls_from_a_plain_question(client: openai.OpenAI, parallel: bool) -> None:
    """With parallel calls the small model may go on adding calls until `max_tokens` (finish `length`):
    every call it finished is valid all the same."""
    options = {
        "tools": [WEATHER, TIME],
        "tool_choice": "required",
        "parallel_tool_calls": parallel,
        "max_tokens": 80,
    }
    choice = chat(client, PLAIN, **options).choices[0]
    calls = choice.message.tool_calls
    assert choice.message.content is None and calls
    if parallel:
        assert choice.finish_reason in ("tool_calls", "length")
    else:
        assert choice.finish_reason == "tool_calls" and len(calls) == 1
    finished = calls if choice.finish_reason == "tool_calls" else calls[:-1]
    for call in finished:
        arguments = json.loads(call.function.arguments)
        key = {"get_weather": "city", "get_time": "zone"}[call.function.name]
        assert set(arguments) == {key} and isinstance(arguments[key], str)

    streamed = reassemble(list(chat(client, PLAIN, stream=True, **options)))
    assert [(name, args) for _, name, args in streamed[1]] == [
        (c.function.name, c.function.arguments) for c in calls
    ]
    assert streamed[2] == choice.finish_reason
