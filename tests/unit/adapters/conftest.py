"""Fixtures for the adapter registry tests: real PEFT adapters saved from a tiny random llama.

Only these fixtures import torch/peft (to BUILD files); the package under test must not. Tests that need
them are skipped where peft is not installed.
"""

from __future__ import annotations

import json
import shutil
import struct
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import hotlora_adapters.fsutil as fsutil
from hotlora_adapters import AdapterStore, BaseSpec

from support.tiny_llama import build_tiny_llama


def base_spec_of(model) -> BaseSpec:  # noqa: ANN001 - a torch module
    """What the server computes for a loaded base (the server's own function, so the two never drift)."""
    from hotlora_adapters.runtime.base_model import base_spec

    return base_spec(model)


def save_lora(dest: Path, **lora_kwargs: Any) -> Path:
    """Save a real PEFT LoRA adapter (adapter name "default", so PEFT writes straight into `dest`)."""
    from peft import LoraConfig, get_peft_model

    with warnings.catch_warnings():  # PEFT's advice about the recipes used here is noise in test output
        warnings.simplefilter("ignore")
        peft_model = get_peft_model(build_tiny_llama(), LoraConfig(**lora_kwargs))
        peft_model.save_pretrained(str(dest))
    return dest


@pytest.fixture(scope="session")
def tiny_base_spec() -> BaseSpec:
    pytest.importorskip("peft")
    return base_spec_of(build_tiny_llama())


@pytest.fixture(scope="session")
def tiny_spec_with() -> Callable[..., BaseSpec]:
    """BaseSpec of a tiny llama with some LlamaConfig fields changed (e.g. hidden_size=96)."""
    pytest.importorskip("peft")
    return lambda **overrides: base_spec_of(build_tiny_llama(**overrides))


@pytest.fixture(scope="session")
def _saved_adapters(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Build each kind of adapter once per session; tests get a private copy."""
    pytest.importorskip("peft")
    root = tmp_path_factory.mktemp("peft_adapters")
    recipes: dict[str, dict[str, Any]] = {
        "all-linear": dict(r=4, target_modules="all-linear"),
        "embed-and-head": dict(r=4, target_modules=["q_proj", "embed_tokens"], modules_to_save=["lm_head"]),
        "dora": dict(r=4, target_modules=["v_proj"], use_dora=True),
        "rank-pattern": dict(
            r=4, target_modules=["q_proj", "v_proj"], rank_pattern={"v_proj": 2}, task_type="CAUSAL_LM"
        ),
        "lora-bias": dict(r=4, target_modules=["o_proj"], lora_bias=True),
        "trainable-tokens": dict(r=4, target_modules=["q_proj"], trainable_token_indices=[1, 2, 3]),
    }
    built: dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind not in built:
            built[kind] = save_lora(root / kind, **recipes[kind])
        return built[kind]

    return get


@pytest.fixture
def make_adapter(_saved_adapters: Callable[[str], Path], tmp_path: Path) -> Callable[..., Path]:
    """Copy a saved adapter of `kind` to `<tmp_path>/<name>` (or into `parent`) for the test to modify."""

    def make(kind: str = "all-linear", name: str = "piglatin", parent: Path | None = None) -> Path:
        dest = (parent or tmp_path) / name
        shutil.copytree(_saved_adapters(kind), dest)
        return dest

    return make


@pytest.fixture
def store(tmp_path: Path) -> AdapterStore:
    """An empty store, not created yet (test_adapter_store.py has its own, with adapters in it)."""
    return AdapterStore(tmp_path / "store")


@pytest.fixture
def no_renameat2(monkeypatch: pytest.MonkeyPatch) -> None:
    """Behave like a system without renameat2 (old glibc, not Linux, a file system refusing the flags)."""
    monkeypatch.setattr(fsutil, "renameat2", lambda src, dst, flags: False)


@pytest.fixture
def adapter_dir(make_adapter: Callable[..., Path]) -> Path:
    return make_adapter()


def edit_config(adapter: Path, **changes: Any) -> None:
    """Rewrite adapter_config.json with `changes` applied."""
    path = adapter / "adapter_config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


@pytest.fixture
def edit_adapter_config() -> Callable[..., None]:
    return edit_config


def write_safetensors(
    path: Path, tensors: dict[str, tuple[str, list[int]]], metadata: dict[str, str] | None = None
) -> None:
    """Write a valid safetensors file of zero-filled tensors, torch-free (for hand-made adapters)."""
    itemsize = {"F32": 4, "F16": 2, "BF16": 2}
    header: dict[str, Any] = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        size = itemsize[dtype]
        for dim in shape:
            size *= dim
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(offset))


@pytest.fixture
def safetensors_writer() -> Callable[..., None]:
    return write_safetensors
