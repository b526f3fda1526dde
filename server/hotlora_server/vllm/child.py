"""vLLM's OpenAI server as a child process of hotlora, on a private loopback port.

Started from the interpreter `--vllm-python` names (vLLM pins its own torch and transformers, so it lives
in its own environment) as `python -m vllm.entrypoints.openai.api_server` (the `vllm` command of some CPU
builds cannot find its own distribution), with LoRA and runtime LoRA loading on. It runs in its own
process group, so stopping it stops the engine processes vLLM starts too; on Linux it also gets SIGTERM
when hotlora dies without stopping it.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import socket
import subprocess
import sys

from ..settings import Settings
from .base import VllmBase

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def free_port() -> int:
    """A loopback port free now (vLLM binds it a moment later)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def vllm_command(settings: Settings, base: VllmBase, port: int) -> list[str]:
    """The child's command line: the base hotlora resolved, LoRA on with hotlora's limits, the sampling
    defaults the built-in engine would apply (vLLM's flags)."""
    assert settings.vllm_python is not None
    command = [
        str(settings.vllm_python),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(base.folder),
        "--served-model-name",
        base.name,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--enable-lora",
        "--max-lora-rank",
        str(settings.max_lora_rank),
        "--max-loras",
        str(settings.max_loras),
        "--max-num-seqs",
        str(settings.max_num_seqs),
        "--generation-config",
        settings.generation_config,
        "--disable-uvicorn-access-log",  # hotlora's access log has the requests; these are health checks
    ]
    if settings.max_model_len is not None:
        command += ["--max-model-len", str(settings.max_model_len)]
    if settings.gpu_memory_utilization is not None:
        command += ["--gpu-memory-utilization", str(settings.gpu_memory_utilization)]
    card = base.card_defaults if settings.generation_config == "auto" else {}
    overrides = {**card, **settings.override_generation_config.given()}
    if overrides:
        command += ["--override-generation-config", json.dumps(overrides)]
    return command


class VllmChild:
    """The child vLLM server: `start` it, read `url`, `stop` it (and whatever it started)."""

    def __init__(self, command: list[str], port: int) -> None:
        self.command = command
        self.url = f"http://127.0.0.1:{port}"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
        log.info("starting vLLM: %s", " ".join(self.command))
        self._process = subprocess.Popen(
            self.command,
            env=env,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,  # noqa: PLW1509
        )

    def exit_code(self) -> int | None:
        """None while it runs."""
        return self._process.poll() if self._process is not None else None

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM to its process group, SIGKILL after `timeout` seconds."""
        process = self._process
        if process is None or process.poll() is not None:
            return
        log.info("stopping vLLM (pid %d)", process.pid)
        _signal_group(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            _signal_group(process.pid, signal.SIGKILL)
            process.wait()


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when hotlora's process dies (Linux's PR_SET_PDEATHSIG)."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
