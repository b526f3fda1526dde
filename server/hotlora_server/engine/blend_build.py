"""Build a blend into a PEFT folder, in a process of its own: `python -m hotlora_server.engine.blend_build JSON`.

The vLLM engine serves a blend as an ordinary LoRA folder, but it holds no model (and imports no torch),
so it runs this with its interpreter: the base is loaded on the CPU, the sources are loaded as the
built-in engine loads them (`peft_load`, from the store's checked files) and blended with PEFT's
`add_weighted_adapter`, seeded as the built-in engine seeds it. JSON argument: `base` (model folder),
`store`, `components` ([[name, weight], ...]), `method`, `density`, `out` (a folder to write into).
Prints the written adapter folder.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM

from hotlora_adapters import AdapterStore, check_compatible
from hotlora_adapters.runtime.base_model import base_spec

from ..blend_methods import combination_type
from .device_path import PLAIN
from .peft_load import load_adapter

_BLEND = "blend"


def build(
    base_folder: Path,
    store: AdapterStore,
    components: list[tuple[str, float]],
    method: str,
    density: float | None,
    out: Path,
) -> Path:
    base: Any = AutoModelForCausalLM.from_pretrained(base_folder, dtype=torch.float32)
    spec = base_spec(base)
    model = base
    keys = []
    for i, (name, _) in enumerate(components):
        files = store.load_files(name, check=lambda f: check_compatible(f, spec))
        keys.append(f"source{i}")
        model = load_adapter(model, base, files, spec, keys[-1], PLAIN)  # float32, not quantized
    torch.manual_seed(0)  # DARE prunes at random: the same blend the same way every time
    model.add_weighted_adapter(
        adapters=keys,
        weights=[weight for _, weight in components],
        adapter_name=_BLEND,
        combination_type=combination_type(method),
        density=density,
    )
    model.save_pretrained(str(out), selected_adapters=[_BLEND])
    folder = out / _BLEND
    return folder if folder.is_dir() else out


def main(argv: list[str]) -> int:
    spec = json.loads(argv[0])
    with torch.inference_mode():
        folder = build(
            Path(spec["base"]),
            AdapterStore(Path(spec["store"])),
            [(str(n), float(w)) for n, w in spec["components"]],
            spec["method"],
            spec["density"],
            Path(spec["out"]),
        )
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
