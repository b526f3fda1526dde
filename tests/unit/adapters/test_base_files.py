"""A base's spec read from its files equals the spec of the loaded model: the vLLM engine judges adapters
by the fingerprint the trainer recorded without loading the model."""

from __future__ import annotations

from pathlib import Path

import pytest

from hotlora_adapters import AdapterError
from hotlora_adapters.base_files import base_spec_from_folder

from support.tiny_llama import build_tiny_llama


@pytest.mark.parametrize("tied", [True, False])
def test_spec_from_files_equals_the_loaded_models(tmp_path: Path, tied: bool) -> None:
    from hotlora_adapters.runtime.base_model import base_spec

    small = dict(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_attention_heads=2, num_key_value_heads=1
    )
    model = build_tiny_llama(**small, tie_word_embeddings=tied)  # 2 layers, as TINY_LLAMA
    model.save_pretrained(tmp_path)
    from_files, loaded = base_spec_from_folder(tmp_path), base_spec(model)
    assert from_files.module_shapes == loaded.module_shapes
    assert from_files.fingerprint() == loaded.fingerprint()
    assert from_files.library == loaded.library


def test_a_folder_without_weights_is_refused(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(AdapterError, match="no .safetensors"):
        base_spec_from_folder(tmp_path)
    with pytest.raises(AdapterError, match="config.json"):
        base_spec_from_folder(tmp_path / "missing")
