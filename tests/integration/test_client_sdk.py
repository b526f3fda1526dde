"""The Python SDK against the real server (SmolLM2, 4-bit, API key): every read-only method, sync and async,
chat and completions with and without streaming, adapters and blends, and each error class as the server
really answers it. Nothing here changes the server's state (management is in test_client_adapters.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from hotlora_client import (
    Adapter,
    AsyncClient,
    AuthenticationError,
    BadRequestError,
    ChatCompletion,
    ChatCompletionChunk,
    Client,
    Completion,
    ConflictError,
    DetokenizeResponse,
    NotFoundError,
    TokenizeResponse,
)

from support.live_server import ADAPTER, API_KEY, BASE_ID, RunningServer

pytestmark = pytest.mark.integration

QUESTION = "What is the capital of France?"
GREEDY = {"max_tokens": 6, "temperature": 0}


@pytest.fixture(scope="module")
def sdk(server: RunningServer) -> Iterator[Client]:
    with Client(server.base_url, api_key=API_KEY, max_retries=0) as client:
        yield client


def test_health_and_models(sdk: Client) -> None:
    health = sdk.health()
    assert (health.status, health.model) == ("ok", BASE_ID)
    models = {m.id: m for m in sdk.models.list()}
    assert not models[BASE_ID].is_adapter and models[BASE_ID].quantization == "nf4"
    assert models[ADAPTER].parent == BASE_ID and models[ADAPTER].root == BASE_ID
    assert sdk.models.get(ADAPTER).id == ADAPTER


def test_chat_defaults_to_the_base_model(sdk: Client) -> None:
    reply = sdk.chat(QUESTION, **GREEDY)
    assert isinstance(reply, ChatCompletion) and reply.model == BASE_ID
    assert reply.text and reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage is not None and 1 <= reply.usage.completion_tokens <= 6


def test_chat_streams_what_it_would_answer(sdk: Client) -> None:
    messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": QUESTION}]
    whole = sdk.chat(messages, adapter=ADAPTER, **GREEDY)
    stream = sdk.chat(
        messages, adapter=ADAPTER, stream=True, stream_options={"include_usage": True}, **GREEDY
    )
    chunks = list(stream)
    assert all(isinstance(c, ChatCompletionChunk) and c.model == ADAPTER for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert stream.text == whole.text == "".join(c.text for c in chunks)
    assert stream.usage == whole.usage


def test_text_stream_of_a_blend(sdk: Client) -> None:
    with sdk.chat(QUESTION, blend={ADAPTER: 0.5}, stream=True, **GREEDY) as stream:
        pieces = list(stream.text_stream)
    assert pieces and "".join(pieces) == stream.text
    reply = sdk.chat(QUESTION, blend={ADAPTER: 0.5}, blend_method="linear", **GREEDY)
    assert reply.model == f"{ADAPTER}*0.5" and reply.text


def test_completions(sdk: Client) -> None:
    whole = sdk.complete("Once upon a time", model=BASE_ID, **GREEDY)
    assert isinstance(whole, Completion) and whole.text and whole.model == BASE_ID
    stream = sdk.complete("Once upon a time", stream=True, **GREEDY)
    assert "".join(stream.text_stream) == whole.text


def test_reading_the_adapter_store(sdk: Client) -> None:
    adapters = {a.id: a for a in sdk.adapters.list()}
    assert adapters[ADAPTER].status in ("available", "resident") and adapters[ADAPTER].size_bytes > 0
    one = sdk.adapters.get(ADAPTER)
    assert isinstance(one, Adapter) and one == adapters[ADAPTER].model_copy(update={"status": one.status})
    assert sdk.adapters.wait_until_ready(ADAPTER, timeout=5).ready


def test_tokenize_and_detokenize(sdk: Client) -> None:
    """A conversation counts what `chat` is charged for it; a text is a raw prompt; detokenize reverses it."""
    messages = [{"role": "user", "content": QUESTION}]
    reply = sdk.chat(messages, **GREEDY)
    chat = sdk.tokenize(messages)
    assert isinstance(chat, TokenizeResponse) and chat.count == len(chat.tokens) == reply.usage.prompt_tokens
    assert chat.max_model_len == 8192 and chat.token_strs is None
    assert sdk.tokenize(messages, adapter=ADAPTER) == sdk.tokenize(messages, blend={ADAPTER: 0.5}) == chat
    opened = sdk.tokenize(messages, add_generation_prompt=False)  # without the assistant's turn opening
    assert opened.count < chat.count and chat.tokens[: opened.count] == opened.tokens
    raw = sdk.tokenize(" Paris", return_token_strs=True)
    assert raw.count == len(raw.token_strs or []) >= 1
    spelled = sdk.detokenize(raw.tokens)
    assert isinstance(spelled, DetokenizeResponse) and spelled.text == spelled.prompt == " Paris"
    with pytest.raises(NotFoundError):
        sdk.tokenize(QUESTION, model="no-such-model")
    with pytest.raises(BadRequestError) as caught:
        sdk.detokenize([chat.max_model_len * 1000])
    assert caught.value.param == "tokens"


# -- errors, as the server sends them -----------------------------------------------------------------------------


def test_400_bad_request(sdk: Client) -> None:
    with pytest.raises(BadRequestError) as caught:
        sdk.chat(QUESTION, temperature=5, max_tokens=4)
    err = caught.value
    assert (err.status_code, err.param, err.type) == (400, "temperature", "invalid_request_error")
    assert "less than or equal to 2" in err.message
    with pytest.raises(BadRequestError, match="echo"):
        sdk.complete("x", model=BASE_ID, echo=True)
    with pytest.raises(BadRequestError, match="density"):
        sdk.chat(QUESTION, blend={ADAPTER: 1}, blend_method="ties", max_tokens=4)


def test_401_wrong_or_missing_key(server: RunningServer) -> None:
    for key in ("wrong-key", ""):
        with Client(server.base_url, api_key=key) as client, pytest.raises(AuthenticationError) as caught:
            client.models.list()
        assert caught.value.status_code == 401 and caught.value.code == "invalid_api_key"


def test_404_unknown_model_or_adapter(sdk: Client) -> None:
    with pytest.raises(NotFoundError) as caught:
        sdk.chat(QUESTION, model="no-such-model", max_tokens=4)
    assert caught.value.code == "model_not_found" and ADAPTER in caught.value.message
    with pytest.raises(NotFoundError):
        sdk.chat(QUESTION, adapter="no-such-adapter", stream=True)  # raises before any chunk
    with pytest.raises(NotFoundError, match="no-such-adapter"):
        sdk.adapters.get("no-such-adapter")
    with pytest.raises(NotFoundError):
        sdk.adapters.unload("no-such-adapter")
    with pytest.raises(NotFoundError):
        sdk.models.get("no-such-model")


def test_409_saving_a_blend_under_a_taken_name(sdk: Client) -> None:
    before = sdk.adapters.list()
    with pytest.raises(ConflictError) as caught:
        sdk.adapters.blend(ADAPTER, {ADAPTER: 1.0})
    assert (
        caught.value.status_code == 409 and caught.value.param == "name" and ADAPTER in caught.value.message
    )
    assert sdk.adapters.list() == before


# -- the async client: the same surface, awaited ------------------------------------------------------------------


def test_async_client(server: RunningServer) -> None:
    async def go() -> None:
        async with AsyncClient(server.base_url, api_key=API_KEY, max_retries=0) as client:
            assert (await client.health()).status == "ok"
            assert ADAPTER in [m.id for m in await client.models.list()]
            assert (await client.models.get(BASE_ID)).parent is None
            base, adapter = client.chat(QUESTION, **GREEDY), client.chat(QUESTION, adapter=ADAPTER, **GREEDY)
            both = await asyncio.gather(base, adapter)
            assert [r.model for r in both] == [BASE_ID, ADAPTER] and all(r.text for r in both)
            stream = await client.chat(QUESTION, blend={ADAPTER: 0.5}, stream=True, **GREEDY)
            assert "".join([text async for text in stream.text_stream]) == stream.text != ""
            completion = await client.complete("Once upon a time", stream=True, **GREEDY)
            assert [c async for c in completion] and completion.text
            assert (await client.complete("Once upon a time", **GREEDY)).text == completion.text
            assert ADAPTER in [a.id for a in await client.adapters.list()]
            assert (await client.adapters.get(ADAPTER)).ready
            assert (await client.adapters.wait_until_ready(ADAPTER, timeout=5)).id == ADAPTER
            tokens = (await client.tokenize(QUESTION, adapter=ADAPTER)).tokens
            assert (await client.detokenize(tokens)).text == QUESTION
            with pytest.raises(BadRequestError):
                await client.chat(QUESTION, top_p=0, max_tokens=4)
            with pytest.raises(NotFoundError):
                await client.chat(QUESTION, model="no-such-model", stream=True)
            with pytest.raises(NotFoundError):
                await client.adapters.get("no-such-adapter")
            with pytest.raises(ConflictError):
                await client.adapters.blend(ADAPTER, {ADAPTER: 1.0})
        async with AsyncClient(server.base_url, api_key="wrong-key") as client:
            with pytest.raises(AuthenticationError):
                await client.adapters.list()

    asyncio.run(go())
