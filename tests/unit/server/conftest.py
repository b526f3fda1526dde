"""Fixtures for the server unit tests: a tiny random llama with the real SmolLM2 tokenizer, a real engine.

The model is random (hidden size 64, two layers) so generation is fast on a CPU, but everything around it
is real: the SmolLM2 tokenizer and chat template, the engine thread, the adapter store with a real PEFT
LoRA adapter, and the FastAPI app driven through `TestClient`.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

TINY_NAME = "tiny"
ADAPTER_NAME = "tiny-adapter"
TINY_CONTEXT = 256
API_KEY = "sk-test-key"


@pytest.fixture(scope="session")
def real_tokenizer(smollm2_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir)


def _tiny_llama(vocab_size: int, tokenizer: Any) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=vocab_size,
        max_position_embeddings=TINY_CONTEXT,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return LlamaForCausalLM(config)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory, real_tokenizer: Any) -> Path:
    """A tiny random llama saved as an HF folder together with the real SmolLM2 tokenizer."""
    from transformers import GenerationConfig

    folder = tmp_path_factory.mktemp("tiny-llama")
    model = _tiny_llama(len(real_tokenizer), real_tokenizer)
    model.generation_config = GenerationConfig(
        bos_token_id=real_tokenizer.bos_token_id,
        eos_token_id=real_tokenizer.eos_token_id,
        pad_token_id=real_tokenizer.pad_token_id,
    )
    model.save_pretrained(folder)
    real_tokenizer.save_pretrained(folder)
    return folder


def save_tiny_adapter(folder: Path, tokenizer: Any, seed: int, **lora: Any) -> Path:
    """Save a real PEFT LoRA adapter of the tiny llama, with random (seeded) A and B, as `folder`."""
    import torch
    from peft import LoraConfig, get_peft_model

    base = _tiny_llama(len(tokenizer), tokenizer)
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        get_peft_model(base, LoraConfig(init_lora_weights=False, **lora)).save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="session")
def adapter_store(tmp_path_factory: pytest.TempPathFactory, real_tokenizer: Any) -> Path:
    """An adapter store holding one real PEFT LoRA adapter (random A and B) for the tiny model."""
    store = tmp_path_factory.mktemp("adapter-store")
    save_tiny_adapter(store / ADAPTER_NAME, real_tokenizer, seed=1, r=4, target_modules="all-linear")
    return store


def tiny_settings(tiny_dir: Path, home: Path, store: Path, **extra: Any) -> Any:
    from hotlora_server.settings import Settings

    flags = {
        "model": str(tiny_dir),
        "quantize": "none",
        "device": "cpu",
        "home": str(home),
        "adapters_dir": str(store),
        "served_model_name": TINY_NAME,
        **extra,
    }
    return Settings.build(flags, {})


@contextmanager
def running_engine(settings: Any) -> Iterator[Any]:
    """A real engine over `settings`, started and ready; stopped on exit."""
    from hotlora_server.engine.engine import Engine

    engine = Engine(settings)
    engine.start()
    try:
        deadline = time.monotonic() + 120
        while not engine.is_ready():
            if engine.error is not None:
                raise RuntimeError(f"the engine failed to start: {engine.error}") from engine.error
            if time.monotonic() > deadline:
                raise TimeoutError("the engine did not become ready in 120 s")
            time.sleep(0.05)
        yield engine
    finally:
        engine.stop()


def chat_request(model: str, content: str, n: int = 1, **sampling: Any) -> Any:
    """An engine request: one user turn, greedy and 12 tokens unless `sampling` says otherwise."""
    import uuid

    from hotlora_server.types import GenerationRequest, SamplingParams

    return GenerationRequest(
        request_id=str(uuid.uuid4()),
        model=model,
        messages=({"role": "user", "content": content},),
        sampling=SamplingParams(**{"max_tokens": 12, "temperature": 0.0, **sampling}),
        n=n,
    )


async def collect(engine: Any, request: Any) -> tuple[dict[int, str], Any]:
    """A request's text per choice index and its usage, read from the engine's event stream."""
    from hotlora_server.types import ChoiceDelta, Usage

    texts: dict[int, str] = {}
    async for event in engine.generate(request):
        if isinstance(event, ChoiceDelta):
            texts[event.index] = texts.get(event.index, "") + event.text
        elif isinstance(event, Usage):
            return texts, event
    raise AssertionError("no usage event")


@contextmanager
def live_app(app: Any) -> Iterator[Any]:
    """`app` served by uvicorn on a free loopback port (in a thread); yields an httpx client on it."""
    import socket
    import threading

    import httpx
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(10)


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


def sse_events(response: Any) -> list[Any]:
    """The `data:` payloads of an SSE response, JSON-decoded except the final `[DONE]`."""
    events: list[Any] = []
    for line in response.iter_lines():
        if not line.startswith("data:"):
            continue
        data = line[len("data:") :].strip()
        events.append(data if data == "[DONE]" else json.loads(data))
    return events


def assert_error(
    response: Any, status: int, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """`response` is an OpenAI-shaped error with `status`; return its `error` object."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and error["type"]
    if param is not None:
        assert error["param"] == param or param in error["message"], error
    if code is not None:
        assert error["code"] == code, error
    return error


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

    base = _tiny_llama(len(real_tokenizer), real_tokenizer)
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


def needs_compiler() -> None:
    """Skip where the machine has no C compiler: the server runs without its CPU kernels there (and says
    that batch invariance is off)."""
    from hotlora_server.engine.cpu import kernels

    if kernels.compiler() is None:
        pytest.skip("no C compiler here: the server runs without its fixed-order CPU kernels")


@pytest.fixture(scope="session")
def cpu_kernels(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The compiled CPU kernels (built once for the session)."""
    from hotlora_server.engine.cpu import kernels

    needs_compiler()
    built = kernels.build(tmp_path_factory.mktemp("kernels"))
    assert built is not None, "a compiler is present, yet the kernels did not build (see the log)"
    return built
