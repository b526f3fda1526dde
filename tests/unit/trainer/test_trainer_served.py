"""The evaluation server's process: what it is told and given, and a clear error when it does not start.

A whole task run through a real `hotlora serve` is `test_trainer_run.py`'s piglatin test; these start a
stand-in process in its place (a real subprocess, just not a server) to reach the failure paths quickly.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from hotlora_trainer.served import ServedEvalError, eval_server, serve_command


def test_a_server_that_exits_is_an_error_with_its_log(tmp_path: Path) -> None:
    command = [sys.executable, "-c", "import sys; print('cannot load the model'); sys.exit(3)"]
    with pytest.raises(ServedEvalError) as caught, eval_server(command, tmp_path / "server.log"):
        pass
    assert "exited with status 3" in str(caught.value)
    assert "cannot load the model" in str(caught.value)


def test_the_server_gets_a_key_of_its_own_and_none_of_the_callers_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOTLORA_API_KEY", "the-users-key")
    monkeypatch.setenv("HOTLORA_MAX_NUM_SEQS", "1")
    show = "import os; print({k: v for k, v in os.environ.items() if k.startswith('HOTLORA_')})"
    with (
        pytest.raises(ServedEvalError) as caught,
        eval_server([sys.executable, "-c", show], tmp_path / "log"),
    ):
        pass
    shown = str(caught.value)
    assert "HOTLORA_API_KEY" in shown and "the-users-key" not in shown
    assert "HOTLORA_MAX_NUM_SEQS" not in shown


def test_the_command_serves_the_runs_base_as_users_get_it(tmp_path: Path) -> None:
    """`hotlora serve`'s own parser takes it: the flags exist and mean what the evaluation needs."""
    from hotlora_cli.main import build_parser

    command = serve_command(
        base="/models/my-base",
        home=tmp_path / "home",
        store=tmp_path / "store",
        device="cpu",
        max_lora_rank=128,
        chat_template="chatml",
    )
    assert command[:4] == [sys.executable, "-m", "hotlora_cli", "serve"]
    args = vars(build_parser().parse_args([*command[3:], "--port", "8123"]))
    assert args["model"] == "/models/my-base" and args["quantize"] == "nf4"
    assert Path(args["adapters_dir"]) == tmp_path / "store" and Path(args["home"]) == tmp_path / "home"
    assert args["max_lora_rank"] == 128 and args["chat_template"] == "chatml"
    assert args["host"] == "127.0.0.1" and args["fine_tuning"] is False
    # without --base, the server's default: the embedded model, as the trainer's
    without = serve_command(
        base=None, home=tmp_path, store=tmp_path, device="cpu", max_lora_rank=64, chat_template=None
    )
    assert vars(build_parser().parse_args([*without[3:], "--port", "8123"]))["model"] is None
