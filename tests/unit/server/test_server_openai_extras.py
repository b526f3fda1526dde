"""OpenAI's and vLLM's extras on the tiny engine: logit_bias, top_k, min_p, repetition_penalty, min_tokens,
ignore_eos (each row with its own), `/tokenize` and `/detokenize`, CORS, and the generation config's
sampling defaults."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from support.tiny_server import (
    ADAPTER_NAME,
    API_KEY,
    TINY_CONTEXT,
    TINY_NAME,
    chat_request,
    collect,
    running_engine,
    tiny_settings,
)

CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "Tell me about the sea."}]


def _chat(client: Any, **extra: Any) -> dict[str, Any]:
    body = {"model": TINY_NAME, "messages": MESSAGES, "max_tokens": 8, "temperature": 0, **extra}
    response = client.post(CHAT, json=body)
    assert response.status_code == 200, response.text
    return response.json()


def _content(reply: dict[str, Any]) -> str:
    return reply["choices"][0]["message"]["content"]


def _ending(reply: dict[str, Any]) -> tuple[str, int]:
    return reply["choices"][0]["finish_reason"], reply["usage"]["completion_tokens"]


# -- logit_bias ----------------------------------------------------------------------------------------


def test_logit_bias_of_100_forces_a_token(client: Any, real_tokenizer: Any) -> None:
    token = real_tokenizer.encode(" ocean", add_special_tokens=False)[0]
    expected = real_tokenizer.decode([token] * 4, clean_up_tokenization_spaces=False)
    for temperature in (0, 1.0):
        reply = _chat(client, logit_bias={str(token): 100}, max_tokens=4, temperature=temperature, seed=1)
        assert _content(reply) == expected
    completion = client.post(
        "/v1/completions",
        json={"model": TINY_NAME, "prompt": "The sea", "max_tokens": 3, "logit_bias": {str(token): 100}},
    )
    assert completion.json()["choices"][0]["text"] == real_tokenizer.decode([token] * 3)


def test_logit_bias_of_minus_100_bans_the_greedy_choice(client: Any, real_tokenizer: Any) -> None:
    first = _chat(client, max_tokens=1, logprobs=True)["choices"][0]["logprobs"]["content"][0]["token"]
    token = real_tokenizer.convert_tokens_to_ids(real_tokenizer.tokenize(first))[0]
    banned = _chat(client, max_tokens=1, logit_bias={str(token): -100}, logprobs=True)
    assert banned["choices"][0]["logprobs"]["content"][0]["token"] != first


# -- min_tokens, ignore_eos: EOS forced by logit_bias ----------------------------------------------------


def test_min_tokens_and_ignore_eos_hold_back_an_eos(client: Any, real_tokenizer: Any) -> None:
    eos = {str(real_tokenizer.eos_token_id): 100}
    assert _ending(_chat(client, logit_bias=eos)) == ("stop", 1)  # EOS at once
    assert _ending(_chat(client, logit_bias=eos, min_tokens=3)) == ("stop", 4)  # three tokens, then EOS
    assert _ending(_chat(client, logit_bias=eos, ignore_eos=True)) == ("length", 8)  # to max_tokens
    assert _ending(_chat(client, logit_bias=eos, ignore_eos=True, min_tokens=8)) == ("length", 8)
    assert _content(_chat(client, logit_bias=eos, ignore_eos=True)) == ""  # EOS has no text
    completion = client.post(
        "/v1/completions",
        json={"model": TINY_NAME, "prompt": "Hi", "max_tokens": 5, "logit_bias": eos, "min_tokens": 2},
    )
    assert completion.json()["usage"]["completion_tokens"] == 3


def test_stop_sequences_count_only_after_min_tokens(client: Any) -> None:
    """As vLLM: a stop sequence in the first `min_tokens` tokens does not end the row."""
    full = _content(_chat(client))
    assert full
    assert _content(_chat(client, stop=full[0])) == ""
    held = _chat(client, stop=full[0], min_tokens=3)
    assert full.startswith(_content(held)) and _content(held).startswith(full[0])
    assert held["usage"]["completion_tokens"] >= 3


# -- vLLM's extras through the API -------------------------------------------------------------------------


def test_top_k_one_is_greedy_through_the_api(client: Any) -> None:
    greedy = _content(_chat(client, max_tokens=12))
    for seed in (1, 2):
        assert _content(_chat(client, max_tokens=12, temperature=1.5, seed=seed, top_k=1)) == greedy
        assert _content(_chat(client, max_tokens=12, temperature=1.5, seed=seed, min_p=1.0)) == greedy


def test_repetition_penalty_counts_the_prompt_s_tokens(client: Any, real_tokenizer: Any) -> None:
    """A token made the greedy choice by a bias is penalized when the prompt holds it (vLLM and HF count the
    prompt), and not when it does not."""
    token = real_tokenizer.encode(" sea", add_special_tokens=False)[0]
    first = real_tokenizer.decode([token])
    bias = {str(token): 10}
    assert _content(_chat(client, max_tokens=1, logit_bias=bias)) == first  # the prompt holds " sea"
    assert _content(_chat(client, max_tokens=1, logit_bias=bias, repetition_penalty=1000.0)) != first
    lake = [{"role": "user", "content": "Tell me about the lake."}]
    assert (
        _content(_chat(client, messages=lake, max_tokens=1, logit_bias=bias, repetition_penalty=1000.0))
        == first
    )


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"logit_bias": {"abc": 1}}, "logit_bias"),
        ({"logit_bias": {"-1": 1}}, "logit_bias"),
        ({"logit_bias": {"5": 100.5}}, "logit_bias"),
        ({"logit_bias": {"5": "1"}}, "logit_bias"),
        ({"logit_bias": {str(i): 1 for i in range(301)}}, "logit_bias"),
        ({"logit_bias": {"49152": 1}}, "logit_bias"),  # beyond the vocabulary: the engine says so
        ({"top_k": -2}, "top_k"),
        ({"top_k": 1.5}, "top_k"),
        ({"min_p": 1.5}, "min_p"),
        ({"min_p": -0.1}, "min_p"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"repetition_penalty": -1.0}, "repetition_penalty"),
        ({"min_tokens": -1}, "min_tokens"),
        ({"min_tokens": 9}, "min_tokens"),
        ({"ignore_eos": "yes"}, "ignore_eos"),
    ],
)
def test_invalid_extras_are_400_naming_the_field(
    client: Any, openai_error: Any, fields: dict[str, Any], param: str
) -> None:
    body = {"model": TINY_NAME, "messages": MESSAGES, "max_tokens": 8, **fields}
    error = openai_error(client.post(CHAT, json=body), 400)
    assert error["param"] == param or param in error["message"], error
    completion = {"model": TINY_NAME, "prompt": "Hi", "max_tokens": 8, **fields}
    openai_error(client.post("/v1/completions", json=completion), 400)


def test_the_extras_are_documented_in_the_schema(client: Any) -> None:
    fields = client.get("/openapi.json").json()["components"]["schemas"]["ChatCompletionRequest"][
        "properties"
    ]
    assert {"logit_bias", "top_k", "min_p", "repetition_penalty", "min_tokens", "ignore_eos"} <= set(fields)


# -- every row with its own options --------------------------------------------------------------------------


def _extras_cases(eos: int, token: int) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (TINY_NAME, "plain greedy row", {}),
        (ADAPTER_NAME, "biased and sampled", {"logit_bias": ((token, 4.0),), "temperature": 0.8, "seed": 3}),
        (TINY_NAME, "top k and min p", {"temperature": 1.2, "top_k": 5, "min_p": 0.05, "seed": 11, "n": 2}),
        (TINY_NAME, "a penalty for repeats", {"repetition_penalty": 1.3}),
        (ADAPTER_NAME, "held eos", {"logit_bias": ((eos, 100.0),), "min_tokens": 3}),
        (TINY_NAME, "ignored eos", {"logit_bias": ((eos, 100.0),), "ignore_eos": True, "max_tokens": 6}),
        (TINY_NAME, "seeded plain row", {"temperature": 0.9, "seed": 7}),
        (ADAPTER_NAME, "plain greedy row", {}),
    ]


def test_each_row_gets_what_it_gets_alone(tiny_engine: Any, real_tokenizer: Any) -> None:
    """Rows with logit_bias, top_k, min_p, repetition_penalty, min_tokens, ignore_eos beside rows without
    any: every row's output equals its output alone (its tokens depend on its own options and seed only)."""
    cases = _extras_cases(
        real_tokenizer.eos_token_id, real_tokenizer.encode(" sea", add_special_tokens=False)[0]
    )

    async def run(together: bool) -> list[tuple[dict[int, str], int]]:
        requests = [chat_request(model, text, **extra) for model, text, extra in cases]
        if together:
            results = await asyncio.gather(*(collect(tiny_engine, r) for r in requests))
        else:
            results = [await collect(tiny_engine, r) for r in requests]
        return [(texts, usage.completion_tokens) for texts, usage in results]

    alone = asyncio.run(run(together=False))
    assert alone[4][1] == 4 and alone[5][1] == 6  # the EOS rows: held three tokens; ignored to max_tokens
    assert asyncio.run(run(together=True)) == alone


# -- /tokenize and /detokenize -------------------------------------------------------------------------------


def test_tokenize_a_prompt_and_read_it_back(client: Any, real_tokenizer: Any) -> None:
    text = "Hello world, the sea is deep."
    reply = client.post("/tokenize", json={"model": TINY_NAME, "prompt": text})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    expected = real_tokenizer(text)["input_ids"]
    assert body == {"count": len(expected), "max_model_len": TINY_CONTEXT, "tokens": expected}
    back = client.post("/detokenize", json={"model": TINY_NAME, "tokens": body["tokens"]})
    assert back.status_code == 200 and back.json() == {"prompt": text}


def test_tokenize_a_chat_as_a_chat_request_is(client: Any, real_tokenizer: Any) -> None:
    template = real_tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    expected = real_tokenizer(template, add_special_tokens=False)["input_ids"]
    body = client.post("/tokenize", json={"messages": MESSAGES}).json()  # no model: the base
    assert body["tokens"] == expected and body["count"] == len(expected)
    assert client.post("/detokenize", json={"tokens": expected}).json()["prompt"] == template
    bare = client.post("/tokenize", json={"messages": MESSAGES, "add_generation_prompt": False}).json()
    assert bare["tokens"] == expected[: bare["count"]] and bare["count"] < body["count"]
    # the prompt a chat completion counts is the same
    usage = _chat(client, max_tokens=1)["usage"]
    assert usage["prompt_tokens"] == body["count"]


def test_tokenize_options_and_adapters(client: Any, real_tokenizer: Any) -> None:
    text = "Hi there"
    base = client.post("/tokenize", json={"prompt": text, "return_token_strs": True}).json()
    assert base["token_strs"] == real_tokenizer.convert_ids_to_tokens(base["tokens"])
    assert (
        client.post("/tokenize", json={"model": ADAPTER_NAME, "prompt": text}).json()["tokens"]
        == base["tokens"]
    )
    special = client.post("/tokenize", json={"prompt": text, "add_special_tokens": False}).json()
    assert special["tokens"] == real_tokenizer(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize(
    ("path", "body", "status", "param"),
    [
        ("/tokenize", {"model": "no-such-model", "prompt": "x"}, 404, "model"),
        ("/detokenize", {"model": "no-such-model", "tokens": [1]}, 404, "model"),
        ("/tokenize", {"prompt": "x", "messages": MESSAGES}, 400, None),
        ("/tokenize", {"model": TINY_NAME}, 400, None),
        ("/tokenize", {"prompt": "x", "tools": [{"type": "function"}]}, 400, "tools"),
        ("/tokenize", {"prompt": 7}, 400, "prompt"),
        ("/tokenize", {"prompt": "word " * 600}, 400, "prompt"),  # beyond the context (256 tokens)
        ("/tokenize", {"prompt": "word " * 100_000}, 400, "prompt"),  # refused by its characters
        ("/detokenize", {"tokens": [49152]}, 400, "tokens"),  # outside the vocabulary
        ("/detokenize", {"tokens": [-1]}, 400, "tokens"),
        ("/detokenize", {"tokens": [1] * (TINY_CONTEXT + 1)}, 400, "tokens"),
        ("/detokenize", {"tokens": "1 2"}, 400, "tokens"),
    ],
)
def test_bad_tokenizer_requests(
    client: Any, openai_error: Any, path: str, body: dict[str, Any], status: int, param: str | None
) -> None:
    error = openai_error(client.post(path, json=body), status)
    if param is not None:
        assert error["param"] == param or param in error["message"], error


def test_tokenizer_routes_need_the_api_key(keyed_client: Any, openai_error: Any) -> None:
    openai_error(keyed_client.post("/tokenize", json={"prompt": "x"}), 401)
    openai_error(keyed_client.post("/detokenize", json={"tokens": [1]}), 401)
    auth = {"Authorization": f"Bearer {API_KEY}"}
    assert keyed_client.post("/tokenize", json={"prompt": "x"}, headers=auth).status_code == 200


# -- CORS ------------------------------------------------------------------------------------------------------

ORIGIN = "https://app.example"
PREFLIGHT = {
    "Origin": ORIGIN,
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization, content-type",
}


def _app_client(engine: Any, **options: Any) -> Any:
    from fastapi.testclient import TestClient

    from hotlora_server.api import create_app

    return TestClient(create_app(engine, **options), base_url="http://localhost")


def test_cors_preflight_is_answered_without_the_key_and_requests_still_need_it(tiny_engine: Any) -> None:
    with _app_client(tiny_engine, api_key=API_KEY, allowed_origins=[ORIGIN]) as web:
        preflight = web.options(CHAT, headers=PREFLIGHT)
        assert preflight.status_code == 200, preflight.text
        assert preflight.headers["access-control-allow-origin"] == ORIGIN
        assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
        body = {"model": TINY_NAME, "messages": MESSAGES, "max_tokens": 2, "temperature": 0}
        keyless = web.post(CHAT, json=body, headers={"Origin": ORIGIN})
        assert keyless.status_code == 401  # the page may read why
        assert keyless.headers["access-control-allow-origin"] == ORIGIN
        keyed = web.post(CHAT, json=body, headers={"Origin": ORIGIN, "Authorization": f"Bearer {API_KEY}"})
        assert keyed.status_code == 200
        assert keyed.headers["access-control-allow-origin"] == ORIGIN
        assert "x-request-id" in keyed.headers["access-control-expose-headers"].lower()


def test_cors_refuses_other_origins(tiny_engine: Any) -> None:
    with _app_client(tiny_engine, api_key=API_KEY, allowed_origins=[ORIGIN]) as web:
        other = web.options(CHAT, headers={**PREFLIGHT, "Origin": "https://evil.example"})
        assert other.status_code == 400
        assert "access-control-allow-origin" not in other.headers
        plain = web.get(
            "/v1/models", headers={"Origin": "https://evil.example", "Authorization": f"Bearer {API_KEY}"}
        )
        assert plain.status_code == 200 and "access-control-allow-origin" not in plain.headers


def test_cors_is_off_by_default(tiny_engine: Any) -> None:
    with _app_client(tiny_engine, api_key=API_KEY) as web:
        preflight = web.options(CHAT, headers=PREFLIGHT)
        assert preflight.status_code in (401, 405)
        assert "access-control-allow-origin" not in preflight.headers


def test_cors_does_not_open_the_host_guard(tiny_engine: Any) -> None:
    """A keyless server with CORS still answers a rebound name with 403, preflight included."""
    with _app_client(tiny_engine, allowed_hosts=(), allowed_origins=["*"]) as web:
        assert web.options(CHAT, headers=PREFLIGHT).headers["access-control-allow-origin"] == "*"
        rebound = web.options(CHAT, headers={**PREFLIGHT, "Host": "evil.example"})
        assert rebound.status_code == 403
        assert "access-control-allow-origin" not in rebound.headers


# -- sampling defaults from the generation config --------------------------------------------------------------


def _defaults(tmp_path: Path, tiny_dir: Path, model_config: dict[str, Any], **flags: Any) -> dict[str, Any]:
    from transformers import GenerationConfig

    from hotlora_server.engine.loader import sampling_defaults

    settings = tiny_settings(tiny_dir, tmp_path, tmp_path / "store", **flags)
    model = SimpleNamespace(generation_config=GenerationConfig(bos_token_id=1, **model_config))
    return sampling_defaults(settings, model, "m").given()


def test_generation_config_defaults(tmp_path: Path, tiny_dir: Path) -> None:
    assert _defaults(tmp_path, tiny_dir, {}) == {}
    found = {"temperature": 0.6, "top_p": 0.95, "top_k": 20, "min_p": 0.01, "repetition_penalty": 1.05}
    assert _defaults(tmp_path, tiny_dir, {**found, "max_new_tokens": 64, "do_sample": True}) == {
        **found,
        "max_new_tokens": 64,
    }
    assert _defaults(tmp_path, tiny_dir, found, generation_config="vllm") == {}
    override = '{"temperature": 0.0, "top_k": -1}'
    assert _defaults(tmp_path, tiny_dir, found, override_generation_config=override) == {
        **found,
        "temperature": 0.0,
        "top_k": -1,
    }
    assert _defaults(
        tmp_path, tiny_dir, {}, generation_config="vllm", override_generation_config=override
    ) == {"temperature": 0.0, "top_k": -1}


def test_the_embedded_model_gets_its_card_s_defaults(tmp_path: Path, tiny_dir: Path) -> None:
    """Its GGUF carries no generation config: temperature 0.2 and top_p 0.9, as its model card recommends,
    unless its folder says otherwise, `vllm` turns them off or the override replaces them."""
    assert _defaults(tmp_path, tiny_dir, {}, model=None) == {"temperature": 0.2, "top_p": 0.9}
    assert _defaults(tmp_path, tiny_dir, {"temperature": 0.7}, model="smollm2-135m-instruct") == {
        "temperature": 0.7,
        "top_p": 0.9,
    }
    assert _defaults(tmp_path, tiny_dir, {}, model=None, generation_config="vllm") == {}
    assert _defaults(
        tmp_path, tiny_dir, {}, model=None, override_generation_config='{"temperature": 1.0}'
    ) == {"temperature": 1.0, "top_p": 0.9}


def test_a_generation_config_folder_and_values_out_of_range(
    tmp_path: Path, tiny_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from hotlora_server.engine.loader import ModelLoadError

    folder = tmp_path / "gen"
    folder.mkdir()
    (folder / "generation_config.json").write_text(json.dumps({"temperature": 0.4, "top_p": 0.8}))
    assert _defaults(tmp_path, tiny_dir, {"temperature": 0.9}, generation_config=str(folder)) == {
        "temperature": 0.4,
        "top_p": 0.8,
    }
    with pytest.raises(ModelLoadError, match="generation_config.json"):
        _defaults(tmp_path, tiny_dir, {}, generation_config=str(tmp_path / "nowhere"))
    with caplog.at_level(logging.WARNING):
        assert _defaults(tmp_path, tiny_dir, {"temperature": 5.0, "top_p": 0.5}) == {"top_p": 0.5}
    assert "temperature" in caplog.text


def test_requests_take_the_model_s_defaults_for_what_they_leave_out(
    tiny_dir: Path, adapter_store: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A folder whose generation config says greedy and 3 new tokens: a request without temperature and
    max_tokens gets exactly that; one that gives them gets its own. The defaults are in the startup log."""
    folder = tmp_path / "model"
    shutil.copytree(tiny_dir, folder)
    config = json.loads((folder / "generation_config.json").read_text())
    (folder / "generation_config.json").write_text(
        json.dumps({**config, "temperature": 0.0, "max_new_tokens": 3})
    )
    settings = tiny_settings(folder, tmp_path / "home", adapter_store)
    with caplog.at_level(logging.INFO), running_engine(settings) as engine:
        greedy = asyncio.run(collect(engine, chat_request(TINY_NAME, "Hi", max_tokens=3, temperature=0.0)))
        implicit = asyncio.run(
            collect(engine, chat_request(TINY_NAME, "Hi", max_tokens=None, temperature=None))
        )
        assert implicit == greedy and implicit[1].completion_tokens == 3
        own = asyncio.run(
            collect(engine, chat_request(TINY_NAME, "Hi", max_tokens=5, temperature=1.0, seed=1))
        )
        greedy5 = asyncio.run(collect(engine, chat_request(TINY_NAME, "Hi", max_tokens=5, temperature=0.0)))
        assert own[1].completion_tokens == 5 and own[0] != greedy5[0]
    assert "temperature=0, max_new_tokens=3" in caplog.text
