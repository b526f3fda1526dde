"""What the client sends, seen by a real HTTP server: defaults from the environment (read when a client is
built), the base URL, the API key, the target (`model`, `adapter`, `blend`) and the options in the body."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

from hotlora_client import AsyncClient, Client

from support.scripted_server import ScriptedServer, reply

MODELS = {
    "object": "list",
    "data": [
        {
            "id": "pig",
            "object": "model",
            "created": 1,
            "owned_by": "hotlora",
            "root": "base",
            "parent": "base",
        },
        {
            "id": "base",
            "object": "model",
            "created": 1,
            "owned_by": "hotlora",
            "root": "base",
            "parent": None,
        },
    ],
}
ANSWER = {
    "id": "c",
    "object": "chat.completion",
    "created": 1,
    "model": "base",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}


def sent(scripted: ScriptedServer, index: int = -1) -> dict:
    return json.loads(scripted.hits[index].body)


def test_environment_defaults_are_read_when_a_client_is_built(
    scripted: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOTLORA_BASE_URL", scripted.url + "/v1/")  # the openai SDK's form works too
    monkeypatch.setenv("HOTLORA_API_KEY", "from-env")
    client = Client()  # hotlora_client was imported long before these variables were set
    assert client.base_url == scripted.url
    assert client._config.api_key == "from-env"
    monkeypatch.setenv("HOTLORA_API_KEY", "changed")
    assert Client()._config.api_key == "changed" and Client(api_key="")._config.api_key is None
    assert Client(api_key="explicit")._config.api_key == "explicit"
    client.close()


def test_importing_reads_no_environment() -> None:
    code = (
        "import os, hotlora_client; os.environ['HOTLORA_BASE_URL'] = 'http://example.test:1'; "
        "print(hotlora_client.Client().base_url)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "http://example.test:1"


def test_the_api_key_is_sent_as_a_bearer_token(scripted: ScriptedServer) -> None:
    scripted.answer(reply(200, MODELS))
    with Client(scripted.url, api_key="sk-1") as client:
        assert [m.id for m in client.models.list()] == ["pig", "base"]
    with Client(scripted.url, api_key="") as client:
        client.models.list()
    assert scripted.hits[0].headers["authorization"] == "Bearer sk-1"
    assert "authorization" not in scripted.hits[1].headers


def test_no_target_means_the_base_model_looked_up_once(scripted: ScriptedServer) -> None:
    with Client(scripted.url) as client:
        scripted.answer(reply(200, MODELS), reply(200, ANSWER))
        assert client.chat("hi", max_tokens=3).text == "ok"
        client.chat([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}])
    paths = [(h.method, h.path) for h in scripted.hits]
    assert paths == [
        ("GET", "/v1/models"),
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/chat/completions"),
    ]
    assert sent(scripted, 1) == {
        "model": "base",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 3,
    }
    assert sent(scripted)["messages"][0] == {"role": "system", "content": "be brief"}


def test_adapter_blend_and_options_in_the_body(scripted: ScriptedServer) -> None:
    scripted.answer(reply(200, ANSWER))
    with Client(scripted.url) as client:
        client.chat("hi", adapter="pig", temperature=0, seed=7, stop=["\n"], user=None)
        assert sent(scripted) == {
            "model": "pig",
            "messages": [{"role": "user", "content": "hi"}],
            "temperature": 0,
            "seed": 7,
            "stop": ["\n"],
        }
        client.chat("hi", blend={"pig": 0.7, "yoda": 0.3}, blend_method="ties", density=0.5)
        assert sent(scripted)["model"] == "pig*0.7+yoda*0.3"
        assert (sent(scripted)["blend_method"], sent(scripted)["density"]) == ("ties", 0.5)
        client.chat("hi", blend=[("pig", 1)], extra_body={"top_k": 5})
        assert sent(scripted)["model"] == "pig*1.0" and sent(scripted)["top_k"] == 5
        with pytest.raises(ValueError, match="at most one of model, adapter and blend"):
            client.chat("hi", model="base", adapter="pig")
        with pytest.raises(ValueError, match="not an adapter name"):
            client.chat("hi", blend={"a+b": 1})
    assert len(scripted.hits) == 3


def test_sampling_extras_in_the_body(scripted: ScriptedServer) -> None:
    """OpenAI's `logit_bias` (token ids as JSON keys, given as ints or strings) and vLLM's extras go as is."""
    scripted.answer(reply(200, ANSWER))
    extras = {"top_k": 20, "min_p": 0.05, "repetition_penalty": 1.1, "min_tokens": 2, "ignore_eos": True}
    with Client(scripted.url) as client:
        client.chat("hi", model="base", logit_bias={42: -100, "7": 5.5}, **extras)
        assert sent(scripted) == {
            "model": "base",
            "messages": [{"role": "user", "content": "hi"}],
            "logit_bias": {"42": -100, "7": 5.5},
            **extras,
        }
        scripted.answer(
            reply(
                200,
                {
                    "id": "c",
                    "object": "text_completion",
                    "created": 1,
                    "model": "base",
                    "choices": [{"index": 0, "text": "ok", "finish_reason": "stop"}],
                },
            )
        )
        client.complete("once", model="base", top_k=-1, ignore_eos=False)
        assert sent(scripted) == {"model": "base", "prompt": "once", "top_k": -1, "ignore_eos": False}


WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
}


def test_tools_in_the_body_and_typed_calls_in_the_answer(scripted: ScriptedServer) -> None:
    """`tools`, `tool_choice` and `parallel_tool_calls` go as is; the answer's calls come back typed, and a
    conversation with them (a message object from an answer included) goes back to the server."""
    answer = {
        **ANSWER,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": None, "tool_calls": [CALL]},
                "finish_reason": "tool_calls",
            }
        ],
    }
    scripted.answer(reply(200, answer))
    choice = {"type": "function", "function": {"name": "get_weather"}}
    with Client(scripted.url) as client:
        completion = client.chat(
            "weather?", model="base", tools=[WEATHER], tool_choice=choice, parallel_tool_calls=False
        )
        assert sent(scripted) == {
            "model": "base",
            "messages": [{"role": "user", "content": "weather?"}],
            "tools": [WEATHER],
            "tool_choice": choice,
            "parallel_tool_calls": False,
        }
        assert completion.text == "" and completion.choices[0].finish_reason == "tool_calls"
        (call,) = completion.tool_calls
        assert (call.id, call.function.name, call.function.parsed_arguments()) == (
            "call_1",
            "get_weather",
            {"city": "Paris"},
        )
        followup = [
            {"role": "user", "content": "weather?"},
            completion.choices[0].message,
            {"role": "tool", "tool_call_id": call.id, "content": "rain"},
        ]
        client.chat(followup, model="base", tools=[WEATHER])
        assert sent(scripted)["messages"][1] == {"role": "assistant", "tool_calls": [CALL]}


def test_adapter_management_requests(scripted: ScriptedServer) -> None:
    card = {
        "id": "mix",
        "object": "adapter",
        "status": "available",
        "created": 1,
        "size_bytes": 1,
        "version": "v",
    }
    scripted.answer(reply(200, card))

    async def go() -> None:
        async with AsyncClient(scripted.url) as client:
            await client.adapters.blend("mix", {"a": 0.7, "b": 0.3}, method="svd")
            await client.adapters.load("mix", path="/srv/adapters/mix")
            await client.adapters.get("a b/c")
            scripted.answer(reply(200, {"id": "mix", "deleted": True, "status": "deleted"}))
            await client.adapters.unload("mix", purge=True)

    asyncio.run(go())
    hits = [(h.method, h.path, json.loads(h.body) if h.body else None) for h in scripted.hits]
    assert hits == [
        (
            "POST",
            "/v1/adapters/blend",
            {
                "name": "mix",
                "adapters": [{"name": "a", "weight": 0.7}, {"name": "b", "weight": 0.3}],
                "method": "svd",
            },
        ),
        ("POST", "/v1/adapters", {"name": "mix", "path": "/srv/adapters/mix"}),
        ("GET", "/v1/adapters/a%20b%2Fc", None),
        ("DELETE", "/v1/adapters/mix?purge=true", None),
    ]


def test_tokenizer_requests(scripted: ScriptedServer) -> None:
    """vLLM's bodies: a string is a raw `prompt`, a list `messages`; no target means no `model` (the server
    takes its base) and no lookup of it; options the caller left alone are not sent."""
    scripted.answer(
        reply(200, {"count": 2, "max_model_len": 8192, "tokens": [5, 6], "token_strs": ["a", "b"]})
    )
    messages = [{"role": "user", "content": "hi"}]
    with Client(scripted.url) as client:
        tokenized = client.tokenize("hi")
        assert (tokenized.count, tokenized.tokens, tokenized.token_strs) == (2, [5, 6], ["a", "b"])
        client.tokenize(messages, adapter="pig", add_generation_prompt=False, return_token_strs=True)
        client.tokenize("hi", blend={"pig": 0.5}, add_special_tokens=False)
        with pytest.raises(ValueError, match="at most one of model, adapter and blend"):
            client.tokenize("hi", model="base", blend={"pig": 1})
        scripted.answer(reply(200, {"prompt": "hi there"}))
        assert client.detokenize((5, 6)).text == "hi there"

    async def go() -> None:
        async with AsyncClient(scripted.url) as client:
            assert (await client.detokenize([7], model="base")).prompt == "hi there"

    asyncio.run(go())
    hits = [(h.method, h.path, json.loads(h.body)) for h in scripted.hits]
    assert hits == [
        ("POST", "/tokenize", {"prompt": "hi"}),
        (
            "POST",
            "/tokenize",
            {"model": "pig", "messages": messages, "add_generation_prompt": False, "return_token_strs": True},
        ),
        ("POST", "/tokenize", {"model": "pig*0.5", "prompt": "hi", "add_special_tokens": False}),
        ("POST", "/detokenize", {"tokens": [5, 6]}),
        ("POST", "/detokenize", {"tokens": [7], "model": "base"}),
    ]


def test_bad_settings_fail_at_construction() -> None:
    with pytest.raises(ValueError, match="http"):
        Client("localhost:8000")
    with pytest.raises(ValueError, match="max_retries"):
        Client(max_retries=-1)
