"""Bodies crafted to break the server get a 400 (or 413) with a message that says what is wrong — never a 500.

Complements test_server_api_errors.py (ordinary wrong types and ranges) with what a JSON library lets
through: NaN and Infinity literals, numbers past 64 bits or float range, bytes that are not UTF-8, lone
surrogates, nesting deeper than the parser's recursion, and bodies over `--max-body-bytes`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from support.tiny_server import TINY_NAME

CHAT = "/v1/chat/completions"
JSON = {"content-type": "application/json"}
CHAT_PREFIX = f'{{"model": "{TINY_NAME}", "messages": [{{"role": "user", "content": "Hi"}}], "max_tokens": 2'
LIMIT = 4096


def _raw_chat(client: Any, extra: str) -> Any:
    """POST a chat body written by hand, as `json.dumps` would refuse (or fix) what it contains."""
    return client.post(CHAT, content=f"{CHAT_PREFIX}, {extra}}}".encode(), headers=JSON)


# -- numbers Python's json accepts and JSON does not --------------------------------------------------


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400", "-1e400"])
@pytest.mark.parametrize("param", ["temperature", "top_p", "presence_penalty", "frequency_penalty"])
def test_non_finite_floats_are_400(client: Any, openai_error: Any, param: str, literal: str) -> None:
    error = openai_error(_raw_chat(client, f'"{param}": {literal}'), 400, param=param)
    assert "finite" in error["message"]


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400"])
@pytest.mark.parametrize("param", ["max_tokens", "n", "seed", "top_logprobs"])
def test_non_finite_integers_are_400(client: Any, openai_error: Any, param: str, literal: str) -> None:
    error = openai_error(_raw_chat(client, f'"{param}": {literal}'), 400, param=param)
    assert "integer" in error["message"]


@pytest.mark.parametrize(
    "extra",
    [
        '"adapters": [{"name": "tiny-adapter", "weight": NaN}]',
        '"model": "tiny-adapter*Infinity"',
        '"model": "tiny-adapter*nan"',
        '"adapters": [{"name": "tiny-adapter"}], "blend_method": "ties", "density": NaN',
    ],
)
def test_non_finite_blend_numbers_are_400(client: Any, openai_error: Any, extra: str) -> None:
    assert "finite" in openai_error(_raw_chat(client, extra), 400)["message"]


def test_non_finite_blend_weight_when_saving_is_400(client: Any, openai_error: Any) -> None:
    body = b'{"name": "nan-blend", "adapters": [{"name": "tiny-adapter", "weight": NaN}]}'
    error = openai_error(
        client.post("/v1/adapters/blend", content=body, headers=JSON), 400, param="adapters.0.weight"
    )
    assert "finite" in error["message"]


@pytest.mark.parametrize(
    "extra",
    [
        '"model": "tiny-adapter*1e100"',
        '"model": "tiny-adapter*0.5+other*-10.5"',
        '"adapters": [{"name": "tiny-adapter", "weight": 1e30}]',
    ],
)
def test_blend_weights_beyond_the_bound_are_400(client: Any, openai_error: Any, extra: str) -> None:
    """A weight of 1e100 overflows the blend's sums into NaN output; it is refused before anything is built."""
    assert "between -10 and 10" in openai_error(_raw_chat(client, extra), 400)["message"]


def test_blend_weight_beyond_the_bound_when_saving_is_400(client: Any, openai_error: Any) -> None:
    body = b'{"name": "huge-blend", "adapters": [{"name": "tiny-adapter", "weight": -1e100}]}'
    error = openai_error(client.post("/v1/adapters/blend", content=body, headers=JSON), 400)
    assert "between -10 and 10" in error["message"]


# -- huge and negative numbers -----------------------------------------------------------------------


def test_huge_max_tokens_is_context_length_exceeded(client: Any, openai_error: Any) -> None:
    error = openai_error(
        _raw_chat(client, f'"max_completion_tokens": {10**30}'), 400, code="context_length_exceeded"
    )
    assert "256" in error["message"]


@pytest.mark.parametrize("param", ["n", "top_logprobs"])
def test_huge_integers_are_400(client: Any, openai_error: Any, param: str) -> None:
    openai_error(_raw_chat(client, f'"logprobs": true, "{param}": {10**30}'), 400, param=param)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"n": -1}, "n"),
        ({"max_tokens": -5}, "max_tokens"),
        ({"logprobs": True, "top_logprobs": -1}, "top_logprobs"),
        ({"top_p": -0.5}, "top_p"),
        ({"presence_penalty": -1e308}, "presence_penalty"),
    ],
)
def test_negative_numbers_are_400(client: Any, openai_error: Any, fields: dict[str, Any], param: str) -> None:
    body = {"model": TINY_NAME, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, **fields}
    openai_error(client.post(CHAT, json=body), 400, param=param)


def test_negative_logprobs_on_completions_is_400(client: Any, openai_error: Any) -> None:
    body = {"model": TINY_NAME, "prompt": "Hi", "max_tokens": 2, "logprobs": -1}
    openai_error(client.post("/v1/completions", json=body), 400, param="logprobs")


def test_integer_with_too_many_digits_is_400(client: Any, openai_error: Any) -> None:
    error = openai_error(_raw_chat(client, '"seed": ' + "9" * 5000), 400)
    assert "not valid JSON" in error["message"] and "digits" in error["message"]


# -- text that is not text -----------------------------------------------------------------------------


def test_invalid_utf8_is_400(client: Any, openai_error: Any) -> None:
    body = CHAT_PREFIX.replace('"Hi"', '"H\xff\xfei"').encode("latin-1") + b"}"
    error = openai_error(client.post(CHAT, content=body, headers=JSON), 400)
    assert "UTF-8" in error["message"]


@pytest.mark.parametrize("field", ["content", "model", "stop"])
def test_lone_surrogate_is_400(client: Any, openai_error: Any, field: str) -> None:
    """`"\\ud800"` is valid JSON but no character: it must not reach the tokenizer."""
    body = {"model": TINY_NAME, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    if field == "content":
        body["messages"][0]["content"] = "\ud800"  # type: ignore[index]
    else:
        body[field] = "\ud800"
    error = openai_error(client.post(CHAT, content=json.dumps(body).encode(), headers=JSON), 400)
    assert field in error["message"]


# -- bodies of the wrong shape -------------------------------------------------------------------------


@pytest.mark.parametrize("opening", ["[", '{"a": '])
def test_deeply_nested_json_is_400(client: Any, openai_error: Any, opening: str) -> None:
    error = openai_error(client.post(CHAT, content=(opening * 100_000).encode(), headers=JSON), 400)
    assert "nested too deeply" in error["message"]


def test_nesting_the_parser_accepts_in_an_unknown_field_is_harmless(client: Any) -> None:
    response = _raw_chat(client, '"metadata": ' + "[" * 500 + "]" * 500)
    assert response.status_code == 200, response.text


def test_empty_body_is_400(client: Any, openai_error: Any) -> None:
    error = openai_error(client.post(CHAT, content=b"", headers=JSON), 400)
    assert "empty" in error["message"]


def test_body_without_json_content_type_is_400(client: Any, openai_error: Any) -> None:
    body = json.dumps({"model": TINY_NAME, "messages": [{"role": "user", "content": "Hi"}]}).encode()
    error = openai_error(client.post(CHAT, content=body, headers={"content-type": "text/plain"}), 400)
    assert "application/json" in error["message"]


@pytest.mark.parametrize("body", ["null", "42", '"text"', "[]"])
def test_body_that_is_not_an_object_says_so(client: Any, openai_error: Any, body: str) -> None:
    error = openai_error(client.post(CHAT, content=body.encode(), headers=JSON), 400)
    assert error["message"] == "the request body must be a JSON object"


def test_syntax_error_names_the_position_not_a_param(client: Any, openai_error: Any) -> None:
    error = openai_error(client.post(CHAT, content=b'{"model": tiny}', headers=JSON), 400)
    assert error["param"] is None
    assert "character 10" in error["message"]


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "user", "content": 42}],
        [{"role": "user"}],
        [{"content": "Hi"}],
        ["Hi"],
        [None],
        [{"role": "user", "content": [{"type": "text"}]}],
        [{"role": ["user"], "content": "Hi"}],
    ],
)
def test_malformed_messages_are_400_naming_the_message(
    client: Any, openai_error: Any, messages: list[Any]
) -> None:
    body = {"model": TINY_NAME, "messages": messages, "max_tokens": 2}
    error = openai_error(client.post(CHAT, json=body), 400)
    assert error["param"] is not None and error["param"].startswith("messages.0"), error


def test_messages_with_empty_content_still_answer(client: Any) -> None:
    body = {
        "model": TINY_NAME,
        "messages": [{"role": "user", "content": ""}, {"role": "user", "content": []}],
        "max_tokens": 2,
    }
    response = client.post(CHAT, json=body)
    assert response.status_code == 200, response.text


# -- many items: lists are capped, and the work of a 400 is bounded --------------------------------------


def test_sixteen_thousand_integers_as_messages_is_a_short_400(client: Any, openai_error: Any) -> None:
    """The body that once held the event loop for 25 s: validation stops at the first bad message."""
    body = {"model": TINY_NAME, "messages": list(range(16_000))}
    error = openai_error(client.post(CHAT, json=body), 400, param="messages.0")
    assert error["message"].count("messages.") == 1, error


@pytest.mark.parametrize(
    ("field", "items", "limit"),
    [
        ("messages", [{"role": "user", "content": "Hi"}] * 2049, 2048),
        ("messages.0.content", [{"role": "user", "content": [{"type": "text", "text": "Hi"}] * 257}], 256),
    ],
)
def test_too_many_items_are_400_with_the_limit(
    client: Any, openai_error: Any, field: str, items: Any, limit: int
) -> None:
    error = openai_error(
        client.post(CHAT, json={"model": TINY_NAME, "messages": items, "max_tokens": 2}), 400, param=field
    )
    assert f"at most {limit} items are allowed, not {limit + 1}" in error["message"], error


@pytest.mark.parametrize(("stop", "param"), [("x" * 257, "stop"), (["a", "x" * 257], "stop.1")])
def test_a_stop_sequence_over_256_characters_is_400(
    client: Any, openai_error: Any, stop: Any, param: str
) -> None:
    """The stop matcher's work per token grows with the square of a stop sequence's length."""
    error = openai_error(
        client.post(
            CHAT, json={"model": TINY_NAME, "messages": [{"role": "user", "content": "Hi"}], "stop": stop}
        ),
        400,
        param=param,
    )
    assert "256 characters" in error["message"]


def test_a_model_over_4096_characters_is_400(client: Any, openai_error: Any) -> None:
    """A megabyte blend string is refused by its length, not split and parsed on the event loop."""
    body = {"model": "tiny-adapter*1+" * 100_000, "messages": [{"role": "user", "content": "Hi"}]}
    error = openai_error(client.post(CHAT, json=body), 400, param="model")
    assert "4096 characters" in error["message"]


def test_the_validation_message_reads_a_bounded_number_of_problems() -> None:
    """It runs on the event loop: however many problems pydantic found, only the first few are read."""
    from fastapi.exceptions import RequestValidationError

    from hotlora_server.api.errors import MAX_EXAMINED_PROBLEMS, _validation_message

    read = 0

    def problems() -> Iterator[dict[str, Any]]:
        nonlocal read
        for i in range(2_000):
            read += 1
            yield {"type": "model_type", "loc": ("body", "messages", i), "msg": "Input should be an object"}

    message, param = _validation_message(RequestValidationError(problems()))  # type: ignore[arg-type]
    assert read <= MAX_EXAMINED_PROBLEMS
    assert param == "messages.0" and message.startswith("messages.0: Input should be an object; messages.1: ")


def test_a_mismatched_union_branch_is_not_shown_next_to_the_real_problem() -> None:
    from fastapi.exceptions import RequestValidationError

    from hotlora_server.api.errors import _validation_message

    errors = [
        {"type": "string_type", "loc": ("body", "messages", 0, "content", "str"), "msg": "not a string"},
        {
            "type": "missing",
            "loc": ("body", "messages", 0, "content", "list[TextPart]", 0, "text"),
            "msg": "Field required",
        },
        {"type": "string_type", "loc": ("body", "user"), "msg": "Input should be a valid string"},
    ]
    message, param = _validation_message(RequestValidationError(errors))
    assert message == "messages.0.content.0.text: Field required; user: Input should be a valid string"


def test_ignored_fields_are_logged_in_one_bounded_line(client: Any, caplog: pytest.LogCaptureFixture) -> None:
    messages = [{"role": "user", "content": "Hi", "refusal": None, "annotations": []}] * 10
    body = {
        "model": TINY_NAME,
        "messages": messages,
        "max_tokens": 1,
        **{f"extra{i}": i for i in range(1000)},
    }
    with caplog.at_level(logging.INFO, logger="hotlora_server.protocol"):
        assert client.post(CHAT, json=body).status_code == 200
    lines = [
        r.getMessage() for r in caplog.records if r.getMessage().startswith("ignoring unsupported fields")
    ]
    assert lines == [
        "ignoring unsupported fields: extra0, extra1, extra2, extra3, extra4, extra5, extra6, extra7, ..."
    ]
    body = {"model": TINY_NAME, "messages": messages, "max_tokens": 1, "metadata": {}}
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="hotlora_server.protocol"):
        assert client.post(CHAT, json=body).status_code == 200
    lines = [
        r.getMessage() for r in caplog.records if r.getMessage().startswith("ignoring unsupported fields")
    ]
    assert lines == ["ignoring unsupported fields: metadata, messages[].refusal, messages[].annotations"]


# -- body size ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def limited_client(tiny_engine: Any) -> Iterator[Any]:
    """An app over the shared engine that refuses bodies over `LIMIT` bytes."""
    from fastapi.testclient import TestClient

    from hotlora_server.api import create_app

    with TestClient(create_app(tiny_engine, max_body_bytes=LIMIT)) as test_client:
        yield test_client


def _padded_chat(size: int) -> bytes:
    """A valid chat body of exactly `size` bytes (an unknown field takes the padding)."""
    head = CHAT_PREFIX + ', "metadata": "'
    return (head + "x" * (size - len(head) - 2) + '"}').encode()


def test_body_over_the_limit_is_413_by_content_length(limited_client: Any, openai_error: Any) -> None:
    error = openai_error(
        limited_client.post(CHAT, content=_padded_chat(LIMIT + 1), headers=JSON),
        413,
        code="payload_too_large",
    )
    assert str(LIMIT) in error["message"] and "--max-body-bytes" in error["message"]


def test_chunked_body_over_the_limit_is_413(limited_client: Any, openai_error: Any) -> None:
    body = _padded_chat(LIMIT + 1)
    chunks = (body[i : i + 512] for i in range(0, len(body), 512))  # no Content-Length: sent chunked
    response = limited_client.post(CHAT, content=chunks, headers=JSON)
    openai_error(response, 413, code="payload_too_large")


def test_body_at_the_limit_is_served(limited_client: Any) -> None:
    response = limited_client.post(CHAT, content=_padded_chat(LIMIT), headers=JSON)
    assert response.status_code == 200, response.text


def test_a_413_leaves_the_server_serving(limited_client: Any) -> None:
    limited_client.post(CHAT, content=_padded_chat(10 * LIMIT), headers=JSON)
    assert limited_client.get("/v1/models").status_code == 200


def test_streamed_body_stops_being_read_at_the_limit() -> None:
    """Driven as raw ASGI: the app reads chunks only up to the limit, then the client gets the 413."""
    from hotlora_server.api.limits import BodyLimitMiddleware

    chunks = [{"type": "http.request", "body": b"x" * 1000, "more_body": True} for _ in range(100)]
    consumed: list[int] = []
    sent: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        while (message := await receive())["more_body"]:
            consumed.append(len(message["body"]))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"read it all"})

    async def receive() -> dict[str, Any]:
        return chunks.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": CHAT,
        "headers": [(b"content-type", b"application/json")],
    }
    asyncio.run(BodyLimitMiddleware(app, max_bytes=LIMIT)(scope, receive, send))
    assert sum(consumed) <= LIMIT
    assert sent[0]["status"] == 413
    assert json.loads(sent[1]["body"])["error"]["code"] == "payload_too_large"
    assert len(sent) == 2  # nothing of the app's own answer
