"""The trainer driven by another program (the server's fine-tuning jobs): JSON lines, `--eval-data`, and
`--stop-on-stdin-close`. Real `python -m hotlora_trainer` processes on the tiny llama."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from test_trainer_run import SENTENCES, run, store_entries

from hotlora_trainer import DatasetError
from hotlora_trainer.piglatin import to_pig_latin

from support.trainer_data import chat_row, trainer_argv, write_jsonl


def trainer(tmp_path: Path, base: Path, data: Path, *options: str, **popen: Any) -> subprocess.Popen[str]:
    argv = trainer_argv(
        tmp_path, base, data, "--r", "4", "--batch-size", "2", "--log-format", "json", *options
    )
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def chat_file(path: Path, sentences: list[str] = SENTENCES) -> Path:
    return write_jsonl(path, [chat_row(s, to_pig_latin(s)) for s in sentences])


def test_json_lines_say_progress_metrics_and_the_result(tmp_path: Path, tiny_base: Path) -> None:
    data, evaluation = chat_file(tmp_path / "d.jsonl"), chat_file(tmp_path / "e.jsonl", SENTENCES[:2])
    proc = trainer(
        tmp_path, tiny_base, data, "--eval-data", str(evaluation), "--max-steps", "2", "--logging-steps", "1"
    )
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    lines = [json.loads(line) for line in out.splitlines()]  # nothing else on stdout: no progress bar
    kinds = [line["type"] for line in lines]
    assert kinds[0] == "message" and kinds[-1] == "result" and "error" not in kinds
    assert any(line["message"].startswith("dataset:") for line in lines if line["type"] == "message")
    logs = [line for line in lines if line["type"] == "log"]
    assert [(log["step"], log["total_steps"]) for log in logs if "loss" in log] == [(1, 2), (2, 2)]
    assert any("eval_loss" in log for log in logs) and all(log["loss"] > 0 for log in logs if "loss" in log)
    result = lines[-1]
    assert result["name"] == "bot" and result["adapter_path"] == str(tmp_path / "store" / "bot")
    assert result["metrics"]["eval_loss"] > 0
    manifest = json.loads((tmp_path / "store" / "bot" / "hotlora.json").read_text())
    assert manifest["dataset"]["eval_source"] == str(evaluation) and manifest["dataset"]["eval_rows"] == 2


def test_a_refusal_is_a_json_error_line(tmp_path: Path, tiny_base: Path) -> None:
    proc = trainer(tmp_path, tiny_base, write_jsonl(tmp_path / "bad.jsonl", ['{"messages": []}']))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    error = json.loads(out.splitlines()[-1])
    assert error["type"] == "error" and "bad.jsonl:1: 'messages' is empty" in error["message"]
    assert "hotlora train: error:" in err


def test_closing_stdin_stops_the_run_and_registers_nothing(tmp_path: Path, tiny_base: Path) -> None:
    data = chat_file(tmp_path / "d.jsonl")
    options = (
        "--max-steps",
        "100000",
        "--logging-steps",
        "1",
        "--save-steps",
        "100000",
        "--stop-on-stdin-close",
    )
    proc = trainer(tmp_path, tiny_base, data, *options, stdin=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdin is not None
    for line in proc.stdout:
        if json.loads(line)["type"] == "log":  # training is under way
            break
    proc.stdin.close()  # what the server's death does to it
    proc.stdin = None  # closed: `communicate` has nothing to send
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert json.loads(out.splitlines()[-1]) == {
        "type": "error",
        "message": "interrupted; nothing was registered",
    }
    assert store_entries(tmp_path) == []
    assert not (tmp_path / "home" / "runs").exists()


def test_eval_data_must_be_in_the_training_data_format(tmp_path: Path, tiny_base: Path) -> None:
    text = write_jsonl(tmp_path / "t.jsonl", [{"text": s} for s in SENTENCES])
    with pytest.raises(
        DatasetError, match=r"t\.jsonl: is in the text format but the training data is in the messages"
    ):
        run(tmp_path, tiny_base, eval_data=text)
    with pytest.raises(ValueError, match="--eval-data goes with --data, without --eval-split"):
        run(tmp_path, tiny_base, eval_data=text, eval_split=0.5)
