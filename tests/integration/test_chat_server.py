"""The chat server end to end: real SmolLM2 in 4-bit, real PEFT adapter, the official `openai` SDK, httpx, curl."""

from __future__ import annotations

import json
import shutil

import httpx
import openai
import pytest

from support.live_server import ADAPTER, BASE_ID, RunningServer, curl

pytestmark = pytest.mark.integration

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def test_health_and_models(server: RunningServer, http: httpx.Client) -> None:
    assert httpx.get(f"{server.base_url}/health").json()["status"] == "ok"  # no key needed for /health
    models = {m["id"]: m for m in http.get("/v1/models").json()["data"]}
    assert set(models) == {BASE_ID, ADAPTER}
    assert models[BASE_ID]["parent"] is None and models[BASE_ID]["quantization"] == "nf4"
    assert models[ADAPTER]["parent"] == BASE_ID and models[ADAPTER]["root"] == BASE_ID
    assert http.get(f"/v1/models/{ADAPTER}").json()["id"] == ADAPTER


def test_openai_sdk_answers_paris(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model=BASE_ID, messages=QUESTION, temperature=0, max_tokens=30)
    assert "Paris" in reply.choices[0].message.content
    assert reply.usage.completion_tokens <= 30 and reply.usage.prompt_tokens > 10
    assert reply.choices[0].finish_reason in ("stop", "length")


def test_openai_sdk_streams(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=BASE_ID,
        messages=QUESTION,
        temperature=0,
        max_tokens=30,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Paris" in text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes in (["stop"], ["length"])
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    whole = client.chat.completions.create(model=BASE_ID, messages=QUESTION, temperature=0, max_tokens=30)
    assert text == whole.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_adapter_changes_output(client: openai.OpenAI) -> None:
    def ask(model: str) -> str:
        reply = client.chat.completions.create(model=model, messages=QUESTION, temperature=0, max_tokens=12)
        return reply.choices[0].message.content

    base, adapted = ask(BASE_ID), ask(ADAPTER)
    assert adapted != base
    assert ask(BASE_ID) == base  # serving the adapter left the base untouched


def test_same_seed_same_output(client: openai.OpenAI) -> None:
    def sample(seed: int) -> list[str]:
        reply = client.chat.completions.create(
            model=BASE_ID,
            messages=[{"role": "user", "content": "Write a short poem about the sea."}],
            temperature=1.0,
            max_tokens=20,
            seed=seed,
            n=2,
        )
        return [c.message.content for c in reply.choices]

    first = sample(1234)
    assert sample(1234) == first
    assert sample(99) != first


def test_stop_sequence_spanning_tokens_never_leaks(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=BASE_ID, messages=QUESTION, temperature=0, max_tokens=30, stop=["Paris"], stream=True
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Par" not in text and text.strip().endswith("is")
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == ["stop"]


def test_completions_endpoint(client: openai.OpenAI) -> None:
    reply = client.completions.create(
        model=BASE_ID, prompt="The capital of France is", max_tokens=8, temperature=0, logprobs=2
    )
    choice = reply.choices[0]
    assert choice.text and choice.finish_reason in ("stop", "length")
    assert len(choice.logprobs.tokens) == reply.usage.completion_tokens
    assert all(len(top) == 2 for top in choice.logprobs.top_logprobs)


def test_chat_logprobs(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=BASE_ID, messages=QUESTION, temperature=0, max_tokens=5, logprobs=True, top_logprobs=3
    )
    content = reply.choices[0].logprobs.content
    assert "".join(t.token for t in content) == reply.choices[0].message.content
    for token in content:
        assert len(token.top_logprobs) == 3 and token.logprob <= 0
        assert token.top_logprobs[0].logprob >= token.logprob  # greedy: the chosen token is the most likely


def test_sampling_extras_tokenizer_routes_and_defaults(
    server: RunningServer, client: openai.OpenAI, http: httpx.Client
) -> None:
    """OpenAI's `logit_bias`, vLLM's extras through `extra_body`, `/tokenize` and `/detokenize`, and the
    embedded model's own sampling defaults (its card's temperature 0.2, top_p 0.9) in the startup log."""
    assert "temperature=0.2, top_p=0.9" in server.output()
    tokenized = http.post("/tokenize", json={"model": BASE_ID, "prompt": " Paris"}).json()
    assert tokenized["count"] == len(tokenized["tokens"]) >= 1 and tokenized["max_model_len"] == 8192
    paris = tokenized["tokens"][0]
    forced = client.chat.completions.create(
        model=BASE_ID, messages=QUESTION, max_tokens=3, logit_bias={str(paris): 100}
    )
    spelled = http.post("/detokenize", json={"model": BASE_ID, "tokens": [paris] * 3}).json()["prompt"]
    assert forced.choices[0].message.content == spelled
    chat = http.post("/tokenize", json={"model": BASE_ID, "messages": QUESTION}).json()
    assert chat["count"] == forced.usage.prompt_tokens

    def ask(**options: object) -> openai.types.chat.ChatCompletion:
        return client.chat.completions.create(
            model=BASE_ID, messages=QUESTION, **{"max_tokens": 12, **options}
        )  # type: ignore[arg-type]

    greedy = ask(temperature=0).choices[0].message.content
    assert ask(temperature=1.0, seed=5, extra_body={"top_k": 1}).choices[0].message.content == greedy
    assert ask(temperature=1.0, seed=5, extra_body={"min_p": 1.0}).choices[0].message.content == greedy
    assert ask(temperature=0, extra_body={"repetition_penalty": 1.3}).choices[0].finish_reason in (
        "stop",
        "length",
    )
    endless = ask(temperature=0, max_tokens=40, extra_body={"ignore_eos": True})
    assert endless.choices[0].finish_reason == "length" and endless.usage.completion_tokens == 40
    with pytest.raises(openai.BadRequestError) as info:
        ask(logit_bias={"999999": 5})
    assert info.value.param == "logit_bias"


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": "no-such-model", "messages": QUESTION}, 404, "model"),
        ({"model": BASE_ID, "messages": QUESTION, "max_tokens": 9000}, 400, "messages"),
        ({"model": BASE_ID, "messages": QUESTION, "n": 9}, 400, "n"),
        ({"model": BASE_ID, "messages": []}, 400, "messages"),
        ({"model": BASE_ID, "messages": QUESTION, "temperature": "warm"}, 400, "temperature"),
        ({"model": BASE_ID, "messages": QUESTION, "max_tokens": -1}, 400, "max_tokens"),
    ],
)
def test_errors_are_openai_shaped(http: httpx.Client, body: dict, status: int, param: str) -> None:
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["param"] == param


def test_unknown_model_lists_what_exists(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="no-such-model", messages=QUESTION)
    message = info.value.body["message"]
    assert "no-such-model" in message and BASE_ID in message and ADAPTER in message


def test_context_length_error_via_sdk(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=BASE_ID, messages=QUESTION, max_tokens=8190)
    assert info.value.code == "context_length_exceeded"


def test_api_key_required(server: RunningServer) -> None:
    bad = openai.OpenAI(base_url=server.v1, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    response = httpx.post(f"{server.v1}/chat/completions", json={"model": BASE_ID, "messages": QUESTION})
    assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_readme_curl_example(server: RunningServer) -> None:
    out = curl(server, "/chat/completions", {"model": ADAPTER, "messages": QUESTION, "max_tokens": 8})
    reply = json.loads(out)
    assert reply["model"] == ADAPTER and reply["choices"][0]["message"]["content"]
