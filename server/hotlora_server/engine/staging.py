"""Adapters and blends prepared beside the running batch, then attached to the served model between steps.

PEFT builds an adapter by walking and rewriting the whole model it loads into, and a blend likewise; on
the served model that would have to happen in the engine thread while every running stream waits
(docs/performance.md). So PEFT loads adapters and builds blends in a `Skeleton` of the base instead: the
same module names, each linear layer a stand-in with the served layer's shape, dtype and device but no
weights, private to the preparing thread (`preparing`). The engine thread then only moves the finished
per-adapter entries into the served model's LoRA layers (`attach`): the entries PEFT's own
`delete_adapter` removes, so what is attached is exactly what PEFT would have loaded there.

Only plain LoRA on linear layers is prepared so (what `lora_stack` serves, the normal case); an adapter
with DoRA, LoRA biases, embedding layers or `modules_to_save`, and any adapter while the served model has
no LoRA layer on one of its targets yet (the first adapter wraps the base), loads in the engine thread.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from peft import LoraConfig, PeftModel
from peft.tuners.lora import LoraLayer

from hotlora_adapters import AdapterFiles, BaseSpec, targeted_modules

from .device_path import PLAIN
from .peft_load import load_adapter

_ANCHOR = "__skeleton__"  # keeps the skeleton wrapped when no adapter is staged in it


@dataclass(frozen=True)
class Prepared:
    """An adapter or blend built in the skeleton under `key`, ready to attach: per target module name, the
    per-adapter entries of its LoRA layer (`lora_A`, `lora_B`, `scaling`, ...), and its PEFT config."""

    key: str
    config: LoraConfig
    layers: dict[str, dict[str, Any]]


def plain(files: AdapterFiles) -> bool:
    """Whether `files` is LoRA the skeleton can hold: linear layers, no DoRA, biases or saved modules."""
    config = files.config
    return not (
        config.use_dora or config.lora_bias or config.modules_to_save or config.trainable_token_indices
    )


class Skeleton:
    """The base's linear layers as weightless stand-ins, wrapped by a `PeftModel` that only the preparing
    thread touches. Built in the engine thread before the first adapter is loaded into the served model."""

    def __init__(self, model: torch.nn.Module, spec: BaseSpec) -> None:
        self._spec = spec
        root = torch.nn.Module()
        names = []
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and name in spec.module_shapes:
                _put(root, name, _stand_in(module))
                names.append(name)
        self.names = frozenset(names)
        vars(root)["name_or_path"] = vars(model).get("name_or_path")  # what PEFT writes into each config
        self.root = root
        anchor = LoraConfig(r=1, target_modules=names[:1], inference_mode=True)
        self.model = PeftModel(root, anchor, adapter_name=_ANCHOR)

    def holds(self, files: AdapterFiles) -> bool:
        """Whether `files` can be prepared here (else it loads into the served model in the engine thread)."""
        return plain(files) and set(targeted_modules(files, list(self._spec.module_shapes))) <= self.names

    @torch.inference_mode()  # as the served model's adapters: loaded in inference mode
    def adapter(self, files: AdapterFiles, key: str) -> Prepared:
        """Load `files` with PEFT under `key` and take it out, ready to attach."""
        self.model = load_adapter(self.model, self.root, files, self._spec, key, PLAIN)  # stand-ins only
        return self._take(key)

    @torch.inference_mode()
    def blend(
        self, sources: list[AdapterFiles], blend: Callable[[Any, list[str]], None], key: str
    ) -> Prepared:
        """Load `sources` under keys of their own, run `blend(model, their keys)` (which adds `key`), and
        take the blend out; the sources go again, whatever happens."""
        keys = [f"{key}_{i}" for i in range(len(sources))]
        try:
            for files, source in zip(sources, keys, strict=True):
                self.model = load_adapter(self.model, self.root, files, self._spec, source, PLAIN)
            blend(self.model, keys)
            return self._take(key)
        finally:
            for name in [*keys, key]:
                if name in self.model.peft_config:
                    self.model.delete_adapter(name)

    def _take(self, key: str) -> Prepared:
        """Adapter `key`'s entries, removed from the skeleton (PEFT's `delete_adapter` drops its references)."""
        layers: dict[str, dict[str, Any]] = {}
        for name, module in self.root.named_modules():
            if isinstance(module, LoraLayer) and key in module.lora_A:
                layers[name] = {
                    attr: getattr(module, attr)[key]
                    for attr in (*module.adapter_layer_names, *module.other_param_names, "lora_variant")
                    if key in getattr(module, attr)
                }
        config = self.model.peft_config[key]
        self.model.delete_adapter(key)
        assert isinstance(config, LoraConfig)  # the skeleton holds LoRA only
        return Prepared(key, config, layers)


def attach(model: Any, prepared: Prepared) -> bool:
    """Put `prepared` into the served `model` (a `PeftModel`) under its key; False, changing nothing, if
    the model has no LoRA layer on one of its targets yet (then PEFT must load it there itself)."""
    if not isinstance(model, PeftModel):
        return False
    root = model.base_model.model
    assert isinstance(root, torch.nn.Module)  # the base PEFT wraps
    layers = {name: _module(root, name) for name in prepared.layers}
    if not all(isinstance(layer, LoraLayer) for layer in layers.values()):
        return False
    for name, entries in prepared.layers.items():
        layer = layers[name]
        for attr, value in entries.items():
            getattr(layer, attr)[prepared.key] = value
    model.peft_config[prepared.key] = prepared.config
    return True


def _stand_in(module: torch.nn.Linear) -> torch.nn.Linear:
    """A linear layer with `module`'s shape and device whose weight holds one value: PEFT reads the weight's
    shape, device and dtype (a quantized weight's LoRA stays in float32, as PEFT leaves it)."""
    weight = module.weight
    dtype = weight.dtype if weight.dtype.is_floating_point else torch.float32
    stand_in = torch.nn.Linear(module.in_features, module.out_features, bias=False, device="meta")
    one = torch.zeros((), dtype=dtype, device=weight.device)
    stand_in.weight = torch.nn.Parameter(one.expand(module.out_features, module.in_features), False)
    return stand_in


def _put(root: torch.nn.Module, name: str, module: torch.nn.Module) -> None:
    """Add `module` under the dotted `name`, making the empty containers on its path."""
    *path, leaf = name.split(".")
    parent = root
    for part in path:
        child = parent._modules.get(part)
        if child is None:
            child = torch.nn.Module()
            parent.add_module(part, child)
        parent = child
    parent.add_module(leaf, module)


def _module(root: torch.nn.Module, name: str) -> torch.nn.Module | None:
    try:
        return root.get_submodule(name)
    except AttributeError:
        return None
