"""Fixtures shared by unit and integration tests: the real SmolLM2 folder, converted once and cached."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def hotlora_home() -> Path:
    """A HOTLORA_HOME kept between test runs, so the embedded GGUF is converted once per checkout."""
    home = REPO / ".pytest_cache" / "hotlora-home"
    home.mkdir(parents=True, exist_ok=True)
    return home


@pytest.fixture(scope="session")
def smollm2_dir(hotlora_home: Path) -> Path:
    """The embedded SmolLM2-135M-Instruct as a safetensors HF folder (model + tokenizer + chat template)."""
    from hotlora_adapters.runtime.base_model import EMBEDDED_MODEL_NAME, convert_gguf, embedded_gguf

    return convert_gguf(embedded_gguf(), hotlora_home / "models", EMBEDDED_MODEL_NAME)
