"""`--merge-policy` on the tiny engine: which forwards merge an adapter into the base, that a merged adapter
answers the same every time, and that the base is exactly the base again once unmerged."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from hotlora_server.engine.merge_policy import AUTO_MERGE_AFTER

from support.tiny_server import ADAPTER_NAME, TINY_NAME, chat_request, collect, running_engine, tiny_settings


def _answer(engine: Any, model: str, max_tokens: int = 12) -> str:
    request = chat_request(model, "Hello there", max_tokens=max_tokens, ignore_eos=True)  # every forward runs
    return asyncio.run(collect(engine, request))[0][0]


def test_always_merges_each_adapter_run_and_unmerges_for_the_base(
    tiny_dir: Path, adapter_store: Path, tiny_engine: Any, tmp_path: Path
) -> None:
    base = _answer(tiny_engine, TINY_NAME)
    with running_engine(tiny_settings(tiny_dir, tmp_path, adapter_store, merge_policy="always")) as engine:
        answers = [_answer(engine, model) for model in (ADAPTER_NAME, TINY_NAME, ADAPTER_NAME, TINY_NAME)]
        stats, merged = engine._pool.stats, engine._pool.merged
    assert answers[0] == answers[2]  # merged twice, the same answer
    assert answers[1] == answers[3] == base  # unmerged, the base's own weights
    assert (stats.merges, stats.unmerges, stats.merge_refusals) == (2, 2, 0)
    assert not merged


def test_auto_merges_only_after_a_long_run_alone(tiny_dir: Path, adapter_store: Path, tmp_path: Path) -> None:
    with running_engine(tiny_settings(tiny_dir, tmp_path, adapter_store, merge_policy="auto")) as engine:
        _answer(engine, ADAPTER_NAME)  # 12 forwards: too short
        assert engine._pool.stats.merges == 0
        _answer(engine, ADAPTER_NAME, max_tokens=AUTO_MERGE_AFTER + 4)
        assert engine._pool.stats.merges == 1 and engine._pool.merged
        _answer(engine, TINY_NAME)
        assert engine._pool.stats.unmerges == 1 and not engine._pool.merged
