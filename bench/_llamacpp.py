"""llama.cpp's server as serve_bench's reference row: llama-cpp-python's OpenAI server on the very GGUF file
hotlora's embedded base comes from (served there as Q4_1; hotlora converts the same weights to nf4).

llama-cpp-python is a benchmark tool here, never a dependency of hotlora: `./scripts/dev.sh llamacpp`
builds it (compiling llama.cpp for this CPU) into .venv-llamacpp, and without that venv the row is
skipped, saying how to build it. Its server runs one request at a time (no continuous batching), so its
c=16 queues; its streams carry no usage, so a completion's tokens are counted as `completion_tokens` says.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import httpx
from _baselines import Unavailable, launched
from _common import REPO
from _workloads import CONCURRENCY, Summary, Workload, bench_server

from support.live_server import BASE_ID, free_port

LLAMACPP_PYTHON = REPO / ".venv-llamacpp" / "bin" / "python"
BUILD = "./scripts/dev.sh llamacpp"


def llamacpp_cmd(python: Path, gguf: Path, port: int, threads: int) -> list[str]:
    """llama-cpp-python's server on `gguf`, answering to hotlora's base name, on `threads` threads.

    No --chat_format: it then takes the GGUF's own chat template (ChatML for SmolLM2), as hotlora takes
    its tokenizer's. `--interrupt_requests false`: by default a new request ends the running stream early,
    which would cut c=16's streams short instead of queuing them."""
    return [
        str(python),
        "-m",
        "llama_cpp.server",
        "--model",
        str(gguf),
        "--model_alias",
        BASE_ID,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_threads",
        str(threads),
        "--n_threads_batch",
        str(threads),
        "--interrupt_requests",
        "false",
    ]


async def completion_tokens(
    client: httpx.AsyncClient, text: str, finish_reason: str | None, max_tokens: int
) -> int:
    """A completion's tokens: `max_tokens` where it stopped for length (llama-cpp-python stops right
    there), else its text's tokens by the server's own tokenizer, less those it adds to any text (BOS)."""
    if finish_reason == "length":
        return max_tokens
    counts = []
    for part in (text, ""):
        response = await client.post("/extras/tokenize/count", json={"input": part})
        response.raise_for_status()
        counts.append(int(response.json()["count"]))
    return counts[0] - counts[1]


def built_with(python: Path) -> str:
    """llama-cpp-python's version and the CPU features its llama.cpp was compiled for, for the report."""
    code = "import llama_cpp; print(llama_cpp.__version__, llama_cpp.llama_print_system_info().decode())"
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise Unavailable(
            f"{python} does not import llama_cpp (rebuild it with `{BUILD}`): {done.stderr[-300:]}"
        )
    version, _, features = done.stdout.strip().partition(" ")
    return f"llama-cpp-python {version}, llama.cpp built for {' '.join(features.split())}"


def bench_llamacpp(
    logs: Path, rounds: int, tokens: int, kernels: dict[str, str], python: Path = LLAMACPP_PYTHON
) -> list[Summary]:
    """c=1 and c=16 base on llama.cpp's server, on as many threads as the machine has cores."""
    if not python.is_file():
        raise Unavailable(
            f"no {python.parents[1].name}: build it with `{BUILD}` (compiles llama.cpp, minutes)"
        )
    from hotlora_adapters.runtime.base_model import embedded_gguf

    gguf, threads, port = embedded_gguf(), os.cpu_count() or 1, free_port()
    kernels["llamacpp"] = (
        f"{built_with(python)}; {gguf.name} as is (hotlora: the same weights as nf4); --n_threads {threads}; "
        "one request at a time (c=16 queues); tokens: max_tokens on finish_reason length, else the text's "
        "(its streams carry no usage)"
    )
    workloads = [Workload("base", 1, (BASE_ID,)), Workload("base", CONCURRENCY, (BASE_ID,))]
    cmd = llamacpp_cmd(python, gguf, port, threads)
    with launched("llama.cpp server", cmd, port, logs / "llamacpp.log", "/v1/models", 300) as server:
        return bench_server("llamacpp", server.base_url, workloads, rounds, tokens, count=completion_tokens)
