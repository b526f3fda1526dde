"""Helpers for the server's unit tests: a tiny random llama with the real SmolLM2 tokenizer, a real engine
over it, requests to it, an app on a loopback port, and checks of SSE and OpenAI error answers.

The fixtures that build these once per session are in `tests/unit/server/conftest.py`.
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

from support.tiny_llama import build_tiny_llama, special_tokens

TINY_NAME = "tiny"
ADAPTER_NAME = "tiny-adapter"
TINY_CONTEXT = 256
API_KEY = "sk-test-key"


def tiny_llama(vocab_size: int, tokenizer: Any) -> Any:
    """A tiny random llama (seeded: every build is the same) with `tokenizer`'s special tokens."""
    return build_tiny_llama(
        vocab_size=vocab_size, max_position_embeddings=TINY_CONTEXT, **special_tokens(tokenizer)
    )


def save_tiny_adapter(folder: Path, tokenizer: Any, seed: int, **lora: Any) -> Path:
    """Save a real PEFT LoRA adapter of the tiny llama, with random (seeded) A and B, as `folder`."""
    import torch
    from peft import LoraConfig, get_peft_model

    base = tiny_llama(len(tokenizer), tokenizer)
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        get_peft_model(base, LoraConfig(init_lora_weights=False, **lora)).save_pretrained(str(folder))
    return folder


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


def needs_compiler() -> None:
    """Skip where the machine has no C or C++ compiler: the server runs without its CPU kernels there (and
    says that batch invariance is off)."""
    from hotlora_server.engine.cpu import kernels_build

    if kernels_build.compilers() is None:
        pytest.skip("no C and C++ compilers here: the server runs without its fixed-order CPU kernels")
