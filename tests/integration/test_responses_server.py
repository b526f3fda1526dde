"""`POST /v1/responses` end to end: real SmolLM2 in 4-bit, a real PEFT adapter, the official `openai` SDK's
`client.responses` (whole and streamed) and curl."""

from __future__ import annotations

import json
import shutil
import subprocess

import openai
import pytest

from support.live_server import ADAPTER, API_KEY, BASE_ID, RunningServer

pytestmark = pytest.mark.integration

QUESTION = "What is the capital of France?"
GREEDY = {"temperature": 0, "max_output_tokens": 48}


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
    with pytest.raises(openai.BadRequestError, match="not supported yet"):
        client.responses.create(
            model=BASE_ID,
            input=QUESTION,
            tools=[{"type": "function", "name": "f", "parameters": {}, "strict": True}],
        )


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_streams_named_events(server: RunningServer) -> None:
    body = json.dumps({"model": ADAPTER, "input": QUESTION, "max_output_tokens": 8, "stream": True})
    out = subprocess.run(
        [
            "curl",
            "-sSN",
            f"{server.v1}/responses",
            "-H",
            "Content-Type: application/json",
            "-H",
            f"Authorization: Bearer {API_KEY}",
            "-d",
            body,
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    lines = [line for line in out.stdout.splitlines() if line and not line.startswith(":")]
    names = [line.removeprefix("event: ") for line in lines[::2]]
    data = [json.loads(line.removeprefix("data: ")) for line in lines[1::2]]
    assert names[0] == "response.created" and names[-1] in ("response.completed", "response.incomplete")
    assert [d["type"] for d in data] == names and "[DONE]" not in out.stdout
    text = "".join(d["delta"] for d in data if d["type"] == "response.output_text.delta")
    assert text and data[-1]["response"]["output"][0]["content"][0]["text"] == text
    assert data[-1]["response"]["model"] == ADAPTER
