"""Structured outputs in the SDK, against a real HTTP server: `response_format` as a dict or a pydantic model
class (sent as a strict JSON schema), and `parse`, which hands back the reply as an instance of the class."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from pydantic import BaseModel

from hotlora_client import AsyncClient, Client, IncompleteOutputError, ParsedChatCompletion

from support.scripted_server import ScriptedServer, reply


class Point(BaseModel):
    x: int
    y: int


class Shape(BaseModel):
    name: str
    corners: list[Point]


def _answer(*contents: str, finish: str = "stop") -> dict[str, Any]:
    return {
        "id": "c",
        "object": "chat.completion",
        "created": 1,
        "model": "base",
        "choices": [
            {"index": i, "message": {"role": "assistant", "content": c}, "finish_reason": finish}
            for i, c in enumerate(contents)
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


def _sent(scripted: ScriptedServer) -> dict[str, Any]:
    return dict(json.loads(scripted.hits[-1].body))


def test_a_model_class_goes_as_a_strict_json_schema(scripted: ScriptedServer) -> None:
    scripted.answer(reply(200, _answer("{}")))
    with Client(scripted.url) as client:
        client.chat("hi", model="base", response_format=Shape)
        sent = _sent(scripted)["response_format"]
        assert sent["type"] == "json_schema"
        assert sent["json_schema"]["name"] == "Shape" and sent["json_schema"]["strict"] is True
        schema = sent["json_schema"]["schema"]
        assert schema["additionalProperties"] is False
        assert schema["$defs"]["Point"]["additionalProperties"] is False  # nested objects closed too
        assert schema["required"] == ["name", "corners"]
        client.chat("hi", model="base", response_format={"type": "json_object"})
        assert _sent(scripted)["response_format"] == {"type": "json_object"}
        scripted.answer(reply(200, {"id": "c", "created": 1, "model": "base", "choices": []}))
        client.complete("x", model="base", response_format=Point)
        assert _sent(scripted)["response_format"]["json_schema"]["name"] == "Point"


def test_parse_returns_instances_of_the_class(scripted: ScriptedServer) -> None:
    first = '{"name": "tri", "corners": [{"x": 0, "y": 0}, {"x": 1, "y": 0}, {"x": 0, "y": 1}]}'
    scripted.answer(reply(200, _answer(first, '{"name": "dot", "corners": []}')))
    with Client(scripted.url) as client:
        completion = client.parse("a shape", model="base", response_format=Shape, n=2, max_tokens=80)
    assert isinstance(completion, ParsedChatCompletion)
    assert completion.parsed == Shape(name="tri", corners=[Point(x=0, y=0), Point(x=1, y=0), Point(x=0, y=1)])
    assert [s.name for s in completion.parsed_choices] == ["tri", "dot"]
    assert completion.text == first  # still the chat completion it came as
    assert _sent(scripted)["n"] == 2 and _sent(scripted)["response_format"]["json_schema"]["name"] == "Shape"


def test_parse_refuses_a_reply_cut_short(scripted: ScriptedServer) -> None:
    scripted.answer(reply(200, _answer('{"name": "tr', finish="length")))

    async def run() -> None:
        async with AsyncClient(scripted.url) as client:
            await client.parse("a shape", model="base", response_format=Shape, max_tokens=5)

    with pytest.raises(IncompleteOutputError, match="max_tokens") as info:
        asyncio.run(run())
    assert info.value.completion.choices[0].message.content == '{"name": "tr'


def test_async_parse(scripted: ScriptedServer) -> None:
    scripted.answer(reply(200, _answer('{"x": 3, "y": 4}')))

    async def run() -> Point:
        async with AsyncClient(scripted.url) as client:
            return (await client.parse("a point", model="base", response_format=Point)).parsed

    assert asyncio.run(run()) == Point(x=3, y=4)
