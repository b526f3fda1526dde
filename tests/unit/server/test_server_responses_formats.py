"""`text.format` on `POST /v1/responses` over the tiny engine: chat's `response_format` in the Responses
shape (`name` and `schema` flattened beside `type`), decoded under the same grammar, echoed, read by the
official `openai` SDK's `responses.parse`, and refused where chat refuses it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict

from hotlora_server import protocol as p
from hotlora_server.api.serving_chat import ServingChat
from hotlora_server.metrics import Metrics

from support.tiny_server import TINY_NAME, live_app

RESPONSES = "/v1/responses"
QUESTION = "Is the sea blue?"
SCHEMA = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}},
    "required": ["ok"],
    "additionalProperties": False,
}
FORMAT = {"type": "json_schema", "name": "verdict", "schema": SCHEMA, "strict": True}


class Verdict(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ok: bool


def _respond(client: Any, **fields: Any) -> Any:
    body = {"model": TINY_NAME, "input": QUESTION, "temperature": 0, "max_output_tokens": 16, **fields}
    return client.post(RESPONSES, json=body)


@pytest.fixture(scope="module")
def chat(tiny_engine: Any) -> ServingChat:
    return ServingChat(tiny_engine, Metrics(tiny_engine.stats))


@pytest.mark.parametrize(
    ("text_format", "response_format"),
    [
        ({"type": "text"}, {"type": "text"}),
        ({"type": "json_object"}, {"type": "json_object"}),
        (FORMAT, {"type": "json_schema", "json_schema": {k: v for k, v in FORMAT.items() if k != "type"}}),
        ({"type": "json_schema", "name": "any"}, {"type": "json_schema", "json_schema": {"name": "any"}}),
    ],
)
def test_text_format_is_chats_response_format(
    chat: ServingChat, text_format: dict[str, Any], response_format: dict[str, Any]
) -> None:
    body = p.ResponsesRequest.model_validate(
        {"model": TINY_NAME, "input": QUESTION, "text": {"format": text_format}}
    )
    chat_body = p.ChatCompletionRequest.model_validate(
        {
            "model": TINY_NAME,
            "messages": [{"role": "user", "content": QUESTION}],
            "response_format": response_format,
        }
    )
    assert body.chat.response_format == chat_body.response_format
    assert chat.engine_request(body.chat, "r1") == chat.engine_request(chat_body, "r1")


def test_the_answer_follows_the_schema_and_echoes_the_format(client: Any) -> None:
    response = _respond(client, text={"format": FORMAT})
    assert response.status_code == 200, response.text
    answer = response.json()
    (message,) = answer["output"]
    assert answer["status"] == "completed" and message["type"] == "message"
    Verdict.model_validate_json(message["content"][0]["text"], strict=True)
    assert answer["text"] == {"format": FORMAT}

    # any object: the random model may stay inside a string until its limit, but it starts an object
    whole = _respond(client, text={"format": {"type": "json_object"}}).json()
    assert whole["output"][0]["content"][0]["text"].startswith("{")
    assert whole["text"] == {"format": {"type": "json_object"}}


@pytest.fixture(scope="module")
def sdk(tiny_engine: Any) -> Iterator[Any]:
    import openai

    from hotlora_server.api import create_app

    with live_app(create_app(tiny_engine)) as http:
        yield openai.OpenAI(base_url=f"{str(http.base_url).rstrip('/')}/v1", api_key="unused", max_retries=0)


def test_the_openai_sdk_parses_into_a_pydantic_model(sdk: Any) -> None:
    reply = sdk.responses.parse(
        model=TINY_NAME, input=QUESTION, text_format=Verdict, temperature=0, max_output_tokens=16
    )
    assert isinstance(reply.output_parsed, Verdict)
    assert reply.output_parsed == Verdict.model_validate_json(reply.output_text)
    with sdk.responses.stream(
        model=TINY_NAME, input=QUESTION, text_format=Verdict, temperature=0, max_output_tokens=16
    ) as stream:
        final = stream.get_final_response()
    assert final.output_parsed == reply.output_parsed


@pytest.mark.parametrize(
    ("text", "param", "words"),
    [
        ({"format": {"type": "xml"}}, "text.format", "xml"),
        ({"format": {"type": "json_schema", "schema": SCHEMA}}, "text.format", "name"),
        ({"format": {**FORMAT, "name": "a b"}}, "text.format", "pattern"),
        (
            {"format": {"type": "json_schema", "name": "v", "json_schema": {"name": "v", "schema": SCHEMA}}},
            "text.format",
            "beside `type`",
        ),
        ({"format": "json"}, "text.format", None),
        ({"format": {**FORMAT, "schema": {"not": {"type": "string"}}}}, "text.format", "not"),
    ],
)
def test_bad_formats_are_400_naming_the_problem(
    client: Any, openai_error: Any, text: dict[str, Any], param: str, words: str | None
) -> None:
    error = openai_error(_respond(client, text=text), 400)
    assert (error["param"] or "").startswith(param), error
    if words is not None:
        assert words in error["message"], error


def test_a_forced_call_s_unsupported_schema_names_the_tools(client: Any, openai_error: Any) -> None:
    tool = {
        "type": "function",
        "name": "pick",
        "parameters": {"type": "object", "properties": {"a": {"not": {"type": "string"}}}},
    }
    for choice in ("required", {"type": "function", "name": "pick"}):
        error = openai_error(_respond(client, tools=[tool], tool_choice=choice), 400)
        assert error["param"] == "tools" and "not" in error["message"], error
