"""`POST /v1/responses` end to end: real SmolLM2 in 4-bit, a real PEFT adapter, the official `openai` SDK's
`client.responses` (whole and streamed, function calls and their outputs) and curl.

As on chat (`test_tools.py`), a 135M model calls a tool from a bare question only when made to; after
three earlier questions answered by a call, its output and a sentence, greedy decoding calls the tool for
the fourth city and, given its output, answers in a sentence. `required` and a named function must give
a valid call whatever the model would write: they are decoded under the tools' JSON schemas."""

from __future__ import annotations

import json
import shutil
from typing import TYPE_CHECKING, Any

import openai
import pytest
from pydantic import BaseModel, Field

from support.live_server import ADAPTER, BASE_ID, RunningServer, curl

if TYPE_CHECKING:
    from openai.types.responses import ResponseInputParam

pytestmark = pytest.mark.integration

QUESTION = "What is the capital of France?"
GREEDY = {"temperature": 0, "max_output_tokens": 48}
WEATHER: Any = {
    "type": "function",
    "name": "get_weather",
    "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
TIME: Any = {
    "type": "function",
    "name": "get_time",
    "description": "Get the local time in a time zone",
    "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]},
}
FEW_SHOT: ResponseInputParam = []
for _i, _city in enumerate(["London", "Berlin", "Rome"]):
    FEW_SHOT += [
        {"role": "user", "content": f"What is the weather in {_city}?"},
        {
            "type": "function_call",
            "call_id": f"call_{_i}",
            "name": "get_weather",
            "arguments": json.dumps({"city": _city}),
        },
        {"type": "function_call_output", "call_id": f"call_{_i}", "output": "sunny"},
        {"role": "assistant", "content": f"It is sunny in {_city}."},
    ]
FEW_SHOT.append({"role": "user", "content": "What is the weather in Paris?"})
TOOLS = {"temperature": 0, "max_output_tokens": 40, "tools": [WEATHER]}


def test_the_sdk_creates_a_response(client: openai.OpenAI) -> None:
    reply = client.responses.create(model=BASE_ID, input=QUESTION, instructions="Answer briefly.", **GREEDY)
    assert reply.id.startswith("resp_") and reply.model == BASE_ID and "Paris" in reply.output_text
    assert reply.status == "completed" and reply.incomplete_details is None  # it stops on its own
    assert reply.usage is not None and 0 < reply.usage.output_tokens < 48 and reply.usage.input_tokens > 10
    assert reply.usage.total_tokens == reply.usage.input_tokens + reply.usage.output_tokens
    chat = client.chat.completions.create(
        model=BASE_ID,
        messages=[
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": QUESTION},
        ],
        temperature=0,
        max_tokens=48,
    )
    assert reply.output_text == chat.choices[0].message.content
    short = client.responses.create(model=BASE_ID, input=QUESTION, temperature=0, max_output_tokens=2)
    assert short.status == "incomplete" and short.incomplete_details.reason == "max_output_tokens"
    assert short.usage is not None and short.usage.output_tokens == 2


def test_the_sdk_streams_a_response(client: openai.OpenAI) -> None:
    whole = client.responses.create(model=BASE_ID, input=QUESTION, **GREEDY)
    with client.responses.stream(model=BASE_ID, input=QUESTION, **GREEDY) as stream:
        deltas = [event.delta for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()  # needs `response.completed`
    assert "".join(deltas) == final.output_text == whole.output_text and len(deltas) > 1
    assert final.usage == whole.usage
    events = list(client.responses.create(model=BASE_ID, input=QUESTION, stream=True, **GREEDY))
    assert [e.type for e in events[:2]] == ["response.created", "response.in_progress"]
    assert events[-1].type == "response.completed" and events[-1].response.output_text == whole.output_text
    assert [e.sequence_number for e in events] == list(range(len(events)))


def test_an_adapter_is_the_model(client: openai.OpenAI) -> None:
    conversation = [
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": [{"type": "output_text", "text": "Hello! How can I help?"}]},
        {"role": "user", "content": [{"type": "input_text", "text": QUESTION}]},
    ]
    reply = client.responses.create(model=ADAPTER, input=conversation, temperature=0, max_output_tokens=12)
    chat = client.chat.completions.create(
        model=ADAPTER,
        messages=[
            {"role": "user", "content": "Hi!"},
            {"role": "assistant", "content": "Hello! How can I help?"},
            {"role": "user", "content": QUESTION},
        ],
        temperature=0,
        max_tokens=12,
    )
    assert reply.model == ADAPTER and reply.output_text == chat.choices[0].message.content
    base = client.responses.create(model=BASE_ID, input=conversation, temperature=0, max_output_tokens=12)
    assert base.output_text != reply.output_text  # the adapter changes the answer


def test_stored_responses_are_refused(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model=BASE_ID, input=QUESTION, store=True)
    assert info.value.param == "store" and "keeps no responses" in info.value.message
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model=BASE_ID, input=QUESTION, previous_response_id="resp_123")
    assert info.value.param == "previous_response_id"
    with pytest.raises(openai.BadRequestError, match="hosted tools") as info:
        client.responses.create(model=BASE_ID, input=QUESTION, tools=[{"type": "web_search"}])
    assert info.value.param == "tools.0"


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_streams_named_events(server: RunningServer) -> None:
    body = {"model": ADAPTER, "input": QUESTION, "max_output_tokens": 8, "stream": True}
    out = curl(server, "/responses", body)
    lines = [line for line in out.splitlines() if line and not line.startswith(":")]
    names = [line.removeprefix("event: ") for line in lines[::2]]
    data = [json.loads(line.removeprefix("data: ")) for line in lines[1::2]]
    assert names[0] == "response.created" and names[-1] in ("response.completed", "response.incomplete")
    assert [d["type"] for d in data] == names and "[DONE]" not in out
    text = "".join(d["delta"] for d in data if d["type"] == "response.output_text.delta")
    assert text and data[-1]["response"]["output"][0]["content"][0]["text"] == text
    assert data[-1]["response"]["model"] == ADAPTER


# -- function tools ----------------------------------------------------------------------------------------


def test_the_sdk_gets_a_function_call_and_sends_its_output_back(client: openai.OpenAI) -> None:
    reply = client.responses.create(model=BASE_ID, input=FEW_SHOT, **TOOLS)
    assert reply.status == "completed" and reply.output_text == ""  # only the call: no message
    (call,) = reply.output
    assert isinstance(call, openai.types.responses.ResponseFunctionToolCall)
    assert call.id is not None and call.id.startswith("fc_") and call.call_id.startswith("call_")
    assert (call.name, json.loads(call.arguments), call.status) == (
        "get_weather",
        {"city": "Paris"},
        "completed",
    )
    assert [tool.name for tool in reply.tools if tool.type == "function"] == ["get_weather"]

    conversation: ResponseInputParam = [
        *FEW_SHOT,
        *reply.output,  # type: ignore[list-item]  # output items are valid input, as OpenAI's own
        {"type": "function_call_output", "call_id": call.call_id, "output": "rain, 11 degrees"},
    ]
    answer = client.responses.create(model=BASE_ID, input=conversation, **TOOLS)
    assert answer.status == "completed" and "Paris" in answer.output_text
    assert [item.type for item in answer.output] == ["message"]


def test_the_sdk_streams_a_function_call(client: openai.OpenAI) -> None:
    whole = client.responses.create(model=BASE_ID, input=FEW_SHOT, **TOOLS)
    with client.responses.stream(model=BASE_ID, input=FEW_SHOT, **TOOLS) as stream:
        events = list(stream)
        final = stream.get_final_response()
    deltas = [e for e in events if e.type == "response.function_call_arguments.delta"]
    (done,) = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert len(deltas) > 1 and "".join(e.delta for e in deltas) == done.arguments
    (call,) = final.output
    assert call.type == "function_call" and (call.name, call.arguments) == (
        "get_weather",
        whole.output[0].arguments,
    )
    assert [e.type for e in events if e.type.startswith("response.output_item")] == [
        "response.output_item.added",
        "response.output_item.done",
    ]


def test_a_named_function_gives_valid_arguments_from_a_plain_question(client: openai.OpenAI) -> None:
    named: Any = {"type": "function", "name": "get_weather"}
    reply = client.responses.create(
        model=BASE_ID,
        input="What is the weather in Paris?",
        tools=[WEATHER, TIME],
        tool_choice=named,
        temperature=0,
        max_output_tokens=40,
    )
    (call,) = reply.output
    assert call.type == "function_call" and call.name == "get_weather"
    arguments = json.loads(call.arguments)
    assert set(arguments) == {"city"} and isinstance(arguments["city"], str)


def test_required_gives_one_valid_call_without_parallel_calls(client: openai.OpenAI) -> None:
    reply = client.responses.create(
        model=BASE_ID,
        input="What is the weather in Paris?",
        tools=[WEATHER, TIME],
        tool_choice="required",
        parallel_tool_calls=False,
        temperature=0,
        max_output_tokens=40,
    )
    (call,) = reply.output
    assert call.type == "function_call" and reply.status == "completed"
    key = {"get_weather": "city", "get_time": "zone"}[call.name]
    arguments = json.loads(call.arguments)
    assert set(arguments) == {key} and isinstance(arguments[key], str)


# -- text.format -------------------------------------------------------------------------------------------


class Person(BaseModel):
    name: str = Field(max_length=30)  # bounded, as real schemas are: a small model may ramble in a string
    age: int = Field(ge=0, le=120)


def test_the_sdk_parses_a_response_into_a_pydantic_model(client: openai.OpenAI) -> None:
    reply = client.responses.parse(
        model=BASE_ID, input="Alice is 31 years old.", text_format=Person, temperature=0, max_output_tokens=60
    )
    assert reply.status == "completed" and isinstance(reply.output_parsed, Person)
    assert reply.output_parsed == Person.model_validate_json(reply.output_text)
    assert reply.text.format.type == "json_schema" and reply.text.format.name == "Person"
    with client.responses.stream(
        model=BASE_ID, input="Alice is 31 years old.", text_format=Person, temperature=0, max_output_tokens=60
    ) as stream:
        final = stream.get_final_response()
    assert final.output_parsed == reply.output_parsed
