"""serve_bench's llama.cpp reference row against the real llama-cpp-python server on the embedded GGUF
(skipped where `./scripts/dev.sh llamacpp` has not built .venv-llamacpp, as in CI): its flags as its own
parser reads them, the chat template it applies, and the completion tokens counted from its streams,
which carry no usage."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from _baselines import launched  # noqa: E402
from _llamacpp import LLAMACPP_PYTHON, completion_tokens, llamacpp_cmd  # noqa: E402
from _streams import stream_chat  # noqa: E402

from hotlora_adapters.runtime.base_model import embedded_gguf  # noqa: E402

from support.live_server import BASE_ID, RunningServer, free_port  # noqa: E402

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not LLAMACPP_PYTHON.is_file(), reason="no .venv-llamacpp: ./scripts/dev.sh llamacpp builds it"
    ),
]

# llama-cpp-python's own reading of a command line, as `python -m llama_cpp.server` does it
PARSE = """
import argparse, json, sys
from llama_cpp.server.cli import add_args_from_model, parse_model_from_args
from llama_cpp.server.settings import ModelSettings, ServerSettings, Settings
parser = argparse.ArgumentParser()
add_args_from_model(parser, Settings)
args = parser.parse_args(sys.argv[1:])
print(json.dumps({kind.__name__: parse_model_from_args(kind, args).model_dump(mode="json")
                  for kind in (ServerSettings, ModelSettings)}))
"""


@pytest.fixture(scope="module")
def llamacpp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    port = free_port()
    log = tmp_path_factory.mktemp("llamacpp") / "llamacpp.log"
    cmd = llamacpp_cmd(LLAMACPP_PYTHON, embedded_gguf(), port, 2)
    with launched("llama.cpp server", cmd, port, log, "/v1/models", 300) as server:
        yield server


def test_its_own_parser_reads_the_command_as_meant() -> None:
    cmd = llamacpp_cmd(LLAMACPP_PYTHON, embedded_gguf(), 8123, 3)
    assert cmd[:3] == [str(LLAMACPP_PYTHON), "-m", "llama_cpp.server"]
    done = subprocess.run([cmd[0], "-c", PARSE, *cmd[3:]], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    settings = json.loads(done.stdout)
    server, model = settings["ServerSettings"], settings["ModelSettings"]
    assert (server["host"], server["port"], server["interrupt_requests"]) == ("127.0.0.1", 8123, False)
    assert model["model"] == str(embedded_gguf())
    assert (model["model_alias"], model["n_threads"], model["n_threads_batch"]) == (BASE_ID, 3, 3)
    assert model["chat_format"] is None  # the GGUF's own template


def test_it_chats_in_the_ggufs_own_chatml_template(llamacpp: RunningServer) -> None:
    log = llamacpp.output()
    assert "Guessed chat format: chatml" in log or "Using gguf chat template" in log, log[-3000:]
    assert "Using fallback chat format" not in log


@pytest.mark.parametrize(("max_tokens", "finish_reason"), [(5, "length"), (300, "stop")])
def test_streamed_completion_tokens_match_its_own_usage(
    llamacpp: RunningServer, max_tokens: int, finish_reason: str
) -> None:
    """Counted from the finish reason (length) or the text (stop), as its non-streamed usage counts them."""
    messages = [{"role": "user", "content": "Say hello in one short sentence."}]

    async def streamed_and_plain() -> tuple[int, dict]:
        async with httpx.AsyncClient(base_url=llamacpp.base_url, timeout=120) as client:
            sample = await stream_chat(client, BASE_ID, messages, max_tokens, count=completion_tokens)
            body = {"model": BASE_ID, "messages": messages, "max_tokens": max_tokens, "temperature": 0}
            plain = (await client.post("/v1/chat/completions", json=body)).json()
        return sample.tokens, plain

    tokens, plain = asyncio.run(streamed_and_plain())
    assert plain["choices"][0]["finish_reason"] == finish_reason
    assert tokens == plain["usage"]["completion_tokens"]
