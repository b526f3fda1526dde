"""What the server and the trainer create under `$HOTLORA_HOME` is their user's alone (folders 0700).

The GGUF conversion is run with stand-in loaders: what is under test is where and how it writes, not
transformers' conversion (the integration tests convert the real model).
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest


class _Saved:
    """Stands in for a transformers model or tokenizer: `save_pretrained` writes one file."""

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.config = SimpleNamespace(quantization_config=object(), _name_or_path="")
        self.hf_quantizer = object()

    def save_pretrained(self, folder: Any) -> None:
        (Path(folder) / self.filename).write_text(json.dumps({}))


def _loader(filename: str) -> Any:
    return SimpleNamespace(from_pretrained=lambda *_a, **_k: _Saved(filename))


def _server_loader() -> ModuleType:
    from hotlora_server.engine import loader

    return loader


def _trainer_base_model() -> ModuleType:
    from hotlora_trainer import base_model

    return base_model


@pytest.mark.parametrize("module", [_server_loader, _trainer_base_model], ids=["server", "trainer"])
def test_the_converted_model_lives_in_private_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, module: Any) -> None:
    import transformers

    mod = module()
    for target in (transformers, mod):
        monkeypatch.setattr(target, "AutoModelForCausalLM", _loader("config.json"), raising=False)
        monkeypatch.setattr(target, "AutoTokenizer", _loader("tokenizer.json"), raising=False)
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    home = tmp_path / "home"  # a first start: nothing exists yet
    converted = mod.convert_gguf(gguf, home / "models", "model")
    assert (converted / "config.json").is_file()
    for folder in (home, home / "models", converted):
        assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700, folder
