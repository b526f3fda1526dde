"""Every failure leaves the app as an OpenAI error body with the right status (never FastAPI's 422)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

TINY_NAME = "tiny"
ADAPTER_NAME = "tiny-adapter"
API_KEY = "sk-test-key"  # conftest.py's keyed_client
MESSAGES = [{"role": "user", "content": "Hi"}]
CHAT = "/v1/chat/completions"


def _chat_body(**fields: Any) -> dict[str, Any]:
    return {"model": TINY_NAME, "messages": MESSAGES, "max_tokens": 2, **fields}


# -- body validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [CHAT, "/v1/completions"])
def test_invalid_json_is_400(client: Any, openai_error: Any, path: str) -> None:
    response = client.post(
        path, content=b'{"model": "tiny", "messages": [', headers={"content-type": "application/json"}
    )
    error = openai_error(response, 400)
    assert error["type"] == "invalid_request_error"
    assert "JSON" in error["message"]


def test_body_that_is_not_an_object_is_400(client: Any, openai_error: Any) -> None:
    openai_error(client.post(CHAT, json=["not", "an", "object"]), 400)


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("temperature", "hot"),
        ("max_tokens", "5"),
        ("stream", "yes"),
        ("n", 1.5),
        ("top_p", "1"),
        ("seed", "1"),
        ("stop", 5),
        ("logprobs", "true"),
    ],
)
def test_wrong_types_are_400_naming_the_param(client: Any, openai_error: Any, param: str, value: Any) -> None:
    error = openai_error(client.post(CHAT, json=_chat_body(**{param: value})), 400)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert param in error["message"]


def test_wrong_type_inside_stream_options_names_the_nested_param(client: Any, openai_error: Any) -> None:
    body = _chat_body(stream=True, stream_options={"include_usage": "yes"})
    error = openai_error(client.post(CHAT, json=body), 400)
    assert error["param"] == "stream_options.include_usage"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"temperature": 3}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"n": 0}, "n"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_completion_tokens": -1}, "max_completion_tokens"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"presence_penalty": 5}, "presence_penalty"),
        ({"frequency_penalty": -2.5}, "frequency_penalty"),
        ({"seed": 2**64}, "seed"),
    ],
)
def test_out_of_range_is_400(client: Any, openai_error: Any, fields: dict[str, Any], param: str) -> None:
    error = openai_error(client.post(CHAT, json=_chat_body(**fields)), 400)
    assert error["param"] == param
    assert param in error["message"]


@pytest.mark.parametrize(
    "fields",
    [
        {"stop": ["a", "b", "c", "d", "e"]},
        {"stop": ""},
        {"top_logprobs": 2},  # without logprobs
        {"stream_options": {"include_usage": True}},  # without stream
        {"response_format": {"type": "json_schema"}},  # without its `json_schema`
    ],
)
def test_inconsistent_options_are_400(client: Any, openai_error: Any, fields: dict[str, Any]) -> None:
    openai_error(client.post(CHAT, json=_chat_body(**fields)), 400)


def test_empty_messages_is_400(client: Any, openai_error: Any) -> None:
    error = openai_error(client.post(CHAT, json=_chat_body(messages=[])), 400)
    assert "messages" in error["message"]


def test_missing_messages_is_400(client: Any, openai_error: Any) -> None:
    error = openai_error(client.post(CHAT, json={"model": TINY_NAME}), 400)
    assert "messages" in error["message"]


def test_missing_model_is_400(client: Any, openai_error: Any) -> None:
    error = openai_error(client.post(CHAT, json={"messages": MESSAGES}), 400)
    assert error["param"] == "model"


def test_unknown_role_is_400(client: Any, openai_error: Any) -> None:
    body = _chat_body(messages=[{"role": "function", "content": "42", "name": "f"}])
    error = openai_error(client.post(CHAT, json=body), 400)
    assert "role" in error["message"]
    assert error["param"] is not None and error["param"].startswith("messages")


@pytest.mark.parametrize(
    "fields",
    [
        {"functions": [{"name": "f"}]},
        {"function_call": "auto"},
        {"prediction": {"type": "content", "content": "x"}},
    ],
)
def test_unsupported_features_are_refused(client: Any, openai_error: Any, fields: dict[str, Any]) -> None:
    error = openai_error(client.post(CHAT, json=_chat_body(**fields)), 400)
    assert "not supported" in error["message"]
    assert next(iter(fields)) in error["message"]


def test_empty_tools_list_is_accepted(client: Any) -> None:
    assert client.post(CHAT, json=_chat_body(tools=[])).status_code == 200


def test_unknown_fields_are_accepted(client: Any) -> None:
    body = _chat_body(metadata={"team": "x"}, store=False, some_future_field=[1, 2, 3])
    response = client.post(CHAT, json=body)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["role"] == "assistant"


def test_completions_refuses_echo_and_suffix(client: Any, openai_error: Any) -> None:
    base = {"model": TINY_NAME, "prompt": "Hi", "max_tokens": 2}
    assert "echo" in openai_error(client.post("/v1/completions", json={**base, "echo": True}), 400)["message"]
    assert (
        "suffix" in openai_error(client.post("/v1/completions", json={**base, "suffix": "x"}), 400)["message"]
    )
    openai_error(client.post("/v1/completions", json={**base, "logprobs": 6}), 400, param="logprobs")
    openai_error(client.post("/v1/completions", json={**base, "prompt": ["a", "b"]}), 400)


# -- engine-side checks ------------------------------------------------------------------------------


def test_empty_prompt_is_400(client: Any, openai_error: Any) -> None:
    openai_error(client.post("/v1/completions", json={"model": TINY_NAME, "prompt": ""}), 400, param="prompt")


def test_context_length_exceeded(client: Any, openai_error: Any) -> None:
    error = openai_error(
        client.post(CHAT, json=_chat_body(max_tokens=250)), 400, code="context_length_exceeded"
    )
    assert error["param"] == "messages"
    assert "256" in error["message"]


def test_context_length_exceeded_by_the_prompt_alone(client: Any, openai_error: Any) -> None:
    body = {"model": TINY_NAME, "prompt": "word " * 300, "max_tokens": 1}
    error = openai_error(client.post("/v1/completions", json=body), 400, code="context_length_exceeded")
    assert error["param"] == "prompt"


def test_prompt_plus_max_tokens_exactly_at_the_limit_is_allowed(client: Any, real_tokenizer: Any) -> None:
    words = 260
    while len(real_tokenizer(" word" * words)["input_ids"]) > 252:  # a long prompt keeps the generation short
        words -= 1
    prompt = " word" * words
    room = 256 - len(real_tokenizer(prompt)["input_ids"])
    assert 1 <= room <= 8
    body = {
        "model": TINY_NAME,
        "prompt": prompt,
        "max_tokens": room,
        "temperature": 0,
        "stop": "never-appears",
    }
    ok = client.post("/v1/completions", json={**body, "max_tokens": room})
    assert ok.status_code == 200, ok.text
    too_long = client.post("/v1/completions", json={**body, "max_tokens": room + 1})
    assert too_long.status_code == 400
    assert too_long.json()["error"]["code"] == "context_length_exceeded"


def test_n_above_max_n_is_400(client: Any, openai_error: Any) -> None:
    error = openai_error(client.post(CHAT, json=_chat_body(n=9)), 400, param="n")
    assert "8" in error["message"]


def test_n_at_max_n_is_allowed(client: Any) -> None:
    response = client.post(CHAT, json=_chat_body(n=8, max_tokens=1, seed=0))
    assert response.status_code == 200, response.text
    assert len(response.json()["choices"]) == 8


def test_unknown_model_is_404(client: Any, openai_error: Any) -> None:
    error = openai_error(client.post(CHAT, json=_chat_body(model="gpt-4o")), 404, code="model_not_found")
    assert "gpt-4o" in error["message"]
    assert TINY_NAME in error["message"] and ADAPTER_NAME in error["message"]


def test_a_model_that_cannot_be_an_adapter_name_is_400(client: Any, openai_error: Any) -> None:
    # neither the base id, a valid adapter name nor a blend: a bad request, not an unknown model
    error = openai_error(client.post(CHAT, json=_chat_body(model="../../etc/passwd")), 400, param="model")
    assert error["type"] == "invalid_request_error"
    assert "../../etc/passwd" in error["message"] and "path separator" in error["message"]
    assert "an adapter name is 1 to 64 characters" in error["message"]


# -- auth --------------------------------------------------------------------------------------------


def test_missing_api_key_is_401(keyed_client: Any, openai_error: Any) -> None:
    openai_error(keyed_client.get("/v1/models"), 401, code="invalid_api_key")
    openai_error(keyed_client.post(CHAT, json=_chat_body()), 401, code="invalid_api_key")


def test_wrong_api_key_is_401(keyed_client: Any, openai_error: Any) -> None:
    openai_error(keyed_client.get("/v1/models", headers={"Authorization": "Bearer wrong"}), 401)
    openai_error(keyed_client.get("/v1/models", headers={"Authorization": f"Basic {API_KEY}"}), 401)
    openai_error(keyed_client.get("/v1/models", headers={"Authorization": "Bearer "}), 401)


def test_right_api_key_is_200(keyed_client: Any) -> None:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    assert keyed_client.get("/v1/models", headers=headers).status_code == 200
    assert keyed_client.post(CHAT, json=_chat_body(), headers=headers).status_code == 200


def test_auth_is_checked_before_the_body(keyed_client: Any, openai_error: Any) -> None:
    openai_error(keyed_client.post(CHAT, json={"model": TINY_NAME}), 401)


def test_health_needs_no_key(keyed_client: Any) -> None:
    response = keyed_client.get("/health")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


# -- routes and readiness ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/nope", "/nope", "/v1/chat/completion"])
def test_unknown_route_is_404_in_error_shape(client: Any, openai_error: Any, path: str) -> None:
    error = openai_error(client.get(path), 404)
    assert path in error["message"]


def test_wrong_method_is_405_in_error_shape(client: Any, openai_error: Any) -> None:
    openai_error(client.get(CHAT), 405)


def test_health_is_200_once_ready(client: Any) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "model": TINY_NAME}


@pytest.fixture(scope="module")
def not_ready_client(
    tiny_dir: Path, adapter_store: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    """An app over an engine that was never started (the model is 'still loading')."""
    from fastapi.testclient import TestClient

    from hotlora_server.api import create_app
    from hotlora_server.engine.engine import Engine
    from hotlora_server.settings import Settings

    settings = Settings.build(
        {
            "model": str(tiny_dir),
            "quantize": "none",
            "home": str(tmp_path_factory.mktemp("home-not-ready")),
            "adapters_dir": str(adapter_store),
            "served_model_name": TINY_NAME,
        },
        {},
    )
    engine = Engine(settings)
    with TestClient(create_app(engine)) as test_client:
        yield test_client


def test_not_ready_health_is_503_with_retry_after(not_ready_client: Any, openai_error: Any) -> None:
    response = not_ready_client.get("/health")
    openai_error(response, 503)
    assert int(response.headers["Retry-After"]) > 0


def test_not_ready_models_is_503(not_ready_client: Any, openai_error: Any) -> None:
    response = not_ready_client.get("/v1/models")
    openai_error(response, 503)
    assert "Retry-After" in response.headers


def test_not_ready_chat_is_503(not_ready_client: Any, openai_error: Any) -> None:
    response = not_ready_client.post(CHAT, json=_chat_body())
    openai_error(response, 503)
    assert "Retry-After" in response.headers


def test_no_error_is_fastapis_422(client: Any) -> None:
    bodies = [
        {},
        {"model": 1},
        {"model": TINY_NAME, "messages": "hi"},
        {"model": TINY_NAME, "messages": [{}]},
        {"model": TINY_NAME, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
    ]
    for body in bodies:
        response = client.post(CHAT, json=body)
        assert response.status_code == 400, (body, response.text)
        assert "detail" not in response.json()
