"""`hotlora serve --engine vllm --vllm-url A --vllm-url B`: hotlora in front of two real vLLM servers
(vLLM's CPU build from `.venv-vllm`) over the real embedded SmolLM2 and one shared adapter store: adapter
affinity, spreading, failover and `/health`."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from support.live_server import (
    API_KEY,
    BASE_ID,
    VLLM_PYTHON,
    RunningServer,
    free_port,
    save_random_lora,
    start_server,
    stop_server,
)

pytestmark = pytest.mark.integration

QUESTION = [{"role": "user", "content": "Name three colours."}]
START_S = 900.0


def vllm_server(model_dir: Path, log: Path) -> tuple[str, subprocess.Popen[bytes]]:
    """A vLLM server as a user starts one for hotlora: LoRA and runtime loading on, the base's id."""
    port = free_port()
    command = [
        *(str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir)),
        *("--served-model-name", BASE_ID, "--host", "127.0.0.1", "--port", str(port), "--enable-lora"),
        *("--max-lora-rank", "64", "--gpu-memory-utilization", "0.15", "--disable-uvicorn-access-log"),
    ]
    env = {**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    return f"http://127.0.0.1:{port}", process


def stop_vllm(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture(scope="module")
def fleet(
    tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path
) -> Iterator[list[tuple[str, subprocess.Popen[bytes]]]]:
    if not VLLM_PYTHON.is_file():
        pytest.skip("vLLM's environment is absent: ./scripts/dev.sh vllm creates it")
    logs = tmp_path_factory.mktemp("fleet-logs")
    servers = [vllm_server(smollm2_dir, logs / f"vllm{i}.log") for i in range(2)]
    try:
        deadline = time.monotonic() + START_S
        for url, process in servers:
            while not _healthy(url):
                assert process.poll() is None, (logs / "vllm0.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "vLLM did not start"
                time.sleep(2)
        yield servers
    finally:
        for _, process in servers:
            stop_vllm(process)


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("fleet-store")
    for name, seed in (("a", 1), ("b", 2)):
        save_random_lora(smollm2_dir, root / name, seed=seed, strength=0.5)
    return root


@pytest.fixture(scope="module")
def front(
    tmp_path_factory: pytest.TempPathFactory,
    hotlora_home: Path,
    store: Path,
    fleet: list[tuple[str, subprocess.Popen[bytes]]],
) -> Iterator[RunningServer]:
    urls = [arg for url, _ in fleet for arg in ("--vllm-url", url)]
    args = ["--engine", "vllm", *urls, "--home", str(hotlora_home), "--adapters-dir", str(store)]
    server = start_server([*args, "--api-key", API_KEY], tmp_path_factory.mktemp("front") / "server.log")
    try:
        yield server
    finally:
        stop_server(server)


@pytest.fixture
def http(front: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=front.base_url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=300
    ) as c:
        yield c


def greedy(http: httpx.Client, model: str) -> str:
    body = {"model": model, "messages": QUESTION, "temperature": 0, "max_tokens": 8}
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    return str(response.json()["choices"][0]["message"]["content"])


def holders(fleet: list[tuple[str, subprocess.Popen[bytes]]], adapter: str) -> list[str]:
    """The servers that have a LoRA of `adapter` loaded, asked directly."""
    found = []
    for url, process in fleet:
        if process.poll() is None:
            ids = [m["id"] for m in httpx.get(f"{url}/v1/models", timeout=10).json()["data"]]
            if any(i.startswith(f"{adapter}@") for i in ids):
                found.append(url)
    return found


def ready_servers(http: httpx.Client) -> int:
    """How many servers /health counts ready, checked against /metrics' `hotlora_model_info`."""
    health = http.get("/health").json()
    match = re.search(r'servers_ready="(\d+)"', http.get("/metrics").text)
    assert match is not None and int(match.group(1)) == health.get("servers_ready", 0)
    return int(match.group(1))


def test_health_counts_the_ready_servers(http: httpx.Client) -> None:
    health = http.get("/health")
    assert health.status_code == 200 and health.json()["servers"] == 2
    assert ready_servers(http) == 2


def test_adapters_spread_over_the_fleet_and_stick(
    http: httpx.Client, fleet: list[tuple[str, subprocess.Popen[bytes]]]
) -> None:
    a, b = greedy(http, "a"), greedy(http, "b")
    assert a != b
    [a_home], [b_home] = holders(fleet, "a"), holders(fleet, "b")
    assert a_home != b_home  # the second adapter went to the server with none loaded
    for _ in range(2):
        assert greedy(http, "a") == a
    assert holders(fleet, "a") == [a_home]  # affinity: never loaded twice


def test_a_failed_server_is_taken_out_and_its_adapters_served_elsewhere(
    http: httpx.Client, fleet: list[tuple[str, subprocess.Popen[bytes]]], store: Path
) -> None:
    before = greedy(http, "a")
    [a_home] = holders(fleet, "a")
    stop_vllm(next(p for url, p in fleet if url == a_home))
    assert greedy(http, "a") == before  # retried on the other server, which loads it
    deadline = time.monotonic() + 10
    while ready_servers(http) != 1:
        assert time.monotonic() < deadline
        time.sleep(0.5)
    assert http.get("/health").status_code == 200
    for _, process in fleet:
        stop_vllm(process)
    deadline = time.monotonic() + 10
    while http.get("/health").status_code != 503:
        assert time.monotonic() < deadline
        time.sleep(0.5)
    assert not (store / ".probe").exists() or not any((store / ".probe").iterdir())
