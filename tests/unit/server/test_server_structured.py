"""Structured outputs on the tiny engine: `response_format` decoded under a grammar (llguidance).

The tiny model is random, so whatever it emits under a schema is the grammar's doing: every output must
parse and match its schema (checked with pydantic models, whose JSON schemas these are), each row's
output must be the same alone and in any batch, EOS must come only where the grammar may end, and bad
schemas must be 400s that name the problem.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any, Literal

import numpy as np
import pytest
import torch
from pydantic import BaseModel, ConfigDict, Field

from support.tiny_server import ADAPTER_NAME, TINY_NAME, chat_request, collect

CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "Describe a person as JSON."}]


class Person(BaseModel):
    model_config = ConfigDict(extra="forbid")  # `additionalProperties: false`, as the openai SDK sends
    name: str = Field(max_length=12)
    age: int = Field(ge=0, le=120)
    member: bool


class Item(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sku: Literal["apple", "pear", "plum"]
    qty: int = Field(ge=1, le=9)
    price: int = Field(ge=0, le=100)


class Order(BaseModel):
    model_config = ConfigDict(extra="forbid")
    customer: Person
    items: list[Item] = Field(min_length=1, max_length=2)
    status: Literal["new", "paid"]


def _structured(model: type[BaseModel]) -> Any:
    from hotlora_server.types import StructuredOutput

    return StructuredOutput(json.dumps(model.model_json_schema()))


def _request(model: str, schema: type[BaseModel] | None, n: int = 1, **sampling: Any) -> Any:
    """A chat request under `schema` (None: any JSON object), with room for the whole answer."""
    from hotlora_server.types import StructuredOutput

    request = chat_request(model, "Describe it as JSON.", n=n, **{"max_tokens": 160, **sampling})
    structured = _structured(schema) if schema is not None else StructuredOutput()
    return dataclasses.replace(request, structured=structured)


def _run(engine: Any, requests: list[Any], together: bool) -> list[tuple[dict[int, str], int]]:
    async def run() -> list[tuple[dict[int, str], Any]]:
        if together:
            return list(await asyncio.gather(*(collect(engine, r) for r in requests)))
        return [await collect(engine, r) for r in requests]

    return [(texts, usage.completion_tokens) for texts, usage in asyncio.run(run())]


def test_outputs_parse_and_are_the_same_alone_and_batched(tiny_engine: Any) -> None:
    """Schemas and json_object, greedy and seeded, n>1, base and adapter, beside an unconstrained row."""
    cases: list[tuple[type[BaseModel] | None, Any]] = [
        (Person, _request(TINY_NAME, Person)),
        (Order, _request(ADAPTER_NAME, Order)),
        (None, _request(TINY_NAME, None)),
        (Person, _request(ADAPTER_NAME, Person, n=3, temperature=1.0, seed=5)),
        (None, chat_request(TINY_NAME, "free text beside them", max_tokens=20)),
        (Order, _request(TINY_NAME, Order, temperature=0.8, seed=11)),
    ]
    requests = [request for _, request in cases]
    alone = _run(tiny_engine, requests, together=False)
    for (schema, request), (texts, _) in zip(cases, alone, strict=True):
        assert len(texts) == request.n
        for text in texts.values():
            if schema is not None:
                schema.model_validate_json(text, strict=True)
            elif request.structured is not None:  # any object: the random model may not close it
                assert text.startswith("{"), text
    assert len(set(alone[3][0].values())) > 1  # the n rows sample apart, each under its own matcher
    assert _run(tiny_engine, requests, together=True) == alone


def test_the_row_stops_when_the_grammar_is_complete(tiny_engine: Any) -> None:
    """finish_reason `stop` with the JSON complete, and no EOS sampled: every token counted has a logprob
    (an EOS would be counted without one)."""
    from hotlora_server.types import ChoiceDelta

    async def run() -> tuple[str, str | None, int, int]:
        text, finish, logprobs, usage = "", None, 0, 0
        async for event in tiny_engine.generate(_request(TINY_NAME, Person, logprobs=True)):
            if isinstance(event, ChoiceDelta):
                text += event.text
                finish = event.finish_reason or finish
                logprobs += len(event.logprobs)
            else:
                usage = event.completion_tokens
        return text, finish, logprobs, usage

    text, finish, logprobs, tokens = asyncio.run(run())
    Person.model_validate_json(text)
    assert finish == "stop"
    assert tokens == logprobs


def test_a_short_budget_ends_with_length(tiny_engine: Any) -> None:
    texts, usage = asyncio.run(collect(tiny_engine, _request(TINY_NAME, Order, max_tokens=5)))
    assert usage.completion_tokens == 5 and texts[0].startswith("{")


def test_eos_only_where_the_grammar_may_end(real_tokenizer: Any) -> None:
    from hotlora_server.engine.grammar import GrammarCompiler
    from hotlora_server.types import StructuredOutput

    eos = real_tokenizer.eos_token_id
    vocab = len(real_tokenizer)
    compiler = GrammarCompiler(real_tokenizer, vocab, {eos})
    row = compiler.compile(StructuredOutput('{"type": "integer", "minimum": 0, "maximum": 99}')).matcher()
    logits = torch.zeros(vocab)
    assert row.mask(logits)[eos] == float("-inf")  # nothing yet: no end
    row.advance(real_tokenizer.encode("4", add_special_tokens=False)[0])
    masked = row.mask(logits)
    assert masked[eos] == 0 and not row.done  # "4" may end, or go on to "42"
    row.advance(real_tokenizer.encode("2", add_special_tokens=False)[0])
    masked = row.mask(logits)
    assert row.done and torch.isfinite(masked).nonzero().flatten().tolist() == [eos]  # 42: only EOS left

    person = compiler.compile(_structured(Person)).matcher()
    for token in real_tokenizer.encode('{"name": "Ada", "age": 36, "member": true', add_special_tokens=False):
        assert person.mask(logits)[eos] == float("-inf")
        person.advance(token)
    closing = real_tokenizer.encode("}", add_special_tokens=False)[0]
    assert person.mask(logits)[closing] == 0
    person.advance(closing)
    assert person.done


def test_the_bitmask_masks_exactly_its_zero_bits() -> None:
    from hotlora_server.engine.grammar import apply_bitmask

    rng = np.random.default_rng(0)
    vocab = 1000  # not a multiple of 32: the last word's high bits lie beyond the vocabulary
    logits = rng.standard_normal(vocab).astype(np.float32)
    logits[7] = -np.inf
    for allowed in (rng.random(vocab) < 0.5, np.zeros(vocab, bool), np.ones(vocab, bool)):
        padded = np.zeros(1024, bool)
        padded[:vocab] = allowed
        bitmask = np.packbits(padded, bitorder="little").view(np.int32)
        out = apply_bitmask(logits, bitmask, np.empty(vocab, np.int32))
        np.testing.assert_array_equal(out, np.where(allowed, logits, -np.inf).astype(np.float32))
    assert np.isfinite(logits[:7]).all()  # the input is left as it was


def test_compiled_grammars_are_cached_by_schema_and_bounded(real_tokenizer: Any) -> None:
    from hotlora_server.engine.grammar import GrammarCompiler
    from hotlora_server.types import StructuredOutput

    compiler = GrammarCompiler(
        real_tokenizer, len(real_tokenizer), {real_tokenizer.eos_token_id}, cache_size=2
    )
    first, second, third = (StructuredOutput(json.dumps({"enum": [i]})) for i in range(3))
    grammar = compiler.compile(first)
    assert compiler.compile(StructuredOutput(first.json_schema)) is grammar
    compiler.compile(second)
    compiler.compile(first)  # used last: `second` is the oldest now
    compiler.compile(third)
    assert compiler.compile(first) is grammar
    assert compiler.compile(second) is not compiler.compile(third)  # both compiled anew, each once


# -- the API ---------------------------------------------------------------------------------------------


def _chat(client: Any, response_format: Any, **extra: Any) -> Any:
    body = {"model": TINY_NAME, "messages": MESSAGES, "max_tokens": 160, "temperature": 0, **extra}
    return client.post(CHAT, json={**body, "response_format": response_format})


def _json_schema(schema: Any, **extra: Any) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, **extra}}


def test_response_format_over_the_api(client: Any, sse: Any) -> None:
    schema = Order.model_json_schema()
    reply = _chat(client, _json_schema(schema, strict=True), model=f"{ADAPTER_NAME}*0.5")
    assert reply.status_code == 200, reply.text
    choice = reply.json()["choices"][0]
    Order.model_validate_json(choice["message"]["content"], strict=True)
    assert choice["finish_reason"] == "stop"

    any_object = _chat(client, {"type": "json_object"}).json()["choices"][0]["message"]["content"]
    assert any_object.startswith("{")  # the random model may not close it (the real one does: integration)
    assert _chat(client, _json_schema(None)).json()["choices"][0]["message"]["content"] == any_object
    text = _chat(client, {"type": "text"}, max_tokens=8).json()["choices"][0]["message"]["content"]
    assert text == _chat(client, None, max_tokens=8).json()["choices"][0]["message"]["content"]

    with client.stream("POST", CHAT, json={**_body(schema), "stream": True}) as response:
        chunks = [e for e in sse(response) if e != "[DONE]"]
    streamed = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    Order.model_validate_json(streamed)

    completion = client.post(
        "/v1/completions",
        json={
            "model": TINY_NAME,
            "prompt": "An order:",
            "max_tokens": 160,
            "temperature": 0,
            "response_format": _json_schema(schema),
        },
    )
    assert completion.status_code == 200, completion.text
    Order.model_validate_json(completion.json()["choices"][0]["text"])


def _body(schema: Any) -> dict[str, Any]:
    return {
        "model": TINY_NAME,
        "messages": MESSAGES,
        "max_tokens": 160,
        "temperature": 0,
        "response_format": _json_schema(schema),
    }


@pytest.mark.parametrize(
    ("response_format", "named"),
    [
        (_json_schema({"not": {"type": "string"}}), "not"),
        (_json_schema({"type": "array", "items": {"type": "integer"}, "uniqueItems": True}), "uniqueItems"),
        (_json_schema({"type": "strin"}), "strin"),
        (_json_schema({"type": "integer", "minimum": 5, "maximum": 1}), "minimum"),
        (_json_schema({"properties": {"a": {"$ref": "#/$defs/missing"}}}), "missing"),
        (_json_schema({"type": "string", "pattern": "(?<=a)b"}), "look"),
        (_json_schema([1, 2]), "schema"),
        ({"type": "json_schema", "json_schema": {"schema": {"type": "object"}}}, "name"),
        ({"type": "json_schema", "json_schema": {"name": "a b"}}, "name"),
        ({"type": "xml"}, "type"),
        ("json", "response_format"),
    ],
)
def test_bad_schemas_are_400_naming_the_problem(
    client: Any, openai_error: Any, response_format: Any, named: str
) -> None:
    error = openai_error(_chat(client, response_format), 400)
    assert named in error["message"], error
    assert (error["param"] or "").startswith("response_format"), error
    completion = client.post(
        "/v1/completions", json={"model": TINY_NAME, "prompt": "x", "response_format": response_format}
    )
    assert named in openai_error(completion, 400)["message"]


def test_a_forced_call_s_unsupported_schema_names_the_tools(client: Any, openai_error: Any) -> None:
    """The engine compiles a forced tool call's schema as it does `response_format`'s; its 400 says where
    the schema came from."""
    tool = {
        "type": "function",
        "function": {
            "name": "pick",
            "parameters": {"type": "object", "properties": {"a": {"not": {"type": "string"}}}},
        },
    }
    body = {"model": TINY_NAME, "messages": MESSAGES, "max_tokens": 8, "tools": [tool]}
    for choice in ("required", {"type": "function", "function": {"name": "pick"}}):
        error = openai_error(client.post(CHAT, json={**body, "tool_choice": choice}), 400)
        assert error["param"] == "tools" and "not" in error["message"], error
