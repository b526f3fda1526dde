"""What serve_bench measures hotlora against: `transformers serve` and a naive sequential PEFT loop."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from _streams import Sample
from _workloads import ADAPTERS, CONCURRENCY, Summary, Workload, bench_server, story_prompt, summarize

from support.live_server import RunningServer, free_port, stop_server


class Unavailable(RuntimeError):
    """A system cannot run here; the message says why."""


@contextmanager
def launched(
    name: str, cmd: list[str], port: int, log: Path, probe: str, timeout: float
) -> Iterator[RunningServer]:
    """`cmd`, a server on `port` with its output in `log`, once GET `probe` answers 200; stopped after.
    Unavailable, with the last line it wrote, if it exits or never answers."""
    with log.open("wb") as handle:
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env)
    server = RunningServer(f"http://127.0.0.1:{port}", proc, log)
    try:
        deadline = time.monotonic() + timeout
        while not answers(server, probe):
            if proc.poll() is not None or time.monotonic() > deadline:
                last = (server.output().strip().splitlines() or ["(no output)"])[-1]
                raise Unavailable(f"{name} did not start (exit code {proc.poll()}): {last}")
            time.sleep(0.5)
        yield server
    finally:
        stop_server(server)


def answers(server: RunningServer, route: str) -> bool:
    try:
        return httpx.get(f"{server.base_url}{route}", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


@contextmanager
def transformers_serving(model_dir: Path, log: Path, timeout: float = 300) -> Iterator[RunningServer]:
    """`transformers serve` with continuous batching on `model_dir` in 4-bit, on hotlora's device and dtype."""
    from transformers.utils.import_utils import is_serve_available

    from hotlora_adapters.runtime.base_model import pick_device, pick_dtype

    cli = Path(sys.executable).parent / "transformers"
    if not is_serve_available() or not cli.is_file():
        raise Unavailable(
            "needs the transformers CLI with fastapi, uvicorn, openai and pydantic "
            "(pip install 'transformers[serving]')"
        )
    device = pick_device("auto")
    dtype = str(pick_dtype("auto", device)).removeprefix("torch.")
    port = free_port()
    cmd = [
        str(cli),
        "serve",
        str(model_dir),
        "--continuous-batching",
        "--quantization",
        "bnb-4bit",
        "--device",
        device,
        "--dtype",
        dtype,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with launched("transformers serve", cmd, port, log, "/health", timeout) as server:
        yield server


def bench_transformers(model_dir: Path, logs: Path, rounds: int, tokens: int) -> list[Summary]:
    model = str(model_dir)  # a server started with a model answers only to that exact name
    workloads = [Workload("base", 1, (model,)), Workload("base", CONCURRENCY, (model,))]
    with transformers_serving(model_dir, logs / "transformers.log") as server:
        return bench_server("transformers", server.base_url, workloads, rounds, tokens)


def bench_naive(home: Path, library: Path, rounds: int, tokens: int) -> list[Summary]:
    """One request at a time in this process: `set_adapter`, then `generate` with a token-timing streamer."""
    import torch
    from peft import PeftModel
    from transformers.generation.streamers import BaseStreamer

    from hotlora_server.engine.loader import load_model
    from hotlora_server.settings import Settings

    class TokenClock(BaseStreamer):
        """Times each generated token (`generate` first puts the prompt, which is skipped)."""

        def __init__(self) -> None:
            self.puts: list[float] = []

        def put(self, value: Any) -> None:
            self.puts.append(time.perf_counter())

        def end(self) -> None:
            pass

    loaded = load_model(Settings.build({"home": str(home)}, {}))
    # Every adapter is loaded before the first forward: on AVX512-BF16 CPUs bitsandbytes repacks the
    # 4-bit weights then, and PEFT loads after that would corrupt them (see engine/bnb_cpu.py).
    model = PeftModel.from_pretrained(loaded.model, library / ADAPTERS[0], adapter_name=ADAPTERS[0])
    for name in ADAPTERS[1:]:
        model.load_adapter(library / name, adapter_name=name)

    def generate(adapter: str, messages: list[dict[str, str]], max_tokens: int) -> list[float]:
        model.set_adapter(adapter)
        inputs = loaded.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        ).to(loaded.device)
        clock = TokenClock()
        with torch.inference_mode():
            model.generate(**inputs, max_new_tokens=max_tokens, do_sample=False, streamer=clock)
        return clock.puts[1:]

    workload = Workload("8 adapters", CONCURRENCY, ADAPTERS)
    generate(ADAPTERS[0], story_prompt(0), 2)  # warm-up
    samples: list[Sample] = []
    ended: list[float] = []
    started = time.perf_counter()
    for i, (adapter, messages) in enumerate(workload.requests(rounds)):
        sent = ended[i - CONCURRENCY] if i >= CONCURRENCY else started
        stamps = generate(adapter, messages, tokens)
        ended.append(time.perf_counter())
        samples.append(Sample(sent, stamps, len(stamps)))
    return [summarize("naive", workload, samples, time.perf_counter() - started)]
