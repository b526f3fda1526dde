"""`hotlora serve` / `hotlora fetch` model resolution as a user meets it: GGUF conversion once, clear failures."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from hotlora_adapters.runtime.base_model import embedded_gguf

from support.live_server import hotlora_cmd

pytestmark = pytest.mark.integration


def run_hotlora(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([*hotlora_cmd(), *args], capture_output=True, text=True, timeout=timeout, env=env)


def test_gguf_file_is_converted_once(tmp_path: Path) -> None:
    first = run_hotlora("fetch", "--model", str(embedded_gguf()), "--home", str(tmp_path))
    assert first.returncode == 0, first.stderr
    folder = Path(first.stdout.split(": ", 1)[1].strip())
    weights = folder / "model.safetensors"
    assert folder.parent == tmp_path / "models" and weights.is_file()
    assert (folder / "tokenizer.json").is_file() and (folder / "chat_template.jinja").is_file()
    stamp = weights.stat().st_mtime_ns
    again = run_hotlora("fetch", "--model", str(embedded_gguf()), "--home", str(tmp_path))
    assert again.returncode == 0 and again.stdout == first.stdout
    assert weights.stat().st_mtime_ns == stamp  # reused, not converted again
    assert not [p for p in (tmp_path / "models").iterdir() if p.name.startswith(".")]  # no temp dirs left


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("/no/such/model-folder", "no such model folder or .gguf file"),
        ("HuggingFaceTB/no-such-model-hotlora", "needs network access to the Hugging Face hub"),
    ],
)
def test_serve_refuses_unloadable_model_clearly(tmp_path: Path, model: str, expected: str) -> None:
    result = run_hotlora("serve", "--model", model, "--home", str(tmp_path), "--port", "0", timeout=120)
    assert result.returncode == 1
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_binds_loopback_by_default(server) -> None:  # noqa: ANN001 - the session server fixture
    assert server.base_url.startswith("http://127.0.0.1:")
    assert "Uvicorn running on http://127.0.0.1:" in server.output()
