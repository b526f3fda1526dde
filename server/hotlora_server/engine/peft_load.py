"""Loading an adapter into the served model with PEFT, from the module names the registry resolved.

PEFT builds an adapter's layers from its config and injects them into the base model before it reads a
weight. The config handed to PEFT is the one the registry resolved (`peft_lora_kwargs`: the file's served
fields, its patterns replaced by the module names they select), so PEFT evaluates no expression from the
file and sets nothing the server does not serve.
"""

from __future__ import annotations

from typing import Any

import torch
from peft import LoraConfig, PeftModel

from hotlora_adapters import AdapterFiles, BaseSpec, peft_lora_kwargs

from .cpu.bnb import packing_held


def load_adapter(model: Any, base: torch.nn.Module, files: AdapterFiles, spec: BaseSpec, key: str) -> Any:
    """Load `files` under the PEFT adapter name `key` into `model` (the base itself, or a `PeftModel`
    wrapping it); return the model to serve."""
    config = LoraConfig(**peft_lora_kwargs(files, list(spec.module_shapes)), inference_mode=True)
    with packing_held(base):  # PEFT calls state_dict(): see bnb_cpu
        if isinstance(model, PeftModel):
            model.add_adapter(key, config)
            model.load_adapter(str(files.path), adapter_name=key)
        else:
            model = PeftModel.from_pretrained(base, str(files.path), adapter_name=key, config=config)
    model.eval()
    return model
