"""The terminal chat (`hotlora-chat`, `hotlora chat`) driven through stdin against the real server: a
question, `/model <adapter>`, an answer, `/quit`; the commands; readable errors and never a traceback."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from support.live_server import ADAPTER, API_KEY, BASE_ID, RunningServer, hotlora_cmd

pytestmark = pytest.mark.integration


def chat(server: RunningServer, lines: list[str], *args: str, key: str = API_KEY, main_cli: bool = False):  # noqa: ANN201
    """Run the terminal chat with `lines` on stdin; the API key comes from HOTLORA_API_KEY, as a user's would."""
    command = [*hotlora_cmd(), "chat"] if main_cli else [sys.executable, "-m", "hotlora_client"]
    env = {**os.environ, "HOTLORA_API_KEY": key, "HOTLORA_BASE_URL": server.base_url}
    result = subprocess.run(
        [*command, "--max-tokens", "6", "--temperature", "0", *args],
        input="".join(f"{line}\n" for line in lines),
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=Path(__file__).parent,
    )
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    return result


def replies(stdout: str, model: str) -> list[str]:
    """What `model` answered: from its `model> ` prompt to the next `you> ` (a reply may span lines)."""
    return re.findall(rf"^{re.escape(model)}> (.*?)\n(?=you> |\Z)", stdout, re.MULTILINE | re.DOTALL)


def test_a_conversation_that_switches_to_an_adapter(server: RunningServer) -> None:
    lines = ["What is the capital of France?", f"/model {ADAPTER}", "And of Italy?", "/quit", "never sent"]
    result = chat(server, lines)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"talking to {BASE_ID}" in out and f"adapters: {ADAPTER}" in out
    assert "you> What is the capital of France?" in out and "you> And of Italy?" in out
    assert f"now talking to {ADAPTER}" in out
    assert [len(r) > 0 for r in replies(out, BASE_ID)] == [True]
    assert [len(r) > 0 for r in replies(out, ADAPTER)] == [True]
    assert "never sent" not in out and result.stderr == ""


def test_commands_and_errors_through_the_main_cli(server: RunningServer) -> None:
    lines = [
        "/models",
        "/model no-such-model",  # refused at once, the model stays
        f"/blend {ADAPTER}=0.5",
        "/system Answer in one word.",
        "Hello",
        f"/model {ADAPTER}*abc",  # a blend string the server refuses when it is used
        "Hello again",
        "/reset",
        "/frobnicate",
        "/help",
    ]  # the input ends without /quit: the end of input leaves too
    result = chat(server, lines, main_cli=True)
    assert result.returncode == 0, result.stderr
    out, err = result.stdout, result.stderr
    assert f"* {BASE_ID}  (base model)" in out and f"  {ADAPTER}  (adapter)" in out
    assert f"error: no model named no-such-model; available: {ADAPTER}, {BASE_ID}" in err
    assert f"now talking to the blend {ADAPTER}*0.5" in out and len(replies(out, f"{ADAPTER}*0.5")) == 1
    assert "system prompt set: Answer in one word." in out
    assert "weight `abc`" in err and "is not a number" in err  # the server's own message, one line
    assert (
        "conversation forgotten" in out
        and "unknown command /frobnicate" in out
        and "/blend a=0.7,b=0.3" in out
    )


def test_a_wrong_key_is_one_readable_line(server: RunningServer) -> None:
    result = chat(server, ["Hello"], key="wrong-key")
    assert result.returncode == 1
    hint = "(give the key with --api-key or HOTLORA_API_KEY)"
    assert result.stderr.strip() == f"error: Incorrect API key provided. {hint}"
