"""Fixtures for the server unit tests: a tiny random llama with the real SmolLM2 tokenizer, a real engine.

The model is random (hidden size 64, two layers) so generation is fast on a CPU, but everything around it
is real: the SmolLM2 tokenizer and chat template, the engine thread, the adapter store with a real PEFT
LoRA adapter, and the FastAPI app driven through `TestClient`. The helpers behind them (and shared by the
tests) are in `tests/support/tiny_server.py`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support.tiny_server import (
    ADAPTER_NAME,
    API_KEY,
    assert_error,
    needs_compiler,
    running_engine,
    save_tiny_adapter,
    sse_events,
    tiny_llama,
    tiny_settings,
)


@pytest.fixture(scope="session")
def real_tokenizer(smollm2_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory, real_tokenizer: Any) -> Path:
    """A tiny random llama saved as an HF folder together with the real SmolLM2 tokenizer."""
    from transformers import GenerationConfig

    folder = tmp_path_factory.mktemp("tiny-llama")
    model = tiny_llama(len(real_tokenizer), real_tokenizer)
    model.generation_config = GenerationConfig(
        bos_token_id=real_tokenizer.bos_token_id,
        eos_token_id=real_tokenizer.eos_token_id,
        pad_token_id=real_tokenizer.pad_token_id,
    )
    model.save_pretrained(folder)
    real_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def adapter_store(tmp_path_factory: pytest.TempPathFactory, real_tokenizer: Any) -> Path:
    """An adapter store holding one real PEFT LoRA adapter (random A and B) for the tiny model."""
    store = tmp_path_factory.mktemp("adapter-store")
    save_tiny_adapter(store / ADAPTER_NAME, real_tokenizer, seed=1, r=4, target_modules="all-linear")
    return store


@pytest.fixture(scope="session")
def tiny_engine(
    tiny_dir: Path, adapter_store: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    """The real engine serving the tiny model, started and ready."""
    with running_engine(tiny_settings(tiny_dir, tmp_path_factory.mktemp("home"), adapter_store)) as engine:
        yield engine


@pytest.fixture(scope="session")
def client(tiny_engine: Any) -> Iterator[Any]:
    """A TestClient on the app without an API key."""
    from fastapi.testclient import TestClient

    from hotlora_server.api import create_app

    with TestClient(create_app(tiny_engine)) as test_client:
        yield test_client


@pytest.fixture(scope="session")
def keyed_client(tiny_engine: Any) -> Iterator[Any]:
    """A TestClient on an app over the same engine that requires `API_KEY`."""
    from fastapi.testclient import TestClient

    from hotlora_server.api import create_app

    with TestClient(create_app(tiny_engine, api_key=API_KEY)) as test_client:
        yield test_client


@pytest.fixture(scope="session")
def sse() -> Any:
    return sse_events


@pytest.fixture(scope="session")
def openai_error() -> Any:
    return assert_error


@pytest.fixture(scope="module")
def peft_model(real_tokenizer: Any) -> Any:
    """The tiny llama with three random adapters of different ranks and a `cat` blend of two of them."""
    import torch
    from peft import LoraConfig, get_peft_model

    base = tiny_llama(len(real_tokenizer), real_tokenizer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(1)
        model = get_peft_model(
            base, LoraConfig(r=2, target_modules="all-linear", init_lora_weights=False), "a"
        )
        for name, r, targets in (("b", 4, "all-linear"), ("c", 8, ["q_proj", "v_proj"])):
            model.add_adapter(
                name, LoraConfig(r=r, lora_alpha=3 * r, target_modules=targets, init_lora_weights=False)
            )
        model.add_weighted_adapter(["a", "b"], [0.7, 0.4], "ab", combination_type="cat")
    return model.eval()


@pytest.fixture(scope="session")
def cpu_kernels(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The compiled CPU kernels (built once for the session)."""
    from hotlora_server.engine.cpu import kernels_build

    needs_compiler()
    built = kernels_build.build(tmp_path_factory.mktemp("kernels"))
    assert built is not None, "a compiler is present, yet the kernels did not build (see the log)"
    return built
