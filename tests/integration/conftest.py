"""A real `hotlora serve` on a loopback port: the real SmolLM2 in 4-bit, a real PEFT adapter in its store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from support.live_server import ADAPTER, API_KEY, RunningServer, save_random_lora, serving


@pytest.fixture(scope="session")
def adapter_store(tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path) -> Path:
    store = tmp_path_factory.mktemp("store")
    save_random_lora(smollm2_dir, store / ADAPTER)
    return store


@pytest.fixture(scope="session")
def server(
    tmp_path_factory: pytest.TempPathFactory, hotlora_home: Path, adapter_store: Path, smollm2_dir: Path
) -> Iterator[RunningServer]:
    """The server every integration test talks to (4-bit, API key required)."""
    log = tmp_path_factory.mktemp("logs") / "server.log"
    with serving(
        ["--home", str(hotlora_home), "--adapters-dir", str(adapter_store), "--api-key", API_KEY], log
    ) as running:
        yield running


@pytest.fixture
def client(server: RunningServer):  # noqa: ANN201 - openai.OpenAI
    import openai

    return openai.OpenAI(base_url=server.v1, api_key=API_KEY, max_retries=0, timeout=120)


@pytest.fixture
def http(server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=server.base_url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=120
    ) as c:
        yield c
