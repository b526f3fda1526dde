"""Llama-shaped decoder layers run as one plain function: the same ops in the same order, fewer wrappers.

A one-row decode step is mostly Python around small products, and a good part of it is transformers'
plumbing per layer: decorators, keyword forwarding, the attention's and the MLP's module calls, the
kernel-hub wrapper around rotary embeddings (docs/performance.md). For the families whose decoder layer
is Llama's (Llama, Mistral, Qwen2, Qwen3), `install` gives each layer a forward that does the same
arithmetic directly. Every product still goes through its module, so PEFT's hooks and the LoRA stack
apply as before; the device path may compute the base products that share an input (q, k and v; gate
and up) in one call. A probe compares one layer's output with the original's at load, bit for bit, and
the layers keep their own forward where it differs.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any, cast

import torch
from torch.nn.modules import module as torch_module
from transformers import DynamicCache
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .device_path import PLAIN, DevicePath, RowKernels
from .lora_stack import base_and_deltas

log = logging.getLogger(__name__)

LLAMA_SHAPED = frozenset(
    {"LlamaDecoderLayer", "MistralDecoderLayer", "Qwen2DecoderLayer", "Qwen3DecoderLayer"}
)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    """transformers' `rotate_half`, shared by the families above."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _hooked(module: torch.nn.Module) -> bool:
    """Whether calling `module` would run a hook (PEFT routes a batch through forward hooks)."""
    return bool(
        module._forward_pre_hooks
        or module._forward_hooks
        or torch_module._global_forward_pre_hooks
        or torch_module._global_forward_hooks
    )


def _call(module: torch.nn.Module | None, x: torch.Tensor) -> torch.Tensor:
    """`module(x)`; straight to its forward while no hook would run (`Module.__call__`'s bookkeeping
    costs about as much as a small product's own Python)."""
    assert module is not None  # a Llama-shaped layer has them all
    return module(x) if _hooked(module) else module.forward(x)


def _together(
    modules: Sequence[torch.nn.Module | None], x: torch.Tensor, path: DevicePath
) -> list[torch.Tensor]:
    """Each of `modules`' output for `x`, their base products from one call of the device path's
    `products` where it has one (then each LoRA layer's stacked deltas added), else one call each."""
    parts = [None if module is None or _hooked(module) else base_and_deltas(module) for module in modules]
    if all(part is not None and not _hooked(part[0]) for part in parts):
        ready = cast(list[tuple[torch.nn.Module, Any]], parts)
        outputs = path.products([base for base, _ in ready], x)
        if outputs is not None:
            return [y if add is None else add(x, y) for (_, add), y in zip(ready, outputs, strict=True)]
    return [_call(module, x) for module in modules]


def _rotate(
    q: torch.Tensor,
    k: torch.Tensor,
    embeddings: tuple[torch.Tensor, torch.Tensor],
    kernels: RowKernels | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' `apply_rotary_pos_emb`; through the row kernels (the same bits, one call for six
    operations) where they take these tensors."""
    cos, sin = embeddings
    if kernels is not None and q.dtype == cos.dtype == torch.float32 and cos.shape[0] == q.shape[0]:
        return kernels.rotary(q, cos, sin), kernels.rotary(k, cos, sin)
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return (q * cos) + (_rotate_half(q) * sin), (k * cos) + (_rotate_half(k) * sin)


def _forward(module: torch.nn.Module | None, x: torch.Tensor) -> torch.Tensor:
    """A norm's or an activation's forward: nothing hooks those."""
    assert module is not None  # a Llama-shaped layer has them all
    return module.forward(x)


class LeanLayer:
    """One decoder layer's forward without its wrappers. Calls with anything beyond the inputs a plain
    forward passes (transformers' extra keyword arguments: packed sequences, recorded outputs) and a layer
    in training mode (attention dropout) run the layer's own forward."""

    def __init__(self, layer: Any, path: DevicePath) -> None:  # a transformers layer
        attn = layer.self_attn
        self.path = path
        self.layer = layer
        self.original: Callable[..., torch.Tensor] = layer.forward
        # the submodules are read from these dicts at every call: PEFT swaps its LoRA layers in there
        self.modules, self.attn_modules, self.mlp_modules = layer._modules, attn._modules, layer.mlp._modules
        self.attn = attn
        # Mistral passes its config's window, Qwen2/3 the layer's own (None on full-attention layers)
        window = getattr(attn, "sliding_window", getattr(attn.config, "sliding_window", None))
        self.attention_kwargs = {} if window is None else {"sliding_window": window}
        self.eager: Callable[..., Any] = sys.modules[type(attn).__module__].eager_attention_forward
        self.implementation: tuple[str, Callable[..., Any]] | None = None

    def _attention(self, name: str) -> Callable[..., Any]:
        """The attention function registered as `name`, looked up again only when the name changes."""
        if self.implementation is None or self.implementation[0] != name:
            self.implementation = (name, ALL_ATTENTION_FUNCTIONS.get_interface(name, self.eager))
        return self.implementation[1]

    def __call__(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: DynamicCache | None = None,
        use_cache: bool | None = False,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        if kwargs or position_embeddings is None or self.layer.training:
            return self.original(
                hidden_states,
                attention_mask=attention_mask,
                position_ids=position_ids,
                cache=cache,
                use_cache=use_cache,
                position_embeddings=position_embeddings,
                **kwargs,
            )
        attn, mods, attn_mods, mlp_mods = self.attn, self.modules, self.attn_modules, self.mlp_modules
        x = _forward(mods["input_layernorm"], hidden_states)
        shape = (*x.shape[:-1], -1, attn.head_dim)
        qkv = [attn_mods["q_proj"], attn_mods["k_proj"], attn_mods["v_proj"]]
        q, k, v = (y.view(shape) for y in _together(qkv, x, self.path))
        if "q_norm" in attn_mods:  # Qwen3 normalises each head's query and key
            q, k = _forward(attn_mods["q_norm"], q), _forward(attn_mods["k_norm"], k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        q, k = _rotate(q, k, position_embeddings, self.path.kernels)
        if cache is not None:
            k, v = cache.update(k, v, attn.layer_idx)
        out, _ = self._attention(attn.config._attn_implementation)(
            attn, q, k, v, attention_mask, dropout=0.0, scaling=attn.scaling, **self.attention_kwargs
        )
        out = _call(attn_mods["o_proj"], out.reshape(*x.shape[:-1], -1).contiguous())
        hidden_states = hidden_states + out
        x = _forward(mods["post_attention_layernorm"], hidden_states)
        gate, up = _together([mlp_mods["gate_proj"], mlp_mods["up_proj"]], x, self.path)
        return hidden_states + _call(mlp_mods["down_proj"], _forward(mlp_mods["act_fn"], gate) * up)


def install(model: Any, path: DevicePath = PLAIN) -> int:  # a transformers model
    """Give `model`'s decoder layers the lean forward where their class is Llama-shaped and a probe of the
    first one matches its own forward bit for bit; return how many layers run it. `path`: the device
    path whose `products` and row kernels the layers use."""
    inner = getattr(model, "model", None)
    layers = list(getattr(inner, "layers", []))
    if not layers or any(type(layer).__name__ not in LLAMA_SHAPED for layer in layers):
        return 0
    lean = [LeanLayer(layer, path) for layer in layers]
    if not _same_bits(model, lean[0]):
        log.warning("decoder layers keep transformers' forward: the lean forward's probe differs from it")
        return 0
    for layer in lean:
        layer.layer.forward = layer  # replaced on purpose, as the device paths replace linear forwards
    return len(lean)


@torch.inference_mode()
def _same_bits(model: Any, lean: LeanLayer) -> bool:
    """Whether `lean` gives its layer's own outputs for a three-token prompt of two rows, then one step."""
    config = model.config
    param = next(model.parameters())
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 4, config.hidden_size, generator=generator).to(param.device, param.dtype)
    positions = torch.arange(4, device=param.device).expand(2, 4)
    rotary = model.model.rotary_emb
    results = []
    for forward in (lean.original, lean):
        cache = DynamicCache(config=config)
        outs = [
            forward(
                hidden[:, s],
                position_ids=positions[:, s],
                cache=cache,
                use_cache=True,
                position_embeddings=rotary(hidden[:, s], position_ids=positions[:, s]),
            )
            for s in (slice(0, 3), slice(3, 4))
        ]
        results.append(outs)
    return all(torch.equal(a, b) for a, b in zip(*results, strict=True))
