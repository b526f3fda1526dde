"""A DoRA adapter is served (through PEFT's own path: the LoRA stack cannot express it) beside plain ones.

Its magnitude vectors are made while loading, in inference mode; switching PEFT to it sets their
`requires_grad`, which torch refuses for inference tensors outside that mode: every DoRA request failed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support.tiny_server import (
    ADAPTER_NAME,
    TINY_NAME,
    chat_request,
    collect,
    running_engine,
    save_tiny_adapter,
    tiny_settings,
)


@pytest.fixture(scope="module")
def dora_store(real_tokenizer: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("store")
    save_tiny_adapter(store / ADAPTER_NAME, real_tokenizer, seed=1, r=4, target_modules="all-linear")
    save_tiny_adapter(store / "dora", real_tokenizer, seed=3, r=4, target_modules=["q_proj"], use_dora=True)
    return store


@pytest.fixture(scope="module")
def dora_engine(tiny_dir: Path, dora_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with running_engine(tiny_settings(tiny_dir, tmp_path_factory.mktemp("home"), dora_store)) as engine:
        yield engine


def _text(engine: Any, model: str) -> str:
    texts, usage = asyncio.run(collect(engine, chat_request(model, "Hello there")))
    assert usage.completion_tokens > 0
    return texts[0]


def test_a_dora_adapter_is_served_alone_and_between_others(dora_engine: Any) -> None:
    first = _text(dora_engine, "dora")
    assert [_text(dora_engine, m) for m in (ADAPTER_NAME, "dora", TINY_NAME, "dora")][1::2] == [first, first]


def test_merge_policy_always_serves_a_dora_adapter_and_the_rest_after_it(
    dora_engine: Any, tiny_dir: Path, dora_store: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """PEFT cannot route rows of a DoRA adapter by `adapter_names`, which the merge's probe does: the
    adapter is served unmerged, and the requests after it are not hurt."""
    expected = {m: _text(dora_engine, m) for m in ("dora", TINY_NAME, ADAPTER_NAME)}
    settings = tiny_settings(tiny_dir, tmp_path_factory.mktemp("home"), dora_store, merge_policy="always")
    with running_engine(settings) as engine:
        got = {m: _text(engine, m) for m in ("dora", TINY_NAME, ADAPTER_NAME, "dora")}
        assert got == expected
