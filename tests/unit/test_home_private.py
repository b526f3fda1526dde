"""What the server and the trainer create under `$HOTLORA_HOME` is their user's alone (folders 0700).

The GGUF conversion is run with stand-in loaders: what is under test is where and how it writes, not
transformers' conversion (the integration tests convert the real model).
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from types import SimpleNamespace
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


def test_the_converted_model_lives_in_private_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The one conversion server and trainer share (`hotlora_adapters.runtime`)."""
    import transformers

    from hotlora_adapters.runtime.base_model import convert_gguf

    monkeypatch.setattr(transformers, "AutoModelForCausalLM", _loader("config.json"))
    monkeypatch.setattr(transformers, "AutoTokenizer", _loader("tokenizer.json"))
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    home = tmp_path / "home"  # a first start: nothing exists yet
    converted = convert_gguf(gguf, home / "models", "model")
    assert (converted / "config.json").is_file()
    for folder in (home, home / "models", converted):
        assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700, folder


def test_a_corrupt_conversion_stamp_means_convert_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Server and trainer share one rule (the server used to raise where the trainer converted again)."""
    import transformers

    from hotlora_adapters.runtime.base_model import SOURCE_STAMP, convert_gguf

    monkeypatch.setattr(transformers, "AutoModelForCausalLM", _loader("config.json"))
    monkeypatch.setattr(transformers, "AutoTokenizer", _loader("tokenizer.json"))
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    folder = tmp_path / "models" / "model"
    folder.mkdir(parents=True)
    (folder / SOURCE_STAMP).write_text("{truncated")
    assert convert_gguf(gguf, tmp_path / "models", "model") == folder
    assert json.loads((folder / SOURCE_STAMP).read_text())["size"] == 4 and (folder / "config.json").is_file()
