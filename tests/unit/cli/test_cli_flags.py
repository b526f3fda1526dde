"""`hotlora serve`'s flags are the fields of `Settings`: names kept, help and defaults read from the model."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import get_args

import pytest

from hotlora_adapters.runtime.placement import Device, DType, Quantize
from hotlora_cli.fetch import MODEL_FIELDS
from hotlora_cli.main import build_parser
from hotlora_cli.settings_flags import settings_from
from hotlora_server.settings import MergePolicy, Settings

REPO = Path(__file__).resolve().parents[3]

# The flags users and scripts already pass: a field renamed would rename its flag, so they are pinned here.
SERVE_FLAGS = set(
    """
--model --served-model-name --chat-template --tool-call-parser --quantize --device --dtype --host --port --api-key
--allowed-hosts --insecure-no-api-key --allowed-origins --allowed-methods --allowed-headers --home
--adapters-dir --allow-adapter-dir --max-loaded-adapters --max-lora-rank --max-blend-rank
--merge-policy --max-n --max-num-seqs --max-num-batched-tokens --kv-cache-memory-bytes --cpu-prefill
--cpu-prefill-cache-gb --cpu-kernels --no-cpu-kernels --batch-invariant --no-batch-invariant --cpu-4bit
--enable-prefix-caching --no-enable-prefix-caching --max-queue --max-model-len --generation-config
--override-generation-config --max-body-bytes --metrics-public --shutdown-timeout --log-level
--log-format
""".split()
)


def options(command: str) -> dict[str, argparse.Action]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {flag: action for action in sub.choices[command]._actions for flag in action.option_strings}


def help_of(flag: str) -> str:
    return options("serve")[flag].help % {}  # argparse's own %-formatting


def test_every_setting_is_a_serve_flag_with_help() -> None:
    serve = options("serve")
    for name, field in Settings.model_fields.items():
        assert field.description, f"Settings.{name} needs a description: it is the help of its flag"
        assert serve[f"--{name.replace('_', '-')}"].dest == name
    assert not {a.dest for a in serve.values()} - set(Settings.model_fields) - {"help"}


def test_the_flags_users_know_are_all_there() -> None:
    missing = SERVE_FLAGS - set(options("serve"))
    assert not missing, f"flags gone from `hotlora serve`: {sorted(missing)}"
    assert {f"--{name}" for name in MODEL_FIELDS} == set(options("fetch")) - {"-h", "--help"}


def test_choices_are_the_settings_literals() -> None:
    serve = options("serve")
    assert tuple(serve["--device"].choices) == get_args(Device)
    assert tuple(serve["--dtype"].choices) == get_args(DType)
    assert tuple(serve["--quantize"].choices) == get_args(Quantize)
    assert tuple(serve["--merge-policy"].choices) == get_args(MergePolicy)
    assert tuple(options("fetch")["--device"].choices) == get_args(Device)


def test_help_shows_the_models_defaults_and_bounds() -> None:
    assert help_of("--port").endswith("(default 8000, at most 65535)")
    assert help_of("--quantize").endswith("(default nf4)")
    assert help_of("--kv-cache-memory-bytes").endswith("(default 4GiB)")
    assert help_of("--max-body-bytes").endswith("(default 16MiB)")
    assert help_of("--cpu-prefill-cache-gb").endswith("(default 1)")
    assert help_of("--max-lora-rank").endswith("(default 64, at most 512)")
    assert help_of("--allowed-methods").endswith("(default *)")
    assert help_of("--enable-prefix-caching").endswith("(default on)")
    # where "not given" has a meaning of its own, the description says it and no default is made up
    assert "(default" not in help_of("--metrics-public") + help_of("--batch-invariant")
    assert help_of("--model").endswith("(default: the embedded SmolLM2-135M-Instruct)")
    assert "temperature, top_p, top_k, min_p, repetition_penalty, max_new_tokens" in help_of(
        "--override-generation-config"
    )


def test_bool_flags_turn_either_way_unless_off_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    serve = options("serve")
    assert "--no-metrics-public" not in serve and "--no-insecure-no-api-key" not in serve
    monkeypatch.setenv("HOTLORA_HOME", str(tmp_path))
    monkeypatch.setenv("HOTLORA_ENABLE_PREFIX_CACHING", "false")
    monkeypatch.setenv("HOTLORA_CPU_KERNELS", "false")
    parse = build_parser().parse_args
    from_env = settings_from(parse(["serve"]))
    assert from_env.enable_prefix_caching is False and from_env.cpu_kernels is False
    assert from_env.batch_invariant is None and from_env.metrics_public is False
    flagged = settings_from(
        parse(["serve", "--enable-prefix-caching", "--batch-invariant", "--metrics-public"])
    )
    assert flagged.enable_prefix_caching is True and flagged.cpu_kernels is False  # the flag beats the env
    assert flagged.batch_invariant is True and flagged.metrics_public is True


def test_repeatable_flags_and_sizes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOTLORA_HOME", str(tmp_path))
    args = build_parser().parse_args(
        ["serve", "--allow-adapter-dir", "/a", "--allow-adapter-dir", "/b", "--max-body-bytes", "1MiB"]
    )
    settings = settings_from(args)
    assert settings.allow_adapter_dir == (Path("/a"), Path("/b"))
    assert settings.max_body_bytes == 2**20
    monkeypatch.setenv("HOTLORA_MAX_BODY_BYTES", "4096")
    assert settings_from(build_parser().parse_args(["serve"])).max_body_bytes == 4096
    with pytest.raises(SystemExit, match="max_body_bytes"):
        settings_from(build_parser().parse_args(["serve", "--max-body-bytes", "100"]))


def test_every_serve_flag_is_documented() -> None:
    documented = set(re.findall(r"`(--[a-z0-9-]+)`", (REPO / "docs" / "configuration.md").read_text()))
    flags = {flag for flag in options("serve") if flag.startswith("--") and flag != "--help"}
    missing = {f for f in flags if f not in documented and f.replace("--no-", "--", 1) not in documented}
    assert not missing, f"add {sorted(missing)} to the `hotlora serve` table of docs/configuration.md"


def test_a_flag_prefix_is_a_typo_not_that_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--max-lora", "4"])  # not --max-lora-rank or --max-loras
    assert "unrecognized arguments: --max-lora 4" in capsys.readouterr().err
