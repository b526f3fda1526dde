"""Serving one adapter merged, without ever writing the quantized base.

PEFT's `merge_adapter` on a 4-bit base re-quantizes W + BA: lossy enough to change the top token (see
docs/performance.md, "Design measurements"), and `unmerge_adapter` re-quantizes again, so the base
drifts. Instead, each targeted layer's quantized base module is swapped for a dense `nn.Linear` holding
dequant(W) + delta in the compute dtype, and unmerging swaps the original module back. The quantized
weights are only read, so base output after any number of merges is bit-identical to a fresh start; the
price is the dense copy's memory while merged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from peft.tuners.lora import LoraLayer
from peft.utils.integrations import dequantize_bnb_weight

from .device_path import DevicePath


class NotMergeable(ValueError):
    """The adapter has layers this merge cannot fold exactly (embeddings, DoRA, ...)."""


@dataclass
class MergedAdapter:
    """An adapter folded into dense copies of its base layers; `unmerge` restores the originals."""

    key: str
    swaps: list[tuple[LoraLayer, torch.nn.Module]] = field(default_factory=list)

    def unmerge(self) -> None:
        for layer, original in self.swaps:
            layer.base_layer = original
        self.swaps.clear()


def _dense_weight(base: torch.nn.Linear) -> torch.Tensor:
    weight = base.weight
    if isinstance(weight, torch.nn.Parameter) and weight.__class__.__name__ in ("Params4bit", "Int8Params"):
        return dequantize_bnb_weight(weight, state=getattr(base, "state", None))
    return weight.data


def mergeable_layers(model: torch.nn.Module, key: str) -> list[tuple[LoraLayer, torch.nn.Linear]]:
    """The layers adapter `key` targets and their linear bases, if `merge` can fold every one exactly; else
    NotMergeable.

    Checked before anything runs the adapter: PEFT cannot even route rows to some kinds (DoRA)."""
    layers: list[LoraLayer] = [
        m
        for m in model.modules()
        if isinstance(m, LoraLayer) and (key in m.lora_A or key in m.lora_embedding_A)
    ]
    targets: list[tuple[LoraLayer, torch.nn.Linear]] = []
    for layer in layers:
        base = layer.get_base_layer()
        if key in layer.lora_embedding_A or not isinstance(base, torch.nn.Linear):
            raise NotMergeable(f"adapter targets a non-linear layer ({type(base).__name__})")
        if layer.use_dora.get(key, False):
            raise NotMergeable("DoRA adapters are served unmerged")
        targets.append((layer, base))
    return targets


@torch.inference_mode()
def merge(
    model: torch.nn.Module, key: str, dtype: torch.dtype, device: DevicePath, delta_scale: float = 1.0
) -> MergedAdapter:
    """Fold adapter `key` into dense copies of the layers it targets (all-or-nothing); `device` is the path
    the model was loaded with, which knows the layout its weights are kept in.

    `delta_scale=0` gives the dense base alone: the reference that measures the quantized kernel's own
    rounding, against which a merge is judged.
    """
    targets = mergeable_layers(model, key)
    device.to_standard_layout(model)  # dequantizing needs the library's standard layout
    merged = MergedAdapter(key)
    for layer, base in targets:
        # PEFT defines get_delta_weight on each LoRA layer class, not on their LoraLayer mixin
        delta = layer.get_delta_weight(key)  # type: ignore[attr-defined]
        weight = _dense_weight(base).to(dtype) + delta_scale * delta.to(dtype)
        dense = torch.nn.Linear(
            base.in_features, base.out_features, bias=base.bias is not None, device=weight.device, dtype=dtype
        )
        dense.weight.data = weight
        if base.bias is not None:
            dense.bias.data = base.bias.data.to(dtype)
        merged.swaps.append((layer, layer.base_layer))
        layer.base_layer = dense
    return merged
