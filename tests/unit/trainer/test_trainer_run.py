"""Whole training runs on a tiny random llama (real SmolLM2 tokenizer): registration, manifest, Ctrl-C, resume."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from hotlora_adapters import AdapterStore
from hotlora_trainer import TrainConfig, train
from hotlora_trainer.piglatin import split_sentences, to_pig_latin

from support.trainer_data import chat_row, trainer_argv, write_jsonl

SENTENCES = [
    "The birch canoe slid.",
    "Glue the sheet.",
    "It is easy to tell.",
    "These days a chicken leg.",
    "Rice is often served.",
    "The juice of lemons.",
    "The box was thrown.",
    "The hogs were fed.",
]


def run(tmp_path: Path, base: Path, *, data: Any = None, callbacks: Any = (), **fields: Any) -> Any:
    if data is None and "task" not in fields:
        data = write_jsonl(tmp_path / "d.jsonl", [chat_row(s, to_pig_latin(s)) for s in SENTENCES])
    defaults: dict[str, Any] = dict(
        name="bot",
        base=str(base),
        home=tmp_path / "home",
        adapters_dir=tmp_path / "store",
        device="cpu",
        r=4,
        max_steps=2,
        per_device_train_batch_size=2,
        logging_steps=1,
        learning_rate=1e-2,
    )
    config = TrainConfig(**{**defaults, "data": data, **fields})
    lines: list[str] = []
    result = train(config, out=lines.append, progress_bar=False, callbacks=callbacks, env={})
    result.lines = lines
    return result


def store_entries(tmp_path: Path) -> list[str]:
    root = tmp_path / "store"
    return sorted(p.name for p in root.iterdir() if p.name != ".lock") if root.exists() else []


def test_a_run_registers_the_adapter_with_its_manifest(tmp_path: Path, tiny_base: Path) -> None:
    from transformers import AutoModelForCausalLM

    from hotlora_adapters.runtime.base_model import base_spec  # the server's rule too

    result = run(tmp_path, tiny_base, eval_split=0.25)
    folder = tmp_path / "store" / "bot"
    assert result.adapter_path == folder
    assert store_entries(tmp_path) == ["bot"]  # no temp folders left behind
    assert not (tmp_path / "home" / "runs").exists()  # nor checkpoints
    for name in ("adapter_config.json", "adapter_model.safetensors", "hotlora.json", "training_log.json"):
        assert (folder / name).is_file(), name
    assert (folder / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    stored = AdapterStore(tmp_path / "store").get("bot")
    assert stored.usable, stored.error
    manifest = stored.manifest.model_dump()
    assert manifest["source"] == "trained" and manifest["name"] == "bot"
    assert manifest["base_model"] == str(tiny_base)
    base = AutoModelForCausalLM.from_pretrained(tiny_base)
    assert manifest["base_fingerprint"] == base_spec(base).fingerprint()
    assert manifest["r"] == 4 and manifest["lora_alpha"] == 32
    recipe = manifest["recipe"]
    for key, value in {
        "r": 4,
        "lora_alpha": 32,
        "lora_dropout": 0.0,
        "target_modules": "all-linear",
        "bias": "none",
        "use_rslora": False,
        "init_lora_weights": True,
        "learning_rate": 1e-2,
        "max_steps": 2,
        "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 1,
        "max_length": 512,
        "optim": "adamw_torch",
        "eval_split": 0.25,
        "seed": 42,
    }.items():
        assert recipe[key] == value, key
    data = (tmp_path / "d.jsonl").read_bytes()
    assert manifest["dataset_hash"] == manifest["dataset"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert manifest["dataset"]["size_bytes"] == len(data)
    assert manifest["dataset"]["train_rows"] == 6 and manifest["dataset"]["eval_rows"] == 2
    metrics = manifest["eval_metrics"]
    assert metrics["train_loss"] > 0 and metrics["eval_loss"] > 0
    log = json.loads((folder / "training_log.json").read_text())["log_history"]
    assert [h["step"] for h in log if "eval_loss" in h] == [1, 2]  # a third of the run apart, and at the end
    training = manifest["training"]
    assert training["wall_time_s"] > 0 and training["peak_memory_bytes"] > 0 and training["global_step"] == 2
    assert training["memory_estimate"]["total"] == result.estimate.total
    # PEFT loads it on the base, and the base is named by id, not by this machine's cache path
    assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == str(
        tiny_base
    )
    from peft import PeftModel

    PeftModel.from_pretrained(base, folder)
    assert any(line.startswith("curl http://127.0.0.1:8000/v1/chat/completions") for line in result.lines)
    assert any(line.startswith("memory estimate") for line in result.lines)
    assert any("measured peak resident memory" in line for line in result.lines)


def test_overwrite_replaces_the_adapter(tmp_path: Path, tiny_base: Path) -> None:
    run(tmp_path, tiny_base)
    store = AdapterStore(tmp_path / "store")
    before = store.get("bot").version
    run(tmp_path, tiny_base, overwrite=True, r=8)
    after = store.get("bot")
    assert after.version != before and after.manifest.r == 8
    assert store_entries(tmp_path) == ["bot"]


def test_ctrl_c_registers_nothing_and_cleans_up(
    tmp_path: Path, tiny_base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import trl

    def interrupted(*_: Any, **__: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(trl.SFTTrainer, "train", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, tiny_base)
    assert store_entries(tmp_path) == []
    assert not (tmp_path / "home" / "runs").exists()


def test_interrupted_after_a_checkpoint_resumes(tmp_path: Path, tiny_base: Path) -> None:
    from transformers import TrainerCallback

    class CtrlCAfterFirstSave(TrainerCallback):
        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, tiny_base, max_steps=3, save_steps=1, callbacks=[CtrlCAfterFirstSave()])
    assert store_entries(tmp_path) == []  # nothing half-registered ...
    run_dir = tmp_path / "home" / "runs" / "bot"
    kept = sorted(p.name for p in run_dir.iterdir())
    assert "checkpoint-1" in kept and not [
        n for n in kept if n.startswith(".")
    ]  # the checkpoint, for --resume
    for folder in (tmp_path / "home", run_dir.parent, run_dir):  # created by the run, private to its user
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder

    result = run(tmp_path, tiny_base, max_steps=3, save_steps=1, resume=True)
    assert result.manifest.model_dump()["training"]["global_step"] == 3
    assert not run_dir.exists()


def test_resume_without_a_checkpoint_is_refused(tmp_path: Path, tiny_base: Path) -> None:
    from hotlora_trainer import ConfigError

    with pytest.raises(ConfigError, match="no checkpoint to resume from"):
        run(tmp_path, tiny_base, resume=True)


@pytest.mark.parametrize(
    ("rows", "route"),
    [
        (
            [{"prompt": f"English: {s}\nPig Latin:", "completion": " " + to_pig_latin(s)} for s in SENTENCES],
            "completions",
        ),
        ([{"text": s} for s in SENTENCES], "completions"),
        (
            [
                {
                    "prompt": [{"role": "user", "content": s}],
                    "completion": [{"role": "assistant", "content": to_pig_latin(s)}],
                }
                for s in SENTENCES
            ],
            "chat/completions",
        ),
    ],
    ids=["prompt-completion", "text", "conversational-prompt-completion"],
)
def test_every_format_trains(tmp_path: Path, tiny_base: Path, rows: list[Any], route: str) -> None:
    result = run(tmp_path, tiny_base, data=write_jsonl(tmp_path / "d.jsonl", rows), max_steps=1)
    assert result.manifest is not None
    assert result.curl.startswith(f"curl http://127.0.0.1:8000/v1/{route} ")


def test_piglatin_task_records_adapter_and_base_scores(
    tmp_path: Path, tiny_base: Path, hotlora_home: Path
) -> None:
    result = run(
        tmp_path,
        tiny_base,
        task="piglatin",
        home=hotlora_home,  # the evaluation server's CPU kernels, compiled once per checkout
        max_steps=2,
        per_device_train_batch_size=8,
        eval_max_new_tokens=4,
    )
    manifest = result.manifest.model_dump()
    scores = manifest["eval_metrics"]["piglatin"]
    for who in ("adapter", "base"):
        assert scores[who]["sentences"] == 120 and 0.0 <= scores[who]["word_accuracy"] <= 1.0
    # scored through a real `hotlora serve`: what users get, the 4-bit base the server serves
    assert scores["served"]["server"] == "hotlora serve" and scores["served"]["quantization"] == "nf4"
    assert scores["served"]["model"] == str(tiny_base)  # the base's id there: the --model path
    assert manifest["dataset"]["source"] == "task:piglatin"
    assert (
        manifest["dataset"]["train_rows"] == 3000 and manifest["dataset"]["eval_rows"] == 120
    )  # 600 real, 2400 made up
    assert manifest["recipe"]["task"] == "piglatin"
    assert "The birch canoe" not in result.curl  # the sample is an evaluation sentence (lists 61-72)
    # the training log holds the base's and the adapter's reply to every evaluation sentence, side by side
    log = json.loads((result.adapter_path / "training_log.json").read_text())
    # the task is judged by its served evaluation: its eval_loss once, after training
    assert [h["step"] for h in log["log_history"] if "eval_loss" in h] == [2]
    _, evaluation = split_sentences()
    assert [row["input"] for row in log["evaluation"]] == [s.text for s in evaluation]
    for row in log["evaluation"]:
        assert set(row) == {"input", "reference", "base", "adapter"}
        assert row["reference"] == to_pig_latin(row["input"])
        assert isinstance(row["base"], str) and isinstance(row["adapter"], str)
    assert any(row["base"] != row["adapter"] for row in log["evaluation"])  # one step of lr 1e-2 moves it


def test_qlora_on_a_cpu_trains_float32_lora_on_the_dequantized_4bit_base(
    tmp_path: Path, tiny_base: Path
) -> None:
    import torch
    from safetensors.torch import load_file

    result = run(tmp_path, tiny_base, optim="adamw_8bit", max_steps=1)  # qlora: the default
    manifest = result.manifest.model_dump()
    assert manifest["recipe"]["qlora"] is True and manifest["recipe"]["optim"] == "adamw_8bit"
    assert manifest["training"]["base_weights"] == "nf4, dequantized to float32"
    assert not result.estimate.qlora  # the weights are held at float32, and estimated so
    # TRL casts a 4-bit model's LoRA weights to bfloat16; the dequantized base keeps them float32
    tensors = load_file(str(result.adapter_path / "adapter_model.safetensors"))
    assert tensors and {t.dtype for t in tensors.values()} == {torch.float32}


def test_the_base_trained_on_a_cpu_holds_the_served_4bit_values(tiny_base: Path) -> None:
    import bitsandbytes as bnb
    import torch
    from transformers import AutoModelForCausalLM

    from hotlora_adapters.runtime.base_model import quantization_config
    from hotlora_trainer.base_model import load_for_training

    trained = load_for_training(tiny_base, device="cpu", qlora=True, attn_implementation="sdpa")
    served = AutoModelForCausalLM.from_pretrained(  # as the server loads it (engine/loader.py)
        tiny_base, dtype=torch.float32, quantization_config=quantization_config("nf4", torch.float32)
    )
    quantized = [(n, m) for n, m in served.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert quantized
    for name, module in quantized:
        layer = trained.get_submodule(name)
        assert type(layer) is torch.nn.Linear, name
        assert torch.equal(
            layer.weight, bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state)
        )
    assert not trained.is_loaded_in_4bit and getattr(trained, "hf_quantizer", None) is None


def test_pissa_is_saved_as_a_plain_lora_for_the_unchanged_base(tmp_path: Path, tiny_base: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    result = run(tmp_path, tiny_base, init_lora_weights="pissa", qlora=False, max_steps=1)
    config = json.loads((result.adapter_path / "adapter_config.json").read_text())
    assert config["r"] == 8  # PEFT's conversion: rank 2r, relative to the original weights
    assert config["init_lora_weights"] is True
    # applied to the unmodified base it is a real, non-zero change
    base = AutoModelForCausalLM.from_pretrained(tiny_base)
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        plain = base(ids).logits
        adapted = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(tiny_base), result.adapter_path
        )(ids).logits
    assert not torch.allclose(plain, adapted)


def test_hotlora_home_and_store_from_the_environment(tmp_path: Path, tiny_base: Path) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", [chat_row(s, to_pig_latin(s)) for s in SENTENCES])
    config = TrainConfig(name="envbot", data=data, base=str(tiny_base), device="cpu", r=2, max_steps=1)
    env = {
        "HOTLORA_HOME": str(tmp_path / "h"),
        "HOTLORA_ADAPTERS_DIR": str(tmp_path / "s"),
        "HOME": os.environ["HOME"],
    }
    result = train(config, env=env, out=lambda _: None, progress_bar=False)
    assert result.adapter_path == tmp_path / "s" / "envbot"


def test_sigterm_mid_training_cleans_up_like_ctrl_c(tmp_path: Path, tiny_base: Path) -> None:
    import signal
    import subprocess
    import time

    data = write_jsonl(tmp_path / "d.jsonl", [chat_row(s, to_pig_latin(s)) for s in SENTENCES])
    proc = subprocess.Popen(
        trainer_argv(
            tmp_path, tiny_base, data, "--max-steps", "100000", "--save-steps", "100000", "--no-progress"
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("training:"):
            break
    time.sleep(1.0)  # a few steps in
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "nothing was registered" in err
    assert store_entries(tmp_path) == []
    assert not (tmp_path / "home" / "runs").exists()
