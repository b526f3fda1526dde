"""Loading adapters with PEFT: the same layers PEFT would build from the file, never a pattern of the file
evaluated by `re`, and a load that fails halfway leaves the model exactly as it was.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer

from hotlora_adapters import inspect_adapter
from hotlora_server.engine.adapter_pool import BASE
from hotlora_server.engine.loader import base_spec

from support.tiny_server import ADAPTER_NAME, TINY_NAME, running_engine, tiny_llama, tiny_settings

LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
RECIPES: dict[str, dict[str, Any]] = {
    "all-linear": dict(target_modules="all-linear"),
    "rank-and-alpha-patterns": dict(
        target_modules=["q_proj", "v_proj"],
        rank_pattern={"v_proj": 2},
        alpha_pattern={r"layers\.1\..*q_proj": 3},
    ),
    "layers-to-transform": dict(
        target_modules=["q_proj", "down_proj"], layers_to_transform=[1], layers_pattern="layers"
    ),
    "regex-targets": dict(target_modules=r".*\.(k_proj|up_proj)"),
    "excluded": dict(target_modules=["q_proj", "v_proj"], exclude_modules=r".*layers\.0\.self_attn\.v_proj"),
    "dora": dict(target_modules=["v_proj"], use_dora=True),
    "lora-bias": dict(target_modules=["o_proj"], lora_bias=True),
    "rslora": dict(target_modules=["q_proj"], use_rslora=True),
    "embedding-and-head": dict(target_modules=["q_proj", "embed_tokens"], modules_to_save=["lm_head"]),
    "trainable-tokens": dict(target_modules=["q_proj"], trainable_token_indices=[1, 2, 3]),
}
IDS = torch.tensor([[1, 17, 300, 4000, 5, 60]])


def _lora_layers(model: torch.nn.Module, key: str) -> dict[str, tuple[str, int, float]]:
    return {
        name.removeprefix("base_model.model."): (
            type(module).__name__,
            module.r[key],
            float(module.scaling[key]),
        )
        for name, module in model.named_modules()
        if isinstance(module, LoraLayer) and key in module.r
    }


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_the_layers_peft_would_build_from_the_file(recipe: str, real_tokenizer: Any, tmp_path: Path) -> None:
    """PEFT reading the file itself and PEFT handed the resolved names build the same layers and logits."""
    from hotlora_server.engine.device_path import PLAIN
    from hotlora_server.engine.peft_load import load_adapter

    vocab = len(real_tokenizer)
    torch.manual_seed(2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trained = get_peft_model(
            tiny_llama(vocab, real_tokenizer), LoraConfig(r=4, init_lora_weights=False, **RECIPES[recipe])
        )
        trained.save_pretrained(str(tmp_path))
        reference = PeftModel.from_pretrained(tiny_llama(vocab, real_tokenizer), str(tmp_path)).eval()
    base = tiny_llama(vocab, real_tokenizer)
    ours = load_adapter(base, base, inspect_adapter(tmp_path), base_spec(base), "a0", PLAIN)
    assert _lora_layers(ours, "a0") == _lora_layers(reference, "default")
    with torch.inference_mode():
        torch.testing.assert_close(
            ours(input_ids=IDS).logits, reference(input_ids=IDS).logits, rtol=0, atol=0
        )


# -- in a running engine ------------------------------------------------------------------------------


def _in_engine(engine: Any, fn: Any) -> Any:
    return asyncio.run(engine.call(fn))


def _base_logits(pool: Any) -> torch.Tensor:
    with torch.inference_mode(), pool.routing([BASE], decode=False) as kwargs:
        return pool.model(input_ids=IDS, **kwargs).logits.clone()


def _tree(pool: Any) -> list[tuple[str, str]]:
    return [(name, type(module).__name__) for name, module in pool._loaded.model.named_modules()]


@pytest.fixture
def engine_client(tiny_dir: Path, adapter_store: Path, tmp_path: Path) -> Iterator[tuple[Any, Any, Path]]:
    from fastapi.testclient import TestClient

    from hotlora_server.api import create_app

    store = tmp_path / "store"
    store.mkdir()
    with (
        running_engine(tiny_settings(tiny_dir, tmp_path / "home", store)) as engine,
        TestClient(create_app(engine)) as client,
    ):
        yield engine, client, store


def _greedy(client: Any, model: str) -> Any:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 6,
        "temperature": 0,
    }
    return client.post("/v1/chat/completions", json=body)


def test_a_load_that_fails_halfway_leaves_the_model_as_it_was(
    engine_client: tuple[Any, Any, Path], adapter_store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PEFT injects its layers before it reads the weights: a failure then (a file replaced mid-read, memory
    running out) must not leave them in the base, neither for the first adapter nor beside another."""
    import peft.peft_model

    engine, client, store = engine_client
    for name in ("good", "doomed"):
        shutil.copytree(adapter_store / ADAPTER_NAME, store / name)
    pristine, tree = _in_engine(engine, _base_logits), _in_engine(engine, _tree)

    def fail(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("simulated failure while reading the weights")

    real = peft.peft_model.set_peft_model_state_dict
    monkeypatch.setattr(peft.peft_model, "set_peft_model_state_dict", fail)
    assert _greedy(client, "doomed").status_code >= 500  # the first adapter: PEFT wraps the base, then fails
    assert torch.equal(_in_engine(engine, _base_logits), pristine)
    assert _in_engine(engine, _tree) == tree

    monkeypatch.setattr(peft.peft_model, "set_peft_model_state_dict", real)
    good = _greedy(client, "good").json()
    monkeypatch.setattr(peft.peft_model, "set_peft_model_state_dict", fail)
    assert (
        _greedy(client, "doomed").status_code >= 500
    )  # beside a loaded one: PEFT adds to its layers, then fails
    keys = _in_engine(engine, lambda pool: list(pool.model.peft_config))
    assert len(keys) == 1 and _in_engine(
        engine,
        lambda pool: all(
            set(layer.r) == set(keys) for layer in pool.model.modules() if isinstance(layer, LoraLayer)
        ),
    )
    assert torch.equal(_in_engine(engine, _base_logits), pristine)
    monkeypatch.setattr(peft.peft_model, "set_peft_model_state_dict", real)
    assert _greedy(client, "good").json()["choices"] == good["choices"]

    for name in ("good", "doomed"):  # unloading every adapter gives the base back, bit for bit
        assert client.delete(f"/v1/adapters/{name}").status_code == 200
    assert _in_engine(engine, _tree) == tree
    assert torch.equal(_in_engine(engine, _base_logits), pristine)


def test_a_catastrophic_target_pattern_is_served_like_its_plain_twin(
    engine_client: tuple[Any, Any, Path], adapter_store: Path
) -> None:
    """`(.*)*\\.(q_proj|...)` selects exactly the adapter's modules; `re` needs minutes for each module it does
    not select. Neither the catalog nor PEFT may run it: the twin with a plain list gives the same output."""
    engine, client, store = engine_client
    shutil.copytree(adapter_store / ADAPTER_NAME, store / "plain")
    shutil.copytree(adapter_store / ADAPTER_NAME, store / "patterned")
    config_path = store / "patterned" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["target_modules"] = rf"(.*)*\.({'|'.join(LINEAR)})"
    config["rank_pattern"] = {r"(.*)*\.zzz": 2}
    config_path.write_text(json.dumps(config))

    answers: dict[str, Any] = {}
    thread = threading.Thread(
        target=lambda: answers.update(patterned=_greedy(client, "patterned")), daemon=True
    )
    thread.start()
    thread.join(60)  # generous: it takes well under a second; `re` would take hours
    assert not thread.is_alive(), "the engine froze on the adapter's patterns"
    assert answers["patterned"].status_code == 200, answers["patterned"].text
    assert answers["patterned"].json()["choices"] == _greedy(client, "plain").json()["choices"]
    assert _greedy(client, TINY_NAME).json()["choices"] != answers["patterned"].json()["choices"]
