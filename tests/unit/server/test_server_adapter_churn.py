"""Adapter churn: import -> chat -> purge, again and again under one name, must not grow the server.

Every cycle loads new weights under a new internal key; when the adapter is purged, everything kept under
that key or name must go with it: PEFT's layers and dicts, the stacked copies `lora_stack` makes, the
prefix cache's blocks, the catalog's verdicts. Checked twice: object by object (weak references, and no
dict or set of the model still naming the key), and as the issue measured it, by the process's resident
memory over 200 cycles. The first runs with another adapter resident (PEFT's model stays wrapped) and
alone (the last adapter out unwraps the base, and its LoRA layers are discarded), the second alone.
"""

from __future__ import annotations

import asyncio
import gc
import shutil
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from support.tiny_server import ADAPTER_NAME, TINY_NAME, running_engine, save_tiny_adapter, tiny_settings

NAME = "churn"
MESSAGES = [{"role": "user", "content": "Say something about the sea, please, in a few words."}]
MIB = 2**20


@dataclass
class Churn:
    client: Any
    engine: Any
    source: Path

    def chat(self, model: str) -> None:
        body = {"model": model, "messages": MESSAGES, "max_tokens": 2, "temperature": 0}
        response = self.client.post("/v1/chat/completions", json=body)
        assert response.status_code == 200, response.text

    def cycle(self, inspect: Any = None) -> Any:
        """Import, chat, purge; `inspect(pool, key)` runs in the engine thread while the adapter is loaded."""
        response = self.client.post("/v1/adapters", json={"name": NAME, "path": str(self.source)})
        assert response.status_code == 200, response.text
        self.chat(NAME)
        seen = self.in_engine(lambda pool: inspect(pool, _key(pool))) if inspect else None
        assert self.client.delete(f"/v1/adapters/{NAME}?purge=true").status_code == 200
        return seen

    def in_engine(self, fn: Any) -> Any:
        return asyncio.run(self.engine.call(fn))


def _key(pool: Any) -> str:
    return next(r.key for r in pool._resident.values() if r.label == NAME)


@pytest.fixture(scope="module")
def big_adapter(tmp_path_factory: pytest.TempPathFactory, real_tokenizer: Any) -> Path:
    """A rank-64 all-linear adapter of the tiny model: big enough that a copy kept per cycle shows in RSS."""
    folder = tmp_path_factory.mktemp("churn-source") / "source"
    return save_tiny_adapter(folder, real_tokenizer, seed=3, r=64, target_modules="all-linear")


@pytest.fixture(params=["alone", "beside-another"])
def churn(
    request: pytest.FixtureRequest,
    tiny_dir: Path,
    adapter_store: Path,
    big_adapter: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Churn]:
    from fastapi.testclient import TestClient

    from hotlora_server.api import create_app

    root = tmp_path_factory.mktemp("churn")
    store = root / "store"
    store.mkdir()
    if request.param == "beside-another":
        shutil.copytree(adapter_store / ADAPTER_NAME, store / ADAPTER_NAME)
    settings = tiny_settings(tiny_dir, root / "home", store, allow_adapter_dir=(str(big_adapter.parent),))
    with running_engine(settings) as engine, TestClient(create_app(engine)) as client:
        churn = Churn(client, engine, big_adapter)
        churn.chat(ADAPTER_NAME if request.param == "beside-another" else TINY_NAME)
        yield churn


def test_nothing_of_a_purged_adapter_stays_behind(churn: Churn) -> None:
    def refs(pool: Any, key: str) -> tuple[list[weakref.ref[Any]], Any, Any]:
        layers = [m for m in pool.model.modules() if key in getattr(m, "lora_A", {})]
        kept = [weakref.ref(p) for n, p in pool.model.named_parameters() if f".{key}." in n]
        kept += [weakref.ref(m) for layer in layers for m in (layer.lora_A[key], layer.lora_B[key])]
        if list(pool.model.peft_config) == [key]:  # the last adapter out: PEFT's layers and the stacks go
            kept += [weakref.ref(layer) for layer in layers]
            kept += [weakref.ref(t) for t in _tensors_under(pool._stack)]
        return kept, key, pool._stack._slots[key]

    for _ in range(2):  # the first cycle's key, checked after the second one went the same way
        kept, key, slot = churn.cycle(refs)
    gc.collect()
    assert kept and all(ref() is None for ref in kept), (
        "weights or layers of a purged adapter are still alive"
    )

    def stacked(pool: Any) -> float:
        """What is left in the purged adapter's columns of blocks other adapters keep (0: zeroed)."""
        assert key not in pool._stack._slots
        blocks = [s.blocks[slot.block] for s in pool._stack._layers.values() if slot.block < len(s.blocks)]
        return sum(
            float(a[:, slot.start : slot.stop].abs().sum() + b[slot.start : slot.stop].abs().sum())
            for a, b in blocks
        )

    assert churn.in_engine(stacked) == 0.0, "a purged adapter's stacked columns still hold its weights"

    def leftovers(pool: Any) -> list[str]:
        found = [
            f"{type(m).__name__}.{attr}"
            for m in pool.model.modules()
            for attr, value in vars(m).items()
            if isinstance(value, (dict, set, list)) and key in value
        ]
        found += (
            [f"peft_config of {type(pool.model).__name__}"]
            if key in getattr(pool.model, "peft_config", {})
            else []
        )
        prefixes = churn.engine._scheduler._prefix
        found += [f"prefix cache block of {k}" for k, _ in prefixes._blocks if k == key]
        catalog = pool._catalog
        found += [f"catalog.{attr}" for attr in ("_verdicts", "_entries") if NAME in getattr(catalog, attr)]
        return found

    assert churn.in_engine(leftovers) == []


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc to read resident memory")
@pytest.mark.parametrize("churn", ["alone"], indirect=True)  # where the stacked copies used to pile up
def test_import_chat_purge_cycles_do_not_grow_the_process(churn: Churn) -> None:
    """The issue's cycle, 200 times after a warm-up: resident memory grows by less than 50 MB."""
    for _ in range(10):  # allocator pools, caches, the first compilations
        churn.cycle()
    gc.collect()
    before = _rss()
    for _ in range(200):
        churn.cycle()
    gc.collect()
    grown = (_rss() - before) / MIB
    assert grown < 50, f"resident memory grew {grown:.1f} MiB over 200 import -> chat -> purge cycles"


def _tensors_under(obj: Any, depth: int = 6) -> Iterator[Any]:
    """The tensors an object holds in its attributes, dicts, lists and tuples (not inside modules)."""
    import torch

    if isinstance(obj, torch.Tensor):
        yield obj
    elif depth and not isinstance(obj, torch.nn.Module):
        if isinstance(obj, dict):
            children: Any = obj.values()
        elif isinstance(obj, (list, tuple)):
            children = obj
        else:
            children = vars(obj).values() if hasattr(obj, "__dict__") else ()
        for child in children:
            yield from _tensors_under(child, depth - 1)


def _rss() -> int:
    status = Path("/proc/self/status").read_text()
    return next(int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmRSS:"))
