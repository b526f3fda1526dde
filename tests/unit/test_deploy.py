"""deploy/compose.yaml, the fleet of docs/scale-out.md: hotlora's command is one `hotlora serve` accepts,
and every vLLM server it names is started so that hotlora can drive it (runtime LoRA loading, the same
base under the same name, LoRAs as large as hotlora allows, the store at the path hotlora gives)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from hotlora_cli.main import build_parser
from hotlora_cli.serve import serve_settings
from hotlora_server.settings import Settings

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "deploy" / "compose.yaml"
VARIABLE = re.compile(r"\$\{(\w+)(?::([-?])([^}]*))?\}")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's `${VAR}`, `${VAR:-default}` and `${VAR:?error}` over `env`."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        name, kind, rest = match.groups()
        if env.get(name):
            return env[name]
        if kind == "?":
            raise KeyError(f"{name}: {rest}")
        return rest if kind == "-" else ""

    return VARIABLE.sub(one, value)


def flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


@pytest.fixture
def compose(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, Any]:
    monkeypatch.setenv("HOTLORA_API_KEY", "k" * 32)
    monkeypatch.setenv("HOTLORA_HOME", str(tmp_path))
    return dict(interpolate(yaml.safe_load(COMPOSE.read_text()), {"HOTLORA_API_KEY": "k" * 32}))


def hotlora_settings(compose: dict[str, Any]) -> Settings:
    """What the hotlora service runs: the image's entry point (`hotlora serve --host 0.0.0.0`) + command."""
    entry = re.search(r'^ENTRYPOINT \["hotlora", "serve", (.*)\]$', (REPO / "Dockerfile").read_text(), re.M)
    assert entry is not None
    fixed = [part.strip().strip('"') for part in entry.group(1).split(",")]
    return serve_settings(
        build_parser().parse_args(["serve", *fixed, *compose["services"]["hotlora"]["command"]])
    )


def test_the_key_must_be_set_to_start_the_fleet() -> None:
    with pytest.raises(KeyError, match="HOTLORA_API_KEY"):
        interpolate(yaml.safe_load(COMPOSE.read_text()), {})


def test_hotlora_drives_every_vllm_server_of_the_file(compose: dict[str, Any]) -> None:
    settings = hotlora_settings(compose)
    services = compose["services"]
    vllm = {name: s for name, s in services.items() if name.startswith("vllm-")}
    assert settings.engine == "vllm" and len(vllm) >= 2
    assert set(settings.vllm_url) == {
        f"http://{name}:{flag(s['command'], '--port')}" for name, s in vllm.items()
    }
    assert set(services["hotlora"]["depends_on"]) == set(vllm)
    assert all(c["condition"] == "service_healthy" for c in services["hotlora"]["depends_on"].values())
    store_mount = next(v for v in services["hotlora"]["volumes"] if v.startswith("adapters:"))
    assert store_mount == f"adapters:{settings.adapters_dir}"
    for name, service in vllm.items():
        command = service["command"]
        assert service["environment"]["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True", name
        assert "--enable-lora" in command, name
        assert flag(command, "--model") == settings.model, name
        assert flag(command, "--served-model-name") == settings.served_model_name, name
        assert int(flag(command, "--max-lora-rank")) >= settings.max_lora_rank, name
        assert int(flag(command, "--max-loras")) >= settings.max_loras, name
        assert store_mount in service["volumes"], name  # vLLM reads adapter folders by hotlora's path


def test_the_store_belongs_to_the_image_s_user_before_anyone_uses_it(compose: dict[str, Any]) -> None:
    uid = re.search(r"useradd .*--uid (\d+)", (REPO / "Dockerfile").read_text())
    assert uid is not None
    services = compose["services"]
    assert services["store-init"]["command"][:2] == ["chown", f"{uid.group(1)}:{uid.group(1)}"]
    for name in ("vllm-0", "vllm-1"):
        assert services[name]["depends_on"]["store-init"]["condition"] == "service_completed_successfully"
    used = {v.split(":")[0] for s in services.values() for v in s.get("volumes", [])}
    assert used == set(compose["volumes"])
