"""Streams from a real HTTP server: chunks typed as they arrive, `.text_stream`, usage, an error frame inside
the stream raises, a stream cut short raises; and the decoder on its own for the corners of the SSE format."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from hotlora_client import (
    APIConnectionError,
    APIError,
    AsyncClient,
    BadRequestError,
    ChatCompletionChunk,
    Client,
    Completion,
    NotFoundError,
    ServerError,
)
from hotlora_client._core import StreamDecoder

from support.scripted_server import ScriptedServer, error, sse


def chunk(
    content: str | None = None, *, role: str | None = None, finish: str | None = None
) -> dict[str, Any]:
    delta = {k: v for k, v in (("role", role), ("content", content)) if v is not None}
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    return {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [choice]}


USAGE = {
    "id": "c1",
    "object": "chat.completion.chunk",
    "created": 1,
    "model": "m",
    "choices": [],
    "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
}
REPLY = [chunk("", role="assistant"), chunk("Hel"), chunk("lo"), chunk(finish="stop"), USAGE]
FAILURE = {"error": {"message": "the engine stopped", "type": "server_error", "code": "service_unavailable"}}


def test_a_stream_yields_typed_chunks_and_its_text(scripted: ScriptedServer) -> None:
    scripted.answer(sse(*REPLY))
    with Client(scripted.url) as client:
        stream = client.chat("hi", model="m", stream=True)
        chunks = list(stream)
    assert all(isinstance(c, ChatCompletionChunk) for c in chunks) and len(chunks) == 5
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[3].choices[0].finish_reason == "stop"
    assert stream.text == "Hello" and stream.usage is not None and stream.usage.total_tokens == 5


def tool_chunk(
    index: int, arguments: str, *, id: str | None = None, name: str | None = None
) -> dict[str, Any]:
    piece: dict[str, Any] = {"index": index, "function": {"arguments": arguments}}
    if id is not None:
        piece.update(id=id, type="function", function={"name": name, "arguments": arguments})
    reply = chunk()
    reply["choices"][0]["delta"] = {"tool_calls": [piece]}
    return reply


def test_a_stream_puts_tool_calls_together(scripted: ScriptedServer) -> None:
    scripted.answer(
        sse(
            chunk("", role="assistant"),
            tool_chunk(0, "", id="call_a", name="get_weather"),
            tool_chunk(0, '{"city": '),
            tool_chunk(1, "", id="call_b", name="get_time"),
            tool_chunk(0, '"Paris"}'),
            tool_chunk(1, "{}"),
            chunk(finish="tool_calls"),
        )
    )
    with Client(scripted.url) as client, client.chat("hi", model="m", stream=True) as stream:
        chunks = list(stream)
    assert chunks[1].choices[0].delta.tool_calls[0].function.name == "get_weather"
    calls = [(c.id, c.function.name, c.function.parsed_arguments()) for c in stream.tool_calls]
    assert calls == [("call_a", "get_weather", {"city": "Paris"}), ("call_b", "get_time", {})]
    assert stream.text == ""


def test_text_stream_yields_only_the_text(scripted: ScriptedServer) -> None:
    scripted.answer(sse(*REPLY))
    with Client(scripted.url) as client, client.chat("hi", model="m", stream=True) as stream:
        assert list(stream.text_stream) == ["Hel", "lo"]


def test_an_error_frame_inside_a_stream_raises_with_the_servers_message(scripted: ScriptedServer) -> None:
    scripted.answer(sse(chunk("", role="assistant"), chunk("Hel"), FAILURE))
    with Client(scripted.url) as client:
        stream = client.chat("hi", model="m", stream=True)
        received = []
        with pytest.raises(ServerError) as caught:
            for text in stream.text_stream:
                received.append(text)
    assert received == ["Hel"]
    assert caught.value.message == "the engine stopped" and caught.value.code == "service_unavailable"
    assert caught.value.status_code == 503


def test_a_stream_cut_short_raises(scripted: ScriptedServer) -> None:
    scripted.answer(sse(chunk("", role="assistant"), chunk("Hel"), done=False))
    with Client(scripted.url) as client, pytest.raises(APIConnectionError, match="DONE"):
        list(client.chat("hi", model="m", stream=True))


def test_an_error_status_raises_before_the_stream_and_503_is_retried(scripted: ScriptedServer) -> None:
    scripted.answer(
        error(503, "busy", headers={"Retry-After": "0"}), error(404, "no model 'm'", "model_not_found")
    )
    with Client(scripted.url) as client, pytest.raises(NotFoundError, match="no model 'm'"):
        client.chat("hi", model="m", stream=True)
    assert len(scripted.hits) == 2


def test_a_completion_stream(scripted: ScriptedServer) -> None:
    piece = {
        "id": "x",
        "object": "text_completion",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "text": "upon", "logprobs": None, "finish_reason": None}],
    }
    scripted.answer(sse(piece, piece))
    with Client(scripted.url) as client:
        stream = client.complete("Once", model="m", stream=True)
        assert all(isinstance(c, Completion) for c in stream) and stream.text == "uponupon"


def test_async_streams(scripted: ScriptedServer) -> None:
    async def go() -> tuple[list[str], str]:
        async with AsyncClient(scripted.url) as client:
            scripted.answer(sse(*REPLY))
            stream = await client.chat("hi", model="m", stream=True)
            texts = [text async for text in stream.text_stream]
            scripted.answer(sse(chunk("Hel"), FAILURE))
            failing = await client.chat("hi", model="m", stream=True)
            with pytest.raises(ServerError, match="the engine stopped"):
                async for _ in failing:
                    pass
            return texts, stream.text

    assert asyncio.run(go()) == (["Hel", "lo"], "Hello")


# -- the decoder on its own ----------------------------------------------------------------------------------------


def decode(*lines: str) -> StreamDecoder[ChatCompletionChunk]:
    decoder = StreamDecoder(ChatCompletionChunk)
    for line in lines:
        decoder.feed(line)
    return decoder


def test_multi_line_data_comments_and_other_fields() -> None:
    import json

    text = json.dumps(chunk("hi"), indent=1).splitlines()
    decoder = StreamDecoder(ChatCompletionChunk)
    got = []
    for line in [
        ": keep-alive",
        "event: message",
        "id: 7",
        *(f"data: {t}" for t in text),
        "",
        "data: [DONE]",
        "",
    ]:
        got += decoder.feed(line)
    assert [c.text for c in got] == ["hi"] and decoder.done and decoder.end() == []


def test_an_event_without_a_trailing_blank_line_is_still_read() -> None:
    import json

    decoder = decode("data: " + json.dumps(chunk("x")), "", "data: [DONE]")
    assert decoder.end() == [] and decoder.done and decoder.text == "x"


@pytest.mark.parametrize(
    ("error", "cls", "status"),
    [
        ({"message": "m", "type": "invalid_request_error", "code": None}, BadRequestError, 400),
        ({"message": "m", "type": "invalid_request_error", "code": "model_not_found"}, NotFoundError, 404),
        ({"message": "m", "type": "server_error", "code": None}, ServerError, 500),
    ],
)
def test_error_frames_map_to_the_class_of_their_code_or_type(
    error: dict[str, Any], cls: type, status: int
) -> None:
    import json

    with pytest.raises(cls) as caught:
        decode("data: " + json.dumps({"error": error}), "")
    assert caught.value.status_code == status and caught.value.message == "m"


def test_a_malformed_event_raises_apierror() -> None:
    with pytest.raises(APIError, match="malformed"):
        decode("data: {not json", "")
