"""`TrainConfig` and the command line, and every refusal that must come before any training step."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

import hotlora_trainer.fit as fit_module
import hotlora_trainer.preflight as preflight_module
from hotlora_trainer import BaseModelError, ConfigError, DatasetError, MemoryEstimateError, TrainConfig, train
from hotlora_trainer.cli import build_parser, config_from_args

from support.trainer_data import chat_row, write_jsonl


def test_cli_options_map_to_peft_and_trl_names() -> None:
    args = build_parser().parse_args(
        [
            "--data",
            "d.jsonl",
            "--name",
            "bot",
            "--r",
            "8",
            "--lora-alpha",
            "16",
            "--lora-dropout",
            "0.1",
            "--target-modules",
            "q_proj",
            "v_proj",
            "--bias",
            "lora_only",
            "--use-rslora",
            "--init-lora-weights",
            "gaussian",
            "--modules-to-save",
            "lm_head",
            "--epochs",
            "2",
            "--learning-rate",
            "1e-3",
            "--batch-size",
            "4",
            "--grad-accum",
            "2",
            "--max-seq-length",
            "64",
            "--packing",
            "--optim",
            "adamw_8bit",
            "--gradient-checkpointing",
            "--eval-split",
            "0.1",
            "--seed",
            "7",
            "--overwrite",
        ]
    )
    config = config_from_args(args)
    assert config.lora_kwargs() == {
        "r": 8,
        "lora_alpha": 16,
        "lora_dropout": 0.1,
        "target_modules": ["q_proj", "v_proj"],
        "bias": "lora_only",
        "use_rslora": True,
        "init_lora_weights": "gaussian",
        "modules_to_save": ["lm_head"],
    }
    sft = config.sft_kwargs()
    assert (sft["num_train_epochs"], sft["learning_rate"], sft["per_device_train_batch_size"]) == (
        2.0,
        1e-3,
        4,
    )
    assert (sft["gradient_accumulation_steps"], sft["max_length"], sft["packing"]) == (2, 64, True)
    assert (sft["optim"], sft["gradient_checkpointing"], sft["seed"]) == ("adamw_8bit", True, 7)
    assert config.eval_split == 0.1 and config.overwrite

    # the SFTConfig accepts every name as given
    from trl import SFTConfig

    sft["activation_checkpointing"] = sft.pop("gradient_checkpointing")  # transformers 5's name for it
    SFTConfig(output_dir="unused", use_cpu=True, bf16=False, **sft)


def test_defaults() -> None:
    config = TrainConfig(name="x", data=Path("d.jsonl"))
    assert config.target_modules == "all-linear"
    assert config.init_lora_weights is True
    assert config.recipe()["qlora"] is True  # the served base: 4-bit NF4
    assert config.recipe()["load_in_4bit"] and config.recipe()["bnb_4bit_quant_type"] == "nf4"
    assert "load_in_4bit" not in TrainConfig(name="x", data=Path("d"), qlora=False).recipe()
    assert TrainConfig(name="x", data=Path("d"), init_lora_weights="default").init_lora_weights is True
    assert TrainConfig(name="x", data=Path("d"), target_modules="q_proj,v_proj").target_modules == [
        "q_proj",
        "v_proj",
    ]
    assert TrainConfig(name="x", data=Path("d"), target_modules=["all-linear"]).target_modules == "all-linear"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"name": "Bad Name!", "data": "d"}, "name"),
        ({"name": "x"}, "exactly one of --data"),
        ({"name": "x", "data": "d", "task": "piglatin"}, "exactly one of --data"),
        ({"name": "x", "data": "d", "lora_dropout": 1.5}, "lora_dropout"),
        ({"name": "x", "data": "d", "init_lora_weights": "loftq"}, "one unmodified base"),
        ({"name": "x", "data": "d", "init_lora_weights": "pissa"}, "add --no-qlora"),
        ({"name": "x", "data": "d", "server": "localhost:8000"}, r"http\(s\) URL"),
        ({"name": "x", "data": "d", "optim": "sgd"}, "optim"),
    ],
)
def test_invalid_configs(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        TrainConfig(**fields)


def test_cli_reports_invalid_options_by_flag() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "hotlora_trainer", "--data", "d.jsonl", "--name", "x", "--batch-size", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "--batch-size" in result.stderr and "greater than or equal to 1" in result.stderr


def test_hotlora_train_is_the_trainers_command(tmp_path: Path) -> None:
    hotlora = Path(sys.executable).parent / "hotlora"
    cmd = [str(hotlora)] if hotlora.is_file() else [sys.executable, "-m", "hotlora_cli"]
    help_text = subprocess.run([*cmd, "train", "--help"], capture_output=True, text=True, timeout=120)
    assert help_text.returncode == 0 and "--lora-alpha" in help_text.stdout
    failed = subprocess.run(
        [
            *cmd,
            "train",
            "--data",
            str(tmp_path / "missing.jsonl"),
            "--name",
            "x",
            "--adapters-dir",
            str(tmp_path / "store"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert failed.returncode == 1
    assert "missing.jsonl: no such file" in failed.stderr


# -- refusals before any training step ---------------------------------------------------------------


@pytest.fixture
def no_weights_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the run gets as far as loading model weights."""

    def refuse(*_: Any, **__: Any) -> None:
        raise AssertionError("model weights were loaded before the refusal")

    monkeypatch.setattr(fit_module, "load_for_training", refuse)


def config(tmp_path: Path, base: Path, **fields: Any) -> TrainConfig:
    data = fields.pop("data", None) or write_jsonl(tmp_path / "d.jsonl", [chat_row("Hi", "Hello")] * 4)
    return TrainConfig(
        name=fields.pop("name", "bot"),
        data=data,
        base=str(base),
        home=tmp_path / "home",
        adapters_dir=tmp_path / "store",
        device="cpu",
        **fields,
    )


def test_a_taken_name_is_refused_without_overwrite(
    tmp_path: Path, tiny_base: Path, no_weights_loaded: None
) -> None:
    (tmp_path / "store" / "bot").mkdir(parents=True)
    (tmp_path / "store" / "bot" / "adapter_config.json").write_text("{}")
    with pytest.raises(ConfigError, match="already exists.*--overwrite"):
        train(config(tmp_path, tiny_base), out=lambda _: None)


def test_a_malformed_file_is_refused_before_any_model_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_base: Path
) -> None:
    def refuse(*_: Any, **__: Any) -> None:
        raise AssertionError("the base was resolved before the data was checked")

    monkeypatch.setattr(preflight_module, "resolve_base", refuse)
    bad = write_jsonl(tmp_path / "bad.jsonl", [chat_row("a", "b"), {"messages": []}])
    with pytest.raises(DatasetError, match=r"bad.jsonl:2: 'messages' is empty"):
        train(config(tmp_path, tiny_base, data=bad), out=lambda _: None)


def test_an_unknown_base_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_weights_loaded: None
) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(
        huggingface_hub.constants, "HF_HUB_OFFLINE", True
    )  # read at import: patch the constant
    with pytest.raises(BaseModelError, match="unknown base 'no-such-org/no-such-model'.*--base"):
        train(config(tmp_path, Path("no-such-org/no-such-model")), out=lambda _: None)
    with pytest.raises(BaseModelError, match="no such model folder"):
        train(config(tmp_path, tmp_path / "nowhere"), out=lambda _: None)


def test_a_target_module_the_base_lacks_is_refused(
    tmp_path: Path, tiny_base: Path, no_weights_loaded: None
) -> None:
    with pytest.raises(ConfigError) as info:
        train(config(tmp_path, tiny_base, target_modules=["q_proj", "qkv_proj"]), out=lambda _: None)
    message = str(info.value)
    assert "'qkv_proj'" in message and "'q_proj'" not in message
    assert "q_proj, up_proj, v_proj" in message  # what it does have
    with pytest.raises(ConfigError, match="--modules-to-save.*'score'"):
        train(config(tmp_path, tiny_base, modules_to_save=["score"]), out=lambda _: None)


def test_an_estimate_that_cannot_fit_is_refused(
    tmp_path: Path, tiny_base: Path, no_weights_loaded: None
) -> None:
    printed: list[str] = []
    with pytest.raises(MemoryEstimateError) as info:
        train(
            config(tmp_path, tiny_base, packing=True, max_length=8192, per_device_train_batch_size=4096),
            out=printed.append,
        )
    assert "does not fit" in str(info.value) and "--batch-size" in str(info.value)
    assert "--gradient-checkpointing" in str(info.value)
    assert any("memory estimate" in line for line in printed)  # printed first, then refused


def test_estimate_only_stops_there(tmp_path: Path, tiny_base: Path, no_weights_loaded: None) -> None:
    printed: list[str] = []
    result = train(config(tmp_path, tiny_base, estimate_only=True), out=printed.append)
    assert result.adapter_path is None and result.estimate.total > 0
    assert "activations" in "\n".join(printed)
    assert not (tmp_path / "store").exists()


def test_server_without_the_client_sdk_is_refused_before_training(
    tmp_path: Path, tiny_base: Path, monkeypatch: pytest.MonkeyPatch, no_weights_loaded: None
) -> None:
    import importlib.util

    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        return None if name == "hotlora_client" else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(ConfigError, match="--server needs the hotlora client SDK"):
        train(config(tmp_path, tiny_base, server="http://127.0.0.1:9"), out=lambda _: None)


def test_a_flag_prefix_is_refused_not_taken_for_another_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):  # `--lr` is a prefix of --lr-scheduler-type, not --learning-rate
        build_parser().parse_args(["--name", "bot", "--lr", "1e-2"])
    assert "unrecognized arguments: --lr 1e-2" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("device", "flag", "expected"),
    [("cuda", None, True), ("cuda", False, False), ("cpu", False, False), ("cpu", True, True)],
)
def test_bf16_autocast_follows_the_flag_else_the_device(
    device: str, flag: bool | None, expected: bool
) -> None:
    from hotlora_trainer.base_model import bf16_autocast

    assert bf16_autocast(device, flag) is expected


def test_bf16_flag_reaches_the_config() -> None:
    parse = build_parser().parse_args
    assert config_from_args(parse(["--data", "d.jsonl", "--name", "bot"])).bf16 is None  # by the device
    assert config_from_args(parse(["--data", "d.jsonl", "--name", "bot", "--no-bf16"])).bf16 is False
    assert config_from_args(parse(["--data", "d.jsonl", "--name", "bot", "--bf16"])).bf16 is True
