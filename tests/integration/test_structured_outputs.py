"""Structured outputs with the real 4-bit SmolLM2 and real clients: the `openai` SDK's `parse`, LangChain's
`with_structured_output`, our SDK, and raw `response_format` bodies.

Every answer must parse and match its schema — nested objects, arrays, enums, numbers with bounds — alone
and in a mixed batch over the base, gentle adapters and a blend, and each answer must be the same alone
and batched. Strings and arrays carry bounds, as real schemas do: without them a 135M model can stay
inside one string until max_tokens, which no grammar can prevent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import httpx
import openai
import pytest
from pydantic import BaseModel, ConfigDict, Field

from support.live_server import BASE_ID, RunningServer, save_random_lora, serving

pytestmark = pytest.mark.integration

MODELS = [BASE_ID, "gentle-a", "gentle-b", "gentle-a*0.5+gentle-b*0.5"]


class Address(BaseModel):
    street: str = Field(max_length=40)
    city: str = Field(max_length=30)


class Person(BaseModel):
    name: str = Field(max_length=30)
    age: int = Field(ge=0, le=120)
    address: Address


class Basket(BaseModel):
    fruits: list[Literal["apple", "pear", "plum", "banana"]] = Field(min_length=1, max_length=4)
    count: int = Field(ge=0, le=100)


class Weather(BaseModel):
    city: str = Field(max_length=30)
    condition: Literal["sunny", "cloudy", "rain", "snow"]
    temperature_c: float = Field(ge=-50, le=60)


class Order(BaseModel):
    model_config = ConfigDict(extra="forbid")

    customer: str = Field(max_length=30)
    lines: list[Basket] = Field(min_length=1, max_length=2)
    paid: bool


CASES: list[tuple[type[BaseModel], str]] = [
    (Person, "Describe a person called Alice who lives in Paris."),
    (Basket, "A basket holds two apples and a pear. Describe it."),
    (Weather, "What is the weather like in London today?"),
    (Order, "Bob ordered a basket of three plums and paid."),
]


@pytest.fixture(scope="module")
def structured(
    tmp_path_factory: pytest.TempPathFactory, hotlora_home: Path, smollm2_dir: Path
) -> Iterator[RunningServer]:
    """A server with two gentle adapters (they nudge the base, as trained ones do, without wrecking it)."""
    store = tmp_path_factory.mktemp("structured-store")
    for name, seed in (("gentle-a", 21), ("gentle-b", 22)):
        save_random_lora(smollm2_dir, store / name, seed=seed, r=8, strength=0.25)
    log = tmp_path_factory.mktemp("structured-logs") / "server.log"
    with serving(["--home", str(hotlora_home), "--adapters-dir", str(store)], log) as running:
        yield running


@pytest.fixture
def sdk(structured: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=structured.v1, api_key="unused", max_retries=0, timeout=300)


def _format(schema: type[BaseModel]) -> dict[str, Any]:
    """`response_format` as the openai SDK's `parse` sends it (a strict schema)."""
    from openai.lib._pydantic import to_strict_json_schema

    return {
        "type": "json_schema",
        "json_schema": {"name": schema.__name__, "schema": to_strict_json_schema(schema), "strict": True},
    }


def test_openai_sdk_parse_returns_the_pydantic_object(sdk: openai.OpenAI) -> None:
    completion = sdk.chat.completions.parse(
        model=BASE_ID,
        messages=[{"role": "user", "content": CASES[0][1]}],
        response_format=Person,
        max_tokens=100,
        temperature=0,
    )
    message = completion.choices[0].message
    assert isinstance(message.parsed, Person)
    assert completion.choices[0].finish_reason == "stop"
    assert message.parsed == Person.model_validate_json(message.content or "")


def test_every_schema_parses_alone_and_in_a_mixed_batch(structured: RunningServer) -> None:
    requests = [(model, schema, prompt) for model in MODELS for schema, prompt in CASES]

    async def answer(client: httpx.AsyncClient, model: str, schema: type[BaseModel], prompt: str) -> str:
        body = {
            "model": model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": 100,
            "temperature": 0,
            "response_format": _format(schema),
        }
        response = await client.post("/v1/chat/completions", json=body)
        assert response.status_code == 200, response.text
        return str(response.json()["choices"][0]["message"]["content"])

    async def run() -> tuple[list[str], list[str]]:
        async with httpx.AsyncClient(base_url=structured.base_url, timeout=600) as client:
            alone = [await answer(client, *request) for request in requests]
            # a plain request in the batch too: its rows and the constrained ones share each step
            plain = {"model": "gentle-a", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 30}
            together = await asyncio.gather(
                *(answer(client, *request) for request in requests),
                client.post("/v1/chat/completions", json=plain),
            )
        return alone, [str(text) for text in together[:-1]]

    alone, together = asyncio.run(run())
    for (_, schema, _), text in zip(requests, alone, strict=True):
        schema.model_validate_json(text, strict=True)  # raises with the text if it does not parse or match
    assert len(set(alone)) > len(CASES)  # the adapters and the blend change the answers
    for request, a, b in zip(requests, alone, together, strict=True):
        assert a == b, f"{request[:2]}: alone {a!r} != in batch {b!r}"


def test_json_object_and_completions(sdk: openai.OpenAI) -> None:
    import json

    reply = sdk.chat.completions.create(
        model=BASE_ID,
        messages=[{"role": "user", "content": "Give Bob's name and age (30) as a JSON object."}],
        response_format={"type": "json_object"},
        max_tokens=60,
        temperature=0,
    )
    assert isinstance(json.loads(reply.choices[0].message.content or ""), dict)
    completion = sdk.completions.create(
        model="gentle-a",
        prompt="The weather in Rome today, as JSON:",
        max_tokens=60,
        temperature=0,
        extra_body={"response_format": _format(Weather)},
    )
    Weather.model_validate_json(completion.choices[0].text)


def test_streamed_answer_parses(sdk: openai.OpenAI) -> None:
    with sdk.chat.completions.stream(
        model="gentle-b",
        messages=[{"role": "user", "content": CASES[2][1]}],
        response_format=Weather,
        max_tokens=60,
        temperature=0,
    ) as stream:
        final = stream.get_final_completion()
    assert isinstance(final.choices[0].message.parsed, Weather)


def test_langchain_with_structured_output(structured: RunningServer) -> None:
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(
        model="gentle-a", base_url=structured.v1, api_key="unused", temperature=0, max_tokens=100
    )  # type: ignore[call-arg]
    person = llm.with_structured_output(Person).invoke(CASES[0][1])
    assert isinstance(person, Person)


def test_our_sdk_parses_into_the_model(structured: RunningServer) -> None:
    from hotlora_client import Client

    with Client(base_url=structured.base_url, timeout=300) as client:
        completion = client.parse(
            CASES[1][1], adapter="gentle-b", response_format=Basket, max_tokens=60, temperature=0
        )
    assert isinstance(completion.parsed, Basket)


@pytest.mark.parametrize(
    ("schema", "named"),
    [
        ({"type": "object", "properties": {"a": {"not": {"type": "string"}}}}, "not"),
        ({"type": "integer", "minimum": 10, "maximum": 1}, "minimum"),
        ({"type": "object", "properties": {"a": {"$ref": "#/$defs/nowhere"}}}, "nowhere"),
    ],
)
def test_bad_schemas_are_400_naming_the_problem(
    sdk: openai.OpenAI, schema: dict[str, Any], named: str
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        sdk.chat.completions.create(
            model="gentle-a",
            messages=[{"role": "user", "content": "hi"}],
            response_format={"type": "json_schema", "json_schema": {"name": "bad", "schema": schema}},  # type: ignore[typeddict-item]
            max_tokens=10,
        )
    assert named in info.value.message
    assert info.value.param == "response_format"
