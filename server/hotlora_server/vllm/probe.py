"""Can a vLLM server read the adapter store? Asked once per server at start, by loading a probe adapter.

vLLM reads LoRA folders by path, so every server of a fleet must see the store where hotlora sees it (a
shared volume, NFS). hotlora writes a one-module, rank-1, all-zero LoRA for the served base into a hidden
folder of the store, asks the server to load it and unloads it: a server that cannot is refused at start
with what to mount, rather than failing every adapter request later. Written without torch: a
safetensors file is a JSON header and raw bytes.
"""

from __future__ import annotations

import json
import secrets
import shutil
import struct
from pathlib import Path

from hotlora_adapters import BaseSpec

PROBE_DIR = ".probe"


def write_probe(store_root: Path, spec: BaseSpec) -> Path:
    """A fresh probe adapter folder under `<store>/.probe/` (delete it after use)."""
    module = _probe_module(spec)
    rows, cols = spec.module_shapes[module]
    folder = store_root / PROBE_DIR / secrets.token_hex(8)
    folder.mkdir(parents=True)
    config = {
        "peft_type": "LORA",
        "r": 1,
        "lora_alpha": 1,
        "target_modules": [module.rsplit(".", 1)[-1]],
        "layers_to_transform": None,
        "bias": "none",
        "task_type": "CAUSAL_LM",
    }
    (folder / "adapter_config.json").write_text(json.dumps(config))
    prefix = f"base_model.model.{module}"
    _write_zeros(
        folder / "adapter_model.safetensors",
        {f"{prefix}.lora_A.weight": (1, cols), f"{prefix}.lora_B.weight": (rows, 1)},
    )
    return folder


def remove_probe(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


def _probe_module(spec: BaseSpec) -> str:
    """A projection every LoRA-capable model has; else any linear inside a decoder layer."""
    names = sorted(spec.module_shapes)
    for suffix in ("q_proj", "qkv_proj", "c_attn", "query_key_value"):
        found = [n for n in names if n.endswith(f".{suffix}")]
        if found:
            return found[0]
    return next(n for n in names if ".layers." in n or ".h." in n)


def _write_zeros(path: Path, tensors: dict[str, tuple[int, int]]) -> None:
    header: dict[str, object] = {}
    offset = 0
    for name, (rows, cols) in tensors.items():
        size = rows * cols * 4
        header[name] = {"dtype": "F32", "shape": [rows, cols], "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        f.write(bytes(offset))
