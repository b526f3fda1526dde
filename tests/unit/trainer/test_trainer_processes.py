"""Training across processes: `accelerate launch --multi_gpu --num_processes 2` (torchrun under it, DDP over
gloo) on the CPU with the tiny llama. Rank 0 alone registers; two processes of batch 2 train what one
process of batch 4 trains; an interrupted launch registers nothing."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file
from test_trainer_run import SENTENCES, run, store_entries

from hotlora_trainer.piglatin import to_pig_latin

from support.trainer_data import chat_row, write_jsonl


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(tmp_path: Path, base: Path, *options: str) -> subprocess.Popen[str]:
    """The trainer on two CPU processes, as the docs show the multi-GPU command."""
    tmp_path.mkdir(exist_ok=True)
    data = write_jsonl(tmp_path / "d.jsonl", [chat_row(s, to_pig_latin(s)) for s in SENTENCES])
    argv = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    argv += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    argv += ["--main_process_port", str(_free_port()), "-m", "hotlora_trainer"]
    argv += ["--data", str(data), "--name", "bot", "--base", str(base), "--device", "cpu"]
    argv += ["--home", str(tmp_path / "home"), "--adapters-dir", str(tmp_path / "store")]
    argv += ["--r", "4", "--batch-size", "2", "--learning-rate", "1e-2", "--seed", "3", "--no-progress"]
    argv += ["--no-bf16"]  # float32 on any CPU: bf16's rounding would differ between the two batchings
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.Popen(
        [*argv, *options], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def test_two_processes_train_what_one_process_trains_and_rank_zero_registers(
    tmp_path: Path, tiny_base: Path
) -> None:
    proc = launch(tmp_path / "two", tiny_base, "--max-steps", "4")
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert "batch 2 x 1 accumulation x 2 processes" in out
    assert out.count("registered 'bot'") == 1  # rank 1 trains and says nothing
    assert store_entries(tmp_path / "two") == ["bot"]
    assert not (tmp_path / "two" / "home" / "runs").exists()

    # one process over the same 4 rows a step: DDP averages the two halves' gradients into the same step
    (tmp_path / "one").mkdir()
    run(tmp_path / "one", tiny_base, per_device_train_batch_size=4, max_steps=4, seed=3, bf16=False)
    two = load_file(tmp_path / "two" / "store" / "bot" / "adapter_model.safetensors")
    one = load_file(tmp_path / "one" / "store" / "bot" / "adapter_model.safetensors")
    assert two.keys() == one.keys()
    for key in one:
        torch.testing.assert_close(
            two[key], one[key], atol=5e-4, rtol=1e-3, msg=lambda m, key=key: f"{key}: {m}"
        )


def test_an_interrupted_launch_registers_nothing(tmp_path: Path, tiny_base: Path) -> None:
    proc = launch(tmp_path, tiny_base, "--max-steps", "100000", "--save-steps", "100000")
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("training:"):
            break
    proc.send_signal(signal.SIGTERM)  # torchrun passes it on to both processes
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "nothing was registered" in err
    assert store_entries(tmp_path) == []
    assert not (tmp_path / "home" / "runs").exists()
