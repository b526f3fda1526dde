"""Request -> prompt -> tokens -> response through the real app, engine thread and tokenizer (tiny model)."""

from __future__ import annotations

from typing import Any

import pytest

TINY_NAME = "tiny"  # served_model_name of the tiny engine (conftest.py)
ADAPTER_NAME = "tiny-adapter"  # the adapter conftest.py saves into the store
MESSAGES = [{"role": "user", "content": "Say hello in three languages."}]
PROMPT = "Once upon a time"


def _chat(client: Any, **fields: Any) -> dict[str, Any]:
    body = {"model": TINY_NAME, "messages": MESSAGES, **fields}
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def _complete(client: Any, **fields: Any) -> dict[str, Any]:
    body = {"model": TINY_NAME, "prompt": PROMPT, **fields}
    response = client.post("/v1/completions", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def _stream(client: Any, path: str, body: dict[str, Any], sse: Any) -> list[Any]:
    with client.stream("POST", path, json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        return sse(response)


def _content(result: dict[str, Any], index: int = 0) -> str:
    return result["choices"][index]["message"]["content"]


@pytest.fixture(scope="module")
def greedy20(client: Any) -> dict[str, Any]:
    """The tiny model's greedy reply to MESSAGES, 20 tokens."""
    return _chat(client, max_tokens=20, temperature=0)


# -- chat, non-streaming -----------------------------------------------------------------------------


def test_chat_completion_shape(client: Any, real_tokenizer: Any) -> None:
    result = _chat(client, max_tokens=5, temperature=0)
    assert result["id"].startswith("chatcmpl-")
    assert result["object"] == "chat.completion"
    assert isinstance(result["created"], int)
    assert result["model"] == TINY_NAME
    assert len(result["choices"]) == 1
    choice = result["choices"][0]
    assert choice["index"] == 0
    assert choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str) and choice["message"]["content"]
    assert choice["finish_reason"] == "length"
    assert choice["logprobs"] is None
    rendered = real_tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    prompt_tokens = len(real_tokenizer(rendered, add_special_tokens=False)["input_ids"])
    assert result["usage"] == {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": 5,
        "total_tokens": prompt_tokens + 5,
    }


def test_max_completion_tokens_is_honoured(client: Any) -> None:
    result = _chat(client, max_completion_tokens=3, temperature=0)
    assert result["usage"]["completion_tokens"] == 3
    assert result["choices"][0]["finish_reason"] == "length"


def test_greedy_is_deterministic(client: Any, greedy20: dict[str, Any]) -> None:
    assert _content(_chat(client, max_tokens=20, temperature=0)) == _content(greedy20)


def test_content_parts_equal_a_string(client: Any) -> None:
    parts = [{"type": "text", "text": "Say hello "}, {"type": "text", "text": "in three languages."}]
    as_parts = client.post(
        "/v1/chat/completions",
        json={
            "model": TINY_NAME,
            "messages": [{"role": "user", "content": parts}],
            "max_tokens": 6,
            "temperature": 0,
        },
    )
    assert as_parts.status_code == 200, as_parts.text
    assert as_parts.json()["choices"][0]["message"]["content"] == _content(
        _chat(client, max_tokens=6, temperature=0)
    )


# -- chat, streaming ---------------------------------------------------------------------------------


def test_stream_matches_non_streaming(client: Any, sse: Any) -> None:
    expected = _chat(client, max_tokens=8, temperature=0)
    events = _stream(
        client,
        "/v1/chat/completions",
        {"model": TINY_NAME, "messages": MESSAGES, "max_tokens": 8, "temperature": 0, "stream": True},
        sse,
    )
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert chunks and all(isinstance(c, dict) for c in chunks)
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("chatcmpl-")
    assert {c["model"] for c in chunks} == {TINY_NAME}
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(c.get("usage") is None for c in chunks)  # no usage chunk unless asked for
    text = "".join(ch["delta"].get("content") or "" for c in chunks for ch in c["choices"])
    assert text == _content(expected)
    finishes = [ch["finish_reason"] for c in chunks for ch in c["choices"] if ch["finish_reason"]]
    assert finishes == ["length"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_stream_usage_chunk_only_when_asked(client: Any, sse: Any) -> None:
    body = {
        "model": TINY_NAME,
        "messages": MESSAGES,
        "max_tokens": 5,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    events = _stream(client, "/v1/chat/completions", body, sse)
    assert events[-1] == "[DONE]"
    with_usage = [c for c in events[:-1] if c.get("usage") is not None]
    assert len(with_usage) == 1
    assert with_usage[0] is events[-2]  # the last chunk before [DONE]
    assert with_usage[0]["choices"] == []
    usage = with_usage[0]["usage"]
    assert usage["completion_tokens"] == 5
    assert usage["total_tokens"] == usage["prompt_tokens"] + 5

    body["stream_options"] = {"include_usage": False}
    events = _stream(client, "/v1/chat/completions", body, sse)
    assert all(c.get("usage") is None for c in events[:-1])


# -- n, seeds ----------------------------------------------------------------------------------------


def test_n_choices_with_seed(client: Any) -> None:
    result = _chat(client, n=3, seed=1234, temperature=1.0, max_tokens=4)
    assert [c["index"] for c in result["choices"]] == [0, 1, 2]
    assert all(c["finish_reason"] == "length" for c in result["choices"])
    assert result["usage"]["completion_tokens"] == 12  # summed over the choices, the prompt counted once
    single = _chat(client, seed=1234, temperature=1.0, max_tokens=4)
    assert result["usage"]["prompt_tokens"] == single["usage"]["prompt_tokens"]
    assert len({_content(result, i) for i in range(3)}) > 1  # each choice samples from its own seed
    assert _content(result, 0) == _content(single)  # choice 0 is what n=1 gives with the same seed


def test_n_choices_stream(client: Any, sse: Any) -> None:
    body = {
        "model": TINY_NAME,
        "messages": MESSAGES,
        "n": 2,
        "seed": 5,
        "temperature": 1.0,
        "max_tokens": 3,
        "stream": True,
    }
    events = _stream(client, "/v1/chat/completions", body, sse)
    expected = _chat(client, n=2, seed=5, temperature=1.0, max_tokens=3)
    for index in (0, 1):
        deltas = [ch for c in events[:-1] for ch in c["choices"] if ch["index"] == index]
        assert deltas[0]["delta"]["role"] == "assistant"
        assert "".join(d["delta"].get("content") or "" for d in deltas) == _content(expected, index)
        assert deltas[-1]["finish_reason"] == "length"


def test_same_seed_same_output_different_seed_differs(client: Any) -> None:
    first = _content(_chat(client, seed=7, temperature=1.0, max_tokens=8))
    assert first == _content(_chat(client, seed=7, temperature=1.0, max_tokens=8))
    assert first != _content(_chat(client, seed=8, temperature=1.0, max_tokens=8))


# -- logprobs ----------------------------------------------------------------------------------------


def test_chat_logprobs_shape(client: Any) -> None:
    result = _chat(client, max_tokens=5, temperature=0, logprobs=True, top_logprobs=3)
    content = result["choices"][0]["logprobs"]["content"]
    assert len(content) == result["usage"]["completion_tokens"] == 5
    for item in content:
        assert set(item) == {"token", "logprob", "bytes", "top_logprobs"}
        assert isinstance(item["token"], str)
        assert item["logprob"] <= 0.0
        assert isinstance(item["bytes"], list) and all(
            isinstance(b, int) and 0 <= b < 256 for b in item["bytes"]
        )
        assert len(item["top_logprobs"]) == 3
        for alt in item["top_logprobs"]:
            assert set(alt) == {"token", "logprob", "bytes"}
            assert isinstance(alt["bytes"], list) and alt["bytes"]
        values = [alt["logprob"] for alt in item["top_logprobs"]]
        assert values == sorted(values, reverse=True)
        # greedy: the chosen token is the most likely one
        assert item["token"] == item["top_logprobs"][0]["token"]
        assert item["logprob"] == pytest.approx(item["top_logprobs"][0]["logprob"])
    raw = b"".join(bytes(item["bytes"]) for item in content)
    assert raw.decode("utf-8", errors="replace") == _content(result)


def test_chat_logprobs_without_alternatives(client: Any) -> None:
    result = _chat(client, max_tokens=3, temperature=0, logprobs=True)
    content = result["choices"][0]["logprobs"]["content"]
    assert len(content) == 3
    assert all(item["top_logprobs"] == [] for item in content)


def test_chat_logprobs_in_stream(client: Any, sse: Any) -> None:
    body = {
        "model": TINY_NAME,
        "messages": MESSAGES,
        "max_tokens": 4,
        "temperature": 0,
        "stream": True,
        "logprobs": True,
        "top_logprobs": 2,
    }
    events = _stream(client, "/v1/chat/completions", body, sse)
    items = [
        lp
        for c in events[:-1]
        for ch in c["choices"]
        if ch.get("logprobs")
        for lp in ch["logprobs"]["content"]
    ]
    assert len(items) == 4
    assert all(len(item["top_logprobs"]) == 2 for item in items)


# -- /v1/completions ---------------------------------------------------------------------------------


def test_completion_shape(client: Any, real_tokenizer: Any) -> None:
    result = _complete(client, max_tokens=5, temperature=0)
    assert result["id"].startswith("cmpl-")
    assert result["object"] == "text_completion"
    assert result["model"] == TINY_NAME
    choice = result["choices"][0]
    assert choice["index"] == 0 and isinstance(choice["text"], str) and choice["text"]
    assert choice["finish_reason"] == "length"
    assert choice["logprobs"] is None
    prompt_tokens = len(real_tokenizer(PROMPT)["input_ids"])
    assert result["usage"] == {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": 5,
        "total_tokens": prompt_tokens + 5,
    }


def test_completion_default_max_tokens_is_16(client: Any) -> None:
    result = _complete(client, temperature=0)
    assert result["usage"]["completion_tokens"] == 16


def test_completion_prompt_as_one_element_list(client: Any) -> None:
    assert (
        _complete(client, prompt=[PROMPT], max_tokens=4, temperature=0)["choices"][0]["text"]
        == _complete(client, max_tokens=4, temperature=0)["choices"][0]["text"]
    )


def test_completion_legacy_logprobs_shape(client: Any) -> None:
    result = _complete(client, max_tokens=5, temperature=0, logprobs=2)
    choice = result["choices"][0]
    lp = choice["logprobs"]
    assert set(lp) == {"tokens", "token_logprobs", "top_logprobs", "text_offset"}
    assert (
        len(lp["tokens"])
        == len(lp["token_logprobs"])
        == len(lp["top_logprobs"])
        == len(lp["text_offset"])
        == 5
    )
    assert all(v <= 0.0 for v in lp["token_logprobs"])
    assert all(isinstance(d, dict) and 1 <= len(d) <= 2 for d in lp["top_logprobs"])
    for token, value, top in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"], strict=True):
        assert max(top.values()) == pytest.approx(value)  # greedy: the chosen token is the best one
        assert token in top
    assert lp["text_offset"][0] == 0
    for i in range(1, 5):
        assert lp["text_offset"][i] == lp["text_offset"][i - 1] + len(lp["tokens"][i - 1])
    assert "".join(lp["tokens"]) == choice["text"]


def test_completion_logprobs_zero_gives_no_alternatives(client: Any) -> None:
    lp = _complete(client, max_tokens=3, temperature=0, logprobs=0)["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == 3
    assert lp["top_logprobs"] == [{}, {}, {}]


def test_completion_stream_matches_non_streaming(client: Any, sse: Any) -> None:
    expected = _complete(client, max_tokens=6, temperature=0)["choices"][0]["text"]
    body = {
        "model": TINY_NAME,
        "prompt": PROMPT,
        "max_tokens": 6,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    events = _stream(client, "/v1/completions", body, sse)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert {c["object"] for c in chunks} == {"text_completion"}
    assert "".join(ch["text"] for c in chunks for ch in c["choices"]) == expected
    assert [ch["finish_reason"] for c in chunks for ch in c["choices"] if ch["finish_reason"]] == ["length"]
    assert chunks[-1]["usage"]["completion_tokens"] == 6 and chunks[-1]["choices"] == []


# -- stop sequences ----------------------------------------------------------------------------------


def _pick_stop(text: str) -> tuple[str, str]:
    """A stop string from the middle of `text` and the text before its first occurrence."""
    middle = len(text) // 2
    stop = text[middle : middle + 3]
    assert len(stop) == 3 and stop.strip(), f"greedy output too short to pick a stop from: {text!r}"
    return stop, text[: text.index(stop)]


def test_stop_sequence_is_honoured(client: Any, greedy20: dict[str, Any]) -> None:
    stop, before = _pick_stop(_content(greedy20))
    result = _chat(client, max_tokens=20, temperature=0, stop=stop)
    assert _content(result) == before
    assert result["choices"][0]["finish_reason"] == "stop"
    assert result["usage"]["completion_tokens"] < 20


def test_stop_sequence_list_in_stream(client: Any, greedy20: dict[str, Any], sse: Any) -> None:
    stop, before = _pick_stop(_content(greedy20))
    body = {
        "model": TINY_NAME,
        "messages": MESSAGES,
        "max_tokens": 20,
        "temperature": 0,
        "stream": True,
        "stop": ["never-appears-anywhere", stop],
    }
    events = _stream(client, "/v1/chat/completions", body, sse)
    assert "".join(ch["delta"].get("content") or "" for c in events[:-1] for ch in c["choices"]) == before
    assert [ch["finish_reason"] for c in events[:-1] for ch in c["choices"] if ch["finish_reason"]] == [
        "stop"
    ]


def test_stop_sequence_in_completions(client: Any) -> None:
    text = _complete(client, max_tokens=20, temperature=0)["choices"][0]["text"]
    stop, before = _pick_stop(text)
    result = _complete(client, max_tokens=20, temperature=0, stop=stop)
    assert result["choices"][0]["text"] == before
    assert result["choices"][0]["finish_reason"] == "stop"


def test_stop_that_never_appears_changes_nothing(client: Any, greedy20: dict[str, Any]) -> None:
    result = _chat(client, max_tokens=20, temperature=0, stop="never-appears-anywhere")
    assert _content(result) == _content(greedy20)
    assert result["choices"][0]["finish_reason"] == "length"


# -- adapters and models -----------------------------------------------------------------------------


def test_adapter_changes_the_greedy_output(client: Any, greedy20: dict[str, Any]) -> None:
    adapted = _chat(client, model=ADAPTER_NAME, max_tokens=20, temperature=0)
    assert adapted["model"] == ADAPTER_NAME
    assert adapted["usage"]["prompt_tokens"] == greedy20["usage"]["prompt_tokens"]
    assert _content(adapted) != _content(greedy20)
    assert _content(_chat(client, model=ADAPTER_NAME, max_tokens=20, temperature=0)) == _content(adapted)
    # the base is untouched by serving the adapter
    assert _content(_chat(client, max_tokens=20, temperature=0)) == _content(greedy20)


def test_models_lists_base_and_adapter(client: Any) -> None:
    response = client.get("/v1/models")
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list"
    cards = {m["id"]: m for m in body["data"]}
    assert set(cards) == {TINY_NAME, ADAPTER_NAME}
    assert cards[TINY_NAME]["parent"] is None and cards[TINY_NAME]["root"] == TINY_NAME
    assert cards[TINY_NAME]["quantization"] == "none"
    assert cards[TINY_NAME]["max_model_len"] == 256
    assert cards[ADAPTER_NAME]["parent"] == TINY_NAME and cards[ADAPTER_NAME]["root"] == TINY_NAME
    assert all(m["object"] == "model" for m in body["data"])
    single = client.get(f"/v1/models/{ADAPTER_NAME}")
    assert single.status_code == 200 and single.json() == cards[ADAPTER_NAME]


def test_unknown_model_is_404_listing_what_exists(client: Any, openai_error: Any) -> None:
    response = client.post("/v1/chat/completions", json={"model": "nope-model", "messages": MESSAGES})
    error = openai_error(response, 404, param="model", code="model_not_found")
    assert "nope-model" in error["message"]
    assert TINY_NAME in error["message"] and ADAPTER_NAME in error["message"]


def test_unknown_model_when_streaming_is_404_before_the_stream(client: Any, openai_error: Any) -> None:
    response = client.post("/v1/completions", json={"model": "nope-model", "prompt": PROMPT, "stream": True})
    error = openai_error(response, 404, code="model_not_found")
    assert "nope-model" in error["message"]


def test_unknown_model_card_is_404(client: Any, openai_error: Any) -> None:
    error = openai_error(client.get("/v1/models/nope-model"), 404)
    assert "nope-model" in error["message"]


def test_rows_that_stop_early_leave_the_others_untouched(client: Any) -> None:
    """One choice hits its stop string; the batch shrinks and the other choices go on exactly as before."""
    free = _chat(client, n=3, seed=99, temperature=1.0, max_tokens=12)
    texts = [_content(free, i) for i in range(3)]
    stop = next(
        (
            texts[0][k : k + 3]
            for k in range(1, len(texts[0]) - 3)
            if texts[0][k : k + 3].strip() and all(texts[0][k : k + 3] not in t for t in texts[1:])
        ),
        None,
    )
    assert stop is not None, texts
    stopped = _chat(client, n=3, seed=99, temperature=1.0, max_tokens=12, stop=stop)
    assert _content(stopped, 0) == texts[0][: texts[0].index(stop)]
    assert stopped["choices"][0]["finish_reason"] == "stop"
    for i in (1, 2):
        assert _content(stopped, i) == texts[i]
        assert stopped["choices"][i]["finish_reason"] == "length"
    assert 24 < stopped["usage"]["completion_tokens"] < 36
