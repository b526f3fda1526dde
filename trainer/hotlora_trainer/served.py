"""Ask a real `hotlora serve` for replies: the evaluation of a built-in task as users get it.

The in-process model a run trains is not what users chat with: the server serves the base quantized to
4-bit NF4, builds prompts with its own chat handling, and batches and samples requests its own way. So a
task is scored through a server: this module starts `hotlora serve` in a subprocess on a loopback port,
on a private store that holds only the trained adapter, with the run's base and home (its converted
model), and sends each evaluation sentence through the client SDK as a user would — the bare sentence as
the one user message, temperature 0 (greedy), many requests at once so the server batches them.

The trainer never imports the server (DESIGN.md's layer rules): they meet in the store and over HTTP.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import TrainError

SERVED_QUANTIZATION = "nf4"  # the server's default --quantize: what a user who runs `hotlora serve` gets
CONCURRENCY = 32  # requests in flight: the server's default --max-num-seqs, so it decodes them as one batch
START_TIMEOUT_S = 600.0  # a first start may convert the embedded GGUF and compile the CPU kernels
REQUEST_TIMEOUT_S = 600.0
LOG_TAIL_CHARS = 4000


class ServedEvalError(TrainError):
    """The evaluation server did not start or did not answer; the message ends with its log."""


@dataclass(frozen=True)
class EvalServer:
    """A running evaluation server: where it listens, its key, and what `/v1/models` says it serves."""

    base_url: str
    api_key: str
    base_id: str
    quantization: str | None
    log: Path

    def served(self) -> dict[str, Any]:
        """What the figures come from, for the manifest."""
        return {
            "server": "hotlora serve",
            "model": self.base_id,
            "quantization": self.quantization,
            "prompt": "the chat template, the sentence as the only user message",
            "decoding": "greedy (temperature 0)",
        }


def serve_command(
    *,
    base: str | None,
    home: Path,
    store: Path,
    device: str,
    max_lora_rank: int,
    chat_template: str | None,
) -> list[str]:
    """`hotlora serve` on `store` with the run's base, served as users get it (`--quantize nf4`); the
    port is `eval_server`'s to add."""
    return [
        sys.executable,
        "-m",
        "hotlora_cli",
        "serve",
        *(["--model", base] if base is not None else []),
        *(["--chat-template", chat_template] if chat_template is not None else []),
        "--home",
        str(home),
        "--adapters-dir",
        str(store),
        "--host",
        "127.0.0.1",
        "--device",
        device,
        "--quantize",
        SERVED_QUANTIZATION,
        "--max-lora-rank",
        str(max_lora_rank),
        "--max-num-seqs",
        str(CONCURRENCY),
        "--no-fine-tuning",
        "--log-level",
        "warning",
    ]


@contextmanager
def eval_server(command: Sequence[str], log: Path) -> Iterator[EvalServer]:
    """Run `command` (`serve_command`'s) on a free loopback port until the `with` block ends.

    It gets a fresh API key of its own, and none of the caller's `HOTLORA_*` settings: flags and the
    server's defaults alone decide what is served.
    """
    from hotlora_client import Client

    port = _free_port()
    api_key = secrets.token_urlsafe(24)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOTLORA_")}
    env["HOTLORA_API_KEY"] = api_key
    with log.open("wb") as handle:
        process = subprocess.Popen(
            [*command, "--port", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=env,
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        with Client(base_url, api_key=api_key, timeout=10.0, max_retries=0) as client:
            _wait_healthy(client, process, log)
            base = next(m for m in client.models.list() if not m.is_adapter)
        yield EvalServer(base_url, api_key, base.id, base.quantization, log)
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def chat_replies(
    server: EvalServer, model: str, user_messages: Sequence[str], *, max_tokens: int
) -> list[str]:
    """`model`'s greedy reply to each user message, `CONCURRENCY` requests at a time, in order."""
    from hotlora_client import Client, errors

    with Client(server.base_url, api_key=server.api_key, timeout=REQUEST_TIMEOUT_S) as client:

        def reply(message: str) -> str:
            return client.chat(message, model=model, temperature=0, max_tokens=max_tokens).text.strip()

        try:
            with ThreadPoolExecutor(CONCURRENCY) as pool:
                return list(pool.map(reply, user_messages))
        except errors.APIError as e:
            raise ServedEvalError(
                f"the evaluation server failed a chat to {model!r}: {e}{_tail(server.log)}"
            ) from e


def wait_servable(server: EvalServer, name: str) -> None:
    """Wait until the server lists adapter `name` as servable (it reads its store as it starts)."""
    from hotlora_client import Client, errors

    with Client(server.base_url, api_key=server.api_key, timeout=10.0) as client:
        try:
            client.adapters.wait_until_ready(name, 60.0)
        except (errors.AdapterNotReadyError, errors.APIError) as e:
            raise ServedEvalError(
                f"the evaluation server does not serve {name!r}: {e}{_tail(server.log)}"
            ) from e


def _wait_healthy(client: Any, process: subprocess.Popen[bytes], log: Path) -> None:
    from hotlora_client import errors

    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServedEvalError(
                f"the evaluation server exited with status {process.returncode}{_tail(log)}"
            )
        try:
            client.health()
            return
        except errors.APIError:  # not listening yet, or 503 while it loads the model
            time.sleep(0.5)
    raise ServedEvalError(f"the evaluation server was not up after {START_TIMEOUT_S:.0f} s{_tail(log)}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(log: Path) -> str:
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return ""
    return f"; its log ({log}) ends:\n{text[-LOG_TAIL_CHARS:]}" if text else ""
