"""Loading an adapter into the served model with PEFT: from resolved names only, and all or nothing.

PEFT builds an adapter's layers from its config and injects them into the base model, replacing the
base's modules in place, before it reads a weight. Two things follow. The config handed to PEFT is the
one the registry resolved (`peft_lora_kwargs`: the file's served fields, its patterns replaced by the
module names they select), so PEFT evaluates no expression from the file and sets nothing the server does
not serve. And a load that fails halfway (the file replaced while read, memory running out, an error
inside PEFT) must not leave injected layers in the base every request shares: `load_adapter` records the
module tree first and, on any failure, puts it back and removes whatever PEFT registered under the new
key, so the model is exactly as it was.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from peft import LoraConfig, PeftModel

from hotlora_adapters import AdapterFiles, BaseSpec, peft_lora_kwargs

from .device_path import DevicePath

BASE = "__base__"  # PEFT's name for "no adapter" in a batch routed by `adapter_names`


def load_adapter(
    model: Any, base: torch.nn.Module, files: AdapterFiles, spec: BaseSpec, key: str, device: DevicePath
) -> Any:
    """Load `files` under the PEFT adapter name `key` into `model` (the base itself, or a `PeftModel`
    wrapping it, loaded with `device`); return the model to serve. On failure the model is left as it was
    and the error raised."""
    config = LoraConfig(**peft_lora_kwargs(files, list(spec.module_shapes)), inference_mode=True)
    with _undone_on_failure(model, base, key), device.weights_held(base):  # PEFT calls state_dict()
        if isinstance(model, PeftModel):
            model.add_adapter(key, config)
            model.load_adapter(str(files.path), adapter_name=key)
        else:
            model = PeftModel.from_pretrained(base, str(files.path), adapter_name=key, config=config)
    model.eval()
    return model


@contextmanager
def _undone_on_failure(model: Any, base: torch.nn.Module, key: str) -> Iterator[None]:
    """Record every module of `model` and `base` (its attributes and children, which of its parameters take
    gradients); on an exception, put all of it back and drop every entry named `key` that PEFT added to
    the per-adapter dicts of layers it already had."""
    roots = [model] if model is base else [model, base]
    modules = list({id(m): m for root in roots for m in root.modules()}.values())
    saved = [(dict(vars(m)), dict(m._modules)) for m in modules]
    grads = {p: p.requires_grad for m in modules for p in m.parameters(recurse=False)}
    try:
        yield
    except BaseException:
        for module, (attributes, children) in zip(modules, saved, strict=True):
            vars(module).clear()
            vars(module).update(attributes)
            module._modules.clear()
            module._modules.update(children)
            for value in attributes.values():
                if isinstance(value, dict) and key in value:
                    del value[key]
        for param, flag in grads.items():
            param.requires_grad_(flag)
        raise
