"""Settings.build precedence and the `hotlora` command line: flags > HOTLORA_* env > defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from hotlora_cli.main import build_parser, main
from hotlora_cli.settings_flags import settings_from
from hotlora_server.settings import Settings


def test_defaults(tmp_path: Path) -> None:
    settings = Settings.build({}, {"HOTLORA_HOME": str(tmp_path)})
    assert settings.model is None
    assert settings.quantize == "nf4"
    assert settings.host == "127.0.0.1"
    assert settings.port == 8000
    assert settings.api_key is None
    assert settings.max_n == 8
    assert settings.cpu_prefill == "bf16"
    assert settings.cpu_prefill_cache_gb == 1.0
    assert settings.enable_prefix_caching is True
    assert settings.cpu_kernels is True
    assert settings.cpu_4bit == "auto"
    assert settings.kv_cache_memory_bytes == 4 * 2**30
    assert settings.max_blend_rank == 256
    assert settings.home == tmp_path
    assert settings.models_dir == tmp_path / "models"
    assert settings.kernels_dir == tmp_path / "kernels"


def test_flag_beats_env_beats_default(tmp_path: Path) -> None:
    env = {"HOTLORA_HOME": str(tmp_path), "HOTLORA_PORT": "9001", "HOTLORA_QUANTIZE": "int8"}
    assert Settings.build({}, {"HOTLORA_HOME": str(tmp_path)}).port == 8000
    from_env = Settings.build({}, env)
    assert from_env.port == 9001 and from_env.quantize == "int8"
    from_flags = Settings.build({"port": 1234, "quantize": "none"}, env)
    assert from_flags.port == 1234 and from_flags.quantize == "none"


def test_none_flags_and_empty_env_mean_not_given(tmp_path: Path) -> None:
    settings = Settings.build(
        {"port": None, "api_key": None},
        {"HOTLORA_HOME": str(tmp_path), "HOTLORA_PORT": "", "HOTLORA_API_KEY": "from-env"},
    )
    assert settings.port == 8000
    assert settings.api_key == "from-env"


def test_adapters_dir_defaults_to_home_adapters(tmp_path: Path) -> None:
    assert Settings.build({}, {"HOTLORA_HOME": str(tmp_path)}).adapters_dir == tmp_path / "adapters"
    flag_home = tmp_path / "flag-home"
    assert (
        Settings.build({"home": str(flag_home)}, {"HOTLORA_HOME": str(tmp_path)}).adapters_dir
        == flag_home / "adapters"
    )


def test_home_defaults_under_the_user_home(tmp_path: Path) -> None:
    settings = Settings.build({}, {"HOME": str(tmp_path)})
    assert settings.home == tmp_path / ".local/share/hotlora"
    assert settings.adapters_dir == tmp_path / ".local/share/hotlora/adapters"


def test_adapters_dir_env_and_flag(tmp_path: Path) -> None:
    env = {"HOTLORA_HOME": str(tmp_path), "HOTLORA_ADAPTERS_DIR": str(tmp_path / "env-store")}
    assert Settings.build({}, env).adapters_dir == tmp_path / "env-store"
    assert (
        Settings.build({"adapters_dir": str(tmp_path / "flag-store")}, env).adapters_dir
        == tmp_path / "flag-store"
    )


def test_settings_are_frozen(tmp_path: Path) -> None:
    settings = Settings.build({}, {"HOTLORA_HOME": str(tmp_path)})
    with pytest.raises(Exception):  # noqa: B017, PT011 - pydantic's frozen-instance error
        settings.port = 1  # type: ignore[misc]


def test_parser_serve_flags() -> None:
    args = build_parser().parse_args(
        [
            "serve",
            "--model",
            "x",
            "--quantize",
            "none",
            "--port",
            "1",
            "--api-key",
            "k",
            "--adapters-dir",
            "d",
            "--served-model-name",
            "n",
            "--max-n",
            "3",
            "--cpu-prefill",
            "4bit",
        ]
    )
    assert args.command == "serve"
    assert args.cpu_prefill == "4bit"
    assert args.model == "x"
    assert args.quantize == "none"
    assert args.port == 1
    assert args.api_key == "k"
    assert args.adapters_dir == "d"
    assert args.served_model_name == "n"
    assert args.max_n == 3
    assert args.host is None  # not given: the env or the default decides


def test_parsed_flags_become_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOTLORA_HOME", str(tmp_path))
    monkeypatch.setenv("HOTLORA_PORT", "9999")
    monkeypatch.setenv("HOTLORA_HOST", "0.0.0.0")
    args = build_parser().parse_args(
        [
            "serve",
            "--model",
            "x",
            "--quantize",
            "none",
            "--port",
            "1",
            "--api-key",
            "k",
            "--adapters-dir",
            str(tmp_path / "d"),
            "--served-model-name",
            "n",
            "--max-n",
            "3",
            "--cpu-prefill",
            "4bit",
            "--no-enable-prefix-caching",
            "--cpu-prefill-cache-gb",
            "0.5",
            "--no-cpu-kernels",
            "--cpu-4bit",
            "hotlora",
            "--kv-cache-memory-bytes",
            "1.5GiB",
            "--max-blend-rank",
            "64",
            "--no-batch-invariant",
        ]
    )
    settings = settings_from(args)
    assert settings.kv_cache_memory_bytes == 3 * 2**29
    assert settings.max_blend_rank == 64
    assert settings.cpu_kernels is False
    assert settings.batch_invariant is False
    assert settings.cpu_4bit == "hotlora"
    assert settings.cpu_prefill == "4bit"
    assert settings.cpu_prefill_cache_gb == 0.5
    assert settings.enable_prefix_caching is False
    assert settings.model == "x"
    assert settings.quantize == "none"
    assert settings.port == 1  # the flag beats HOTLORA_PORT
    assert settings.host == "0.0.0.0"  # the env beats the default
    assert settings.api_key == "k"
    assert settings.adapters_dir == tmp_path / "d"
    assert settings.served_model_name == "n"
    assert settings.max_n == 3
    assert settings.home == tmp_path


@pytest.mark.parametrize(("value", "size"), [("123456", 123456), ("500MB", 500 * 10**6), ("8GiB", 8 * 2**30)])
def test_kv_cache_memory_bytes_reads_a_size_with_or_without_a_unit(
    tmp_path: Path, value: str, size: int
) -> None:
    env = {"HOTLORA_HOME": str(tmp_path), "HOTLORA_KV_CACHE_MEMORY_BYTES": value}
    assert Settings.build({}, env).kv_cache_memory_bytes == size


def test_parser_fetch() -> None:
    args = build_parser().parse_args(["fetch", "--model", "m", "--quantize", "nf4"])
    assert args.command == "fetch" and args.model == "m"


def test_parser_rejects_bad_choices(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["serve", "--quantize", "q3"])
    assert exc.value.code == 2
    assert "--quantize" in capsys.readouterr().err


def test_parser_requires_a_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args([])


@pytest.mark.parametrize(
    ("variable", "value", "field"),
    [
        ("HOTLORA_PORT", "abc", "port"),
        ("HOTLORA_PORT", "70000", "port"),
        ("HOTLORA_QUANTIZE", "q3", "quantize"),
        ("HOTLORA_MAX_N", "0", "max_n"),
        ("HOTLORA_DEVICE", "tpu", "device"),
        ("HOTLORA_KV_CACHE_MEMORY_BYTES", "lots", "kv_cache_memory_bytes"),
        ("HOTLORA_KV_CACHE_MEMORY_BYTES", "0", "kv_cache_memory_bytes"),
        ("HOTLORA_MAX_BLEND_RANK", "0", "max_blend_rank"),
    ],
)
def test_invalid_env_exits_with_a_clear_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str, value: str, field: str
) -> None:
    monkeypatch.setenv("HOTLORA_HOME", str(tmp_path))
    monkeypatch.setenv(variable, value)
    with pytest.raises(SystemExit) as exc:
        main(["serve"])
    message = exc.value.code
    assert isinstance(message, str), "SystemExit must carry the message, not a status"
    assert message.startswith("hotlora: invalid settings")
    assert field in message
    assert "Traceback" not in message


def test_invalid_flag_value_exits_with_a_clear_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOTLORA_HOME", str(tmp_path))
    with pytest.raises(SystemExit) as exc:
        main(["serve", "--max-n", "0"])
    assert isinstance(exc.value.code, str) and "max_n" in exc.value.code


def test_fetch_reports_a_missing_model_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HOTLORA_HOME", str(tmp_path))
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    assert main(["fetch", "--model", str(empty)]) == 1
    assert "config.json" in capsys.readouterr().err


# -- CORS and the sampling defaults ---------------------------------------------------------------------


def test_cors_and_generation_config_defaults(tmp_path: Path) -> None:
    settings = Settings.build({}, {"HOTLORA_HOME": str(tmp_path)})
    assert settings.allowed_origins == ()  # CORS off
    assert settings.allowed_methods == ("*",) and settings.allowed_headers == ("*",)
    assert settings.generation_config == "auto"
    assert settings.override_generation_config.given() == {}


def test_cors_flags_take_lists_repeated_or_as_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOTLORA_HOME", str(tmp_path))
    args = build_parser().parse_args(
        [
            "serve",
            "--allowed-origins",
            "https://App.example/,http://localhost:3000",
            "--allowed-origins",
            '["https://b.example"]',
            "--allowed-methods",
            "GET,POST",
            "--allowed-headers",
            "Authorization",
            "--allowed-headers",
            "Content-Type",
        ]
    )
    settings = settings_from(args)
    assert settings.allowed_origins == ("https://app.example", "http://localhost:3000", "https://b.example")
    assert settings.allowed_methods == ("GET", "POST")
    assert settings.allowed_headers == ("Authorization", "Content-Type")
    env = {"HOTLORA_HOME": str(tmp_path), "HOTLORA_ALLOWED_ORIGINS": "*"}
    assert Settings.build({}, env).allowed_origins == ("*",)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("allowed_origins", "app.example"),
        ("allowed_origins", "https://a.example/path"),
        ("allowed_origins", "[1]"),
        ("allowed_origins", "[not json"),
        ("allowed_methods", "GET POST"),
        ("allowed_headers", "X:Y"),
    ],
)
def test_invalid_cors_entries_are_refused(tmp_path: Path, field: str, value: str) -> None:
    with pytest.raises(ValueError, match=field):
        Settings.build({field: [value]}, {"HOTLORA_HOME": str(tmp_path)})


def test_generation_config_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOTLORA_HOME", str(tmp_path))
    args = build_parser().parse_args(
        [
            "serve",
            "--generation-config",
            "vllm",
            "--override-generation-config",
            '{"temperature": 0.5, "top_k": 40, "repetition_penalty": 1.1, "max_new_tokens": 64}',
        ]
    )
    settings = settings_from(args)
    assert settings.generation_config == "vllm"
    assert settings.override_generation_config.given() == {
        "temperature": 0.5,
        "top_k": 40,
        "repetition_penalty": 1.1,
        "max_new_tokens": 64,
    }
    env = {"HOTLORA_HOME": str(tmp_path), "HOTLORA_OVERRIDE_GENERATION_CONFIG": '{"min_p": 0.05}'}
    assert Settings.build({}, env).override_generation_config.given() == {"min_p": 0.05}


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("{temperature: 1}", "not valid JSON"),
        ("[1]", "JSON object"),
        ('{"temprature": 0.5}', "temprature"),
        ('{"temperature": 3}', "less than or equal to 2"),
        ('{"top_k": 1.5}', "top_k"),
        ('{"repetition_penalty": 0}', "greater than 0"),
    ],
)
def test_an_invalid_generation_config_override_is_refused(tmp_path: Path, value: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        Settings.build({"override_generation_config": value}, {"HOTLORA_HOME": str(tmp_path)})


def test_tool_call_parser_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOTLORA_HOME", str(tmp_path))
    assert Settings.build({}, {"HOTLORA_HOME": str(tmp_path)}).tool_call_parser == "hermes"
    assert (
        settings_from(build_parser().parse_args(["serve", "--tool-call-parser", "hermes"])).tool_call_parser
        == "hermes"
    )
    with pytest.raises(SystemExit, match="tool_call_parser: no tool-call parser named 'mistral'.*hermes"):
        settings_from(build_parser().parse_args(["serve", "--tool-call-parser", "mistral"]))


def test_fine_tuning_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOTLORA_HOME", str(tmp_path))
    defaults = settings_from(build_parser().parse_args(["serve"]))
    assert defaults.fine_tuning is True and defaults.max_concurrent_jobs == 1
    assert defaults.fine_tuning_threads is None and defaults.max_file_bytes == 64 * 2**20
    assert defaults.fine_tuning_dir == tmp_path / "fine_tuning"
    argv = ["serve", "--no-fine-tuning", "--max-concurrent-jobs", "2", "--fine-tuning-threads", "3"]
    settings = settings_from(build_parser().parse_args([*argv, "--max-file-bytes", "1MiB"]))
    assert settings.fine_tuning is False and settings.max_concurrent_jobs == 2
    assert settings.fine_tuning_threads == 3 and settings.max_file_bytes == 2**20
    monkeypatch.setenv("HOTLORA_FINE_TUNING", "false")
    assert settings_from(build_parser().parse_args(["serve"])).fine_tuning is False
    with pytest.raises(SystemExit, match="max_concurrent_jobs"):
        settings_from(build_parser().parse_args(["serve", "--max-concurrent-jobs", "0"]))
