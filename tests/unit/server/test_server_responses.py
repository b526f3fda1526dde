"""`POST /v1/responses` on the tiny engine: the same answer as chat for the same conversation, OpenAI's
response object and event stream (read by the official `openai` SDK too), and what it refuses."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from support.tiny_server import ADAPTER_NAME, TINY_NAME, live_app

RESPONSES = "/v1/responses"
QUESTION = "Tell me about the sea."
GREEDY = {"temperature": 0, "max_output_tokens": 8}
BOOM = "boom-response"
EVENT_ORDER = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    # response.output_text.delta, one per piece of text
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    # response.completed or response.incomplete
]


def _respond(client: Any, **fields: Any) -> dict[str, Any]:
    response = client.post(RESPONSES, json={"model": TINY_NAME, "input": QUESTION, **GREEDY, **fields})
    assert response.status_code == 200, response.text
    return response.json()


def _chat(
    client: Any, messages: list[dict[str, Any]], model: str = TINY_NAME, **fields: Any
) -> dict[str, Any]:
    body = {"model": model, "messages": messages, "temperature": 0, "max_tokens": 8, **fields}
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def _text(answer: dict[str, Any]) -> str:
    """What the SDK's `output_text` reads: the text of every `output_text` part of every message."""
    return "".join(
        part["text"]
        for item in answer["output"]
        if item["type"] == "message"
        for part in item["content"]
        if part["type"] == "output_text"
    )


def _without_ids(answer: dict[str, Any]) -> dict[str, Any]:
    """A response less what differs between two requests: ids and times."""
    output = [{**item, "id": None} for item in answer["output"]]
    return {**answer, "id": None, "created_at": None, "completed_at": None, "output": output}


def _events(
    client: Any, headers: dict[str, str] | None = None, **fields: Any
) -> list[tuple[str, dict[str, Any]]]:
    """The stream's `(event name, data)` pairs, checking that each `data:` follows its `event:` line."""
    body = {"model": TINY_NAME, "input": QUESTION, **GREEDY, "stream": True, **fields}
    with client.stream("POST", RESPONSES, json=body, headers=headers or {}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line and not line.startswith(":")]
    events: list[tuple[str, dict[str, Any]]] = []
    for name, data in zip(lines[::2], lines[1::2], strict=True):
        assert name.startswith("event: ") and data.startswith("data: "), (name, data)
        events.append((name.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return events


# -- the answer ------------------------------------------------------------------------------------------


def test_a_response_is_chats_answer_as_a_response_object(client: Any) -> None:
    answer = _respond(client, instructions="Answer briefly.", metadata={"ticket": "42"}, user="u-1")
    chat = _chat(
        client, [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": QUESTION}]
    )
    assert answer["id"].startswith("resp_") and answer["object"] == "response"
    assert isinstance(answer["created_at"], int) and answer["model"] == TINY_NAME
    assert (answer["status"], answer["incomplete_details"]) == ("incomplete", {"reason": "max_output_tokens"})
    [message] = answer["output"]
    assert message["id"].startswith("msg_") and (message["type"], message["role"]) == ("message", "assistant")
    assert message["status"] == "incomplete"
    assert message["content"] == [
        {
            "type": "output_text",
            "text": chat["choices"][0]["message"]["content"],
            "annotations": [],
            "logprobs": [],
        }
    ]
    usage = chat["usage"]
    assert answer["usage"] == {
        "input_tokens": usage["prompt_tokens"],
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": usage["completion_tokens"],
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage["total_tokens"],
    }
    echoed = {k: answer[k] for k in ("instructions", "max_output_tokens", "metadata", "temperature", "user")}
    assert echoed == {
        "instructions": "Answer briefly.",
        "max_output_tokens": 8,
        "metadata": {"ticket": "42"},
        "temperature": 0,
        "user": "u-1",
    }
    assert (answer["store"], answer["tools"], answer["text"]) == (False, [], {"format": {"type": "text"}})
    assert answer["error"] is None and "output_text" not in answer  # the SDK's convenience, not sent


def test_a_choice_that_stops_on_its_own_completes_the_response() -> None:
    """The tiny random model rarely stops before its limit, so the writer gets the engine's events for one
    that did: a `stop` finish completes the message and the response."""
    from hotlora_server import protocol as p
    from hotlora_server.api.serving_responses import Answer, ResponseEvents
    from hotlora_server.types import ChoiceDelta, Usage

    body = p.ResponsesRequest.model_validate({"model": TINY_NAME, "input": QUESTION, "tool_choice": "none"})
    writer = ResponseEvents(Answer(body, "r1", 1700000000), None)
    frames = writer.frames(ChoiceDelta(0, "Hello")) + writer.frames(ChoiceDelta(0, "", finish_reason="stop"))
    frames += writer.frames(Usage(prompt_tokens=7, completion_tokens=2))
    events = [(f["event"], json.loads(f["data"])) for f in frames]
    assert [name for name, _ in events] == [
        *EVENT_ORDER[:4],
        "response.output_text.delta",
        *EVENT_ORDER[4:],
        "response.completed",
    ]
    final = events[-1][1]["response"]
    assert (final["status"], final["incomplete_details"], final["tool_choice"]) == ("completed", None, "none")
    assert final["completed_at"] >= final["created_at"] and final["output"][0]["status"] == "completed"
    assert final["id"] == "resp_r1" and final["output"][0]["id"] == "msg_r1"
    assert final["usage"]["total_tokens"] == 9 and final["output"][0]["content"][0]["text"] == "Hello"
    assert writer.closing() == []  # OpenAI's Responses streams end without `[DONE]`


def test_input_items_are_chat_messages(client: Any) -> None:
    """Content as a string or as `input_text` / `output_text` parts, `developer` as the system role."""
    items = [
        {"role": "developer", "content": "Answer briefly."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hello"}]},
        {
            "type": "message",
            "id": "msg_earlier",
            "status": "completed",
            "role": "assistant",
            "content": [
                {"type": "output_text", "text": "Hi! ", "annotations": []},
                {"type": "output_text", "text": "Ask."},
            ],
        },
        {
            "role": "user",
            "content": [{"type": "input_text", "text": "Tell me "}, {"type": "input_text", "text": "more."}],
        },
    ]
    messages = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi! Ask."},
        {"role": "user", "content": "Tell me more."},
    ]
    answer = _respond(client, input=items)
    chat = _chat(client, messages)
    assert _text(answer) == chat["choices"][0]["message"]["content"]
    assert answer["usage"]["input_tokens"] == chat["usage"]["prompt_tokens"]


@pytest.mark.parametrize("model", [ADAPTER_NAME, f"{ADAPTER_NAME}*0.5"])
def test_an_adapter_or_a_blend_is_the_model(client: Any, model: str) -> None:
    answer = _respond(client, model=model)
    assert answer["model"] == model
    assert (
        _text(answer)
        == _chat(client, [{"role": "user", "content": QUESTION}], model=model)["choices"][0]["message"][
            "content"
        ]
    )


def test_the_adapters_extension_blends_on_the_base(client: Any) -> None:
    blend = {"adapters": [{"name": ADAPTER_NAME, "weight": 0.5}], "blend_method": "linear"}
    answer = _respond(client, **blend)
    chat = _chat(client, [{"role": "user", "content": QUESTION}], **blend)
    assert _text(answer) == chat["choices"][0]["message"]["content"]


# -- the stream ------------------------------------------------------------------------------------------


def test_the_stream_is_openais_event_sequence(client: Any) -> None:
    whole = _respond(client)
    events = _events(client)
    names = [name for name, _ in events]
    deltas = [data for name, data in events if name == "response.output_text.delta"]
    assert [n for n in names if n != "response.output_text.delta"] == [*EVENT_ORDER, "response.incomplete"]
    assert names[4 : 4 + len(deltas)] == ["response.output_text.delta"] * len(deltas) and deltas
    assert all(data["type"] == name for name, data in events)
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    created, in_progress = events[0][1]["response"], events[1][1]["response"]
    assert created == in_progress and created["status"] == "in_progress" and created["output"] == []
    item_id = events[2][1]["item"]["id"]
    assert events[2][1]["item"] == {
        "type": "message",
        "id": item_id,
        "role": "assistant",
        "status": "in_progress",
        "content": [],
    }
    text = "".join(d["delta"] for d in deltas)
    assert text == _text(whole)
    assert {(d["item_id"], d["output_index"], d["content_index"]) for d in deltas} == {(item_id, 0, 0)}
    done = dict(events[-4:])
    assert done["response.output_text.done"]["text"] == text
    assert done["response.content_part.done"]["part"]["text"] == text
    assert done["response.output_item.done"]["item"]["status"] == "incomplete"
    final = done["response.incomplete"]["response"]
    assert final["id"] == created["id"] and final["output"] == [done["response.output_item.done"]["item"]]
    assert _without_ids(final) == _without_ids(whole)


@pytest.fixture
def boom_in_row_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine's per-row step raises at the third token of the request with id BOOM."""
    from hotlora_server.engine.rows import Row

    original = Row.step

    def step(self: Row, *args: Any) -> None:
        if self.job.request.request_id == BOOM and self.generated == 2:
            raise RuntimeError("injected fault")
        original(self, *args)

    monkeypatch.setattr(Row, "step", step)


def test_a_failure_mid_stream_ends_with_an_error_and_a_failed_response(
    client: Any, boom_in_row_step: None
) -> None:
    events = _events(client, headers={"X-Request-ID": BOOM}, max_output_tokens=20)
    names = [name for name, _ in events]
    assert names[:4] == EVENT_ORDER[:4] and names[-2:] == ["error", "response.failed"]
    error, failed = events[-2][1], events[-1][1]["response"]
    assert error["code"] == "server_error" and "injected fault" in error["message"]
    assert failed["status"] == "failed" and failed["error"]["code"] == "server_error"
    text = "".join(d["delta"] for name, d in events if name == "response.output_text.delta")
    assert failed["output"][0]["status"] == "incomplete" and failed["output"][0]["content"][0]["text"] == text
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))


@pytest.fixture(scope="module")
def sdk(tiny_engine: Any) -> Iterator[Any]:
    """The official `openai` client on the app, served by uvicorn on a loopback port."""
    import openai

    from hotlora_server.api import create_app

    with live_app(create_app(tiny_engine)) as http:
        yield openai.OpenAI(base_url=f"{str(http.base_url).rstrip('/')}/v1", api_key="unused", max_retries=0)


def test_the_openai_sdk_reads_responses_and_their_streams(sdk: Any) -> None:
    import openai

    whole = sdk.responses.create(model=TINY_NAME, input=QUESTION, instructions="Be brief.", **GREEDY)
    assert isinstance(whole, openai.types.responses.Response) and whole.output_text
    assert whole.status == "incomplete" and whole.usage.output_tokens == 8
    with sdk.responses.stream(model=TINY_NAME, input=QUESTION, instructions="Be brief.", **GREEDY) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
    assert "".join(deltas) == whole.output_text
    events = list(sdk.responses.create(model=TINY_NAME, input=QUESTION, stream=True, **GREEDY))
    assert events[0].type == "response.created" and events[-1].type == "response.incomplete"
    assert events[-1].response.output_text == "".join(
        e.delta for e in events if e.type == "response.output_text.delta"
    )
    with pytest.raises(openai.BadRequestError) as info:
        sdk.responses.create(model=TINY_NAME, input=QUESTION, store=True)
    assert info.value.param == "store" and "keeps no responses" in info.value.message


# -- what it refuses -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "param", "words"),
    [
        ({"store": True}, "store", "keeps no responses"),
        ({"background": True}, "background", "keeps no responses"),
        ({"previous_response_id": "resp_1"}, "previous_response_id", "keeps no responses"),
        ({"conversation": "conv_1"}, "conversation", "keeps no responses"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input.0", "`item_reference` are not"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
            "input.0.content.0.type",
            "input_text",
        ),
        ({"input": [{"role": "tool", "content": "x"}]}, "input.0.role", "user"),
        ({"input": []}, "input", "at least 1"),
        ({"max_output_tokens": 0}, "max_output_tokens", "greater than or equal to 1"),
        ({"temperature": 3}, "temperature", "less than or equal to 2"),
        ({"metadata": {"k": "v" * 513}}, "metadata.k", "at most 512"),
        ({"metadata": {str(i): "v" for i in range(17)}}, "metadata", "at most 16"),
        ({"model": f"{ADAPTER_NAME}*x"}, None, "is not a number"),
        ({"adapters": [{"name": ADAPTER_NAME, "weight": 1}], "blend_method": "ties"}, None, "density"),
    ],
)
def test_refused_with_a_400_that_names_the_problem(
    client: Any, openai_error: Any, fields: dict[str, Any], param: str | None, words: str
) -> None:
    body = {"model": TINY_NAME, "input": QUESTION, **fields}
    error = openai_error(client.post(RESPONSES, json=body), 400, param=param)
    assert words in error["message"] and error["type"] == "invalid_request_error"


def test_instructions_and_input_hold_at_most_the_chat_limit_of_messages(
    client: Any, openai_error: Any
) -> None:
    from hotlora_server.protocol import MAX_MESSAGES

    items = [{"role": "user", "content": "x"}] * MAX_MESSAGES
    error = openai_error(
        client.post(RESPONSES, json={"model": TINY_NAME, "input": items, "instructions": "y"}), 400
    )
    assert str(MAX_MESSAGES) in error["message"]


def test_unknown_models_and_too_long_prompts_are_chats_errors(client: Any, openai_error: Any) -> None:
    openai_error(
        client.post(RESPONSES, json={"model": "no-such-model", "input": QUESTION}), 404, param="model"
    )
    long = client.post(RESPONSES, json={"model": TINY_NAME, "input": "word " * 400, "max_output_tokens": 8})
    openai_error(long, 400, code="context_length_exceeded")


def test_unknown_fields_are_accepted_and_logged(client: Any, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="hotlora_server.protocol.common"):
        answer = _respond(
            client,
            reasoning={"effort": "low"},
            include=["message.output_text.logprobs"],
            text={"format": {"type": "text"}, "verbosity": "low"},
            input=[{"role": "user", "content": QUESTION, "phase": "final_answer"}],
        )
    assert answer["status"] == "incomplete"
    logged = " ".join(
        r.getMessage() for r in caplog.records if "ignoring unsupported fields" in r.getMessage()
    )
    assert "reasoning" in logged and "include" in logged and "input[].phase" in logged
    assert "text.verbosity" in logged
