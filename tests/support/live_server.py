"""Start and stop a real `hotlora serve` on a loopback port, and build real PEFT adapters for it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

API_KEY = "test-key"
BASE_ID = "smollm2-135m-instruct"
ADAPTER = "smol-lora"
# vLLM's CPU build, which `./scripts/dev.sh vllm` (and `dev.sh test`) installs beside .venv
VLLM_PYTHON = Path(__file__).resolve().parents[2] / ".venv-vllm" / "bin" / "python"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RunningServer:
    base_url: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def v1(self) -> str:
        return f"{self.base_url}/v1"

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def own_home(folder: Path, shared_home: Path) -> Path:
    """`folder` made a home of its own (jobs database, store, runs) that shares `shared_home`'s converted
    model and compiled kernels, so a server started on it converts and compiles nothing again."""
    for shared in ("models", "kernels"):
        if (shared_home / shared).is_dir():
            (folder / shared).symlink_to(shared_home / shared)
    return folder


def hotlora_cmd() -> list[str]:
    """The installed console script, as a user runs it (the module where the project is not installed)."""
    script = Path(sys.executable).parent / "hotlora"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "hotlora_cli"]


def start_server(args: list[str], log: Path, timeout: float = 240.0) -> RunningServer:
    """Start `hotlora serve ARGS` and wait for /health; fail with the server's log if it never gets there."""
    port = free_port()
    # a key from the developer's environment must not leak in: each test says whether it wants one
    env = {**{k: v for k, v in os.environ.items() if k != "HOTLORA_API_KEY"}, "HF_HUB_OFFLINE": "1"}
    handle = log.open("wb")
    proc = subprocess.Popen(
        [*hotlora_cmd(), "serve", "--port", str(port), *args],
        stdout=handle,
        stderr=subprocess.STDOUT,
        env=env,
    )
    server = RunningServer(f"http://127.0.0.1:{port}", proc, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}:\n{server.output()}")
        try:
            if httpx.get(f"{server.base_url}/health", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise AssertionError(f"server not healthy after {timeout}s:\n{server.output()}")


def stop_server(server: RunningServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(20)
    except subprocess.TimeoutExpired:
        server.process.kill()


@contextmanager
def serving(args: list[str], log: Path) -> Iterator[RunningServer]:
    """A running server for the duration of a `with` block."""
    server = start_server(args, log)
    try:
        yield server
    finally:
        stop_server(server)


def curl(server: RunningServer, route: str, body: dict[str, Any]) -> str:
    """POST `body` to `route` under /v1 with the real `curl` (unbuffered, so streams arrive as sent), with
    the test key; its output."""
    return subprocess.run(
        ["curl", "-sSN", f"{server.v1}{route}", "-H", "Content-Type: application/json"]
        + ["-H", f"Authorization: Bearer {API_KEY}", "-d", json.dumps(body)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout


def save_random_lora(model_dir: Path, target: Path, seed: int = 0, r: int = 8, strength: float = 1.0) -> None:
    """A real PEFT LoRA adapter for SmolLM2 (all linear layers, random non-zero B: it changes the output).

    Its config names the hub id, as an adapter trained elsewhere would: compatibility must be judged by
    shapes, not by that name.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = LoraConfig(r=r, lora_alpha=2 * r, target_modules="all-linear", init_lora_weights=False)
    model = get_peft_model(base, config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.mul_(strength)  # < 1: a gentle adapter that nudges the base instead of replacing it
    model.save_pretrained(target)
    config_path = target / "adapter_config.json"
    data = json.loads(config_path.read_text())
    data["base_model_name_or_path"] = "HuggingFaceTB/SmolLM2-135M-Instruct"
    config_path.write_text(json.dumps(data, indent=2))
