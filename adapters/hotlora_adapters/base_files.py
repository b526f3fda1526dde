"""A base model's `BaseSpec` read from its folder (config.json and the safetensors headers), without torch.

The built-in engine computes the spec from the loaded model (`runtime.base_model.base_spec`); a server that
hands generation to another process (the vLLM engine) never loads the model, yet must judge adapters by
the same fingerprint the trainer recorded. Every 2-D `<module>.weight` of the checkpoint is a linear or
embedding module with that (out, in) shape; a tied `lm_head` is not stored, so it is added from the
embedding when the config ties them.
"""

from __future__ import annotations

import json
from pathlib import Path

from .compat import BaseSpec
from .errors import AdapterError
from .safetensors_header import read_safetensors_header

_INDEX = "model.safetensors.index.json"


def base_spec_from_folder(folder: Path) -> BaseSpec:
    """The spec of the Hugging Face model in `folder`; `AdapterError` if it has no config or safetensors."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise AdapterError(f"{folder}: no readable config.json ({exc})") from None
    shapes: dict[str, tuple[int, int]] = {}
    for path in _weight_files(folder):
        for key, info in read_safetensors_header(path).tensors.items():
            if key.endswith(".weight") and len(info.shape) == 2:
                shapes[key.removesuffix(".weight")] = (info.shape[0], info.shape[1])
    embedding = shapes.get("model.embed_tokens")
    if "lm_head" not in shapes and embedding is not None and config.get("tie_word_embeddings", False):
        shapes["lm_head"] = embedding
    model_type = str(config.get("model_type", ""))
    return BaseSpec(model_type, shapes, model_type)


def _weight_files(folder: Path) -> list[Path]:
    index = folder / _INDEX
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map", {})
        return [folder / name for name in sorted(set(weight_map.values()))]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise AdapterError(f"{folder}: no .safetensors weights (the vLLM engine reads shapes from them)")
    return files
