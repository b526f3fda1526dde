"""The base model on the trainer's side: resolve `--base` (through the shared runtime, as the server
resolves `--model`: same conversion folder, same fingerprint), read its shape without weights, load it
to train."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

from hotlora_adapters import ChatTemplateError, resolve_chat_template
from hotlora_adapters.runtime import base_model as runtime
from hotlora_adapters.runtime.base_model import ResolvedBase
from hotlora_adapters.runtime.placement import Device

from .errors import BaseModelError, ConfigError
from .memory import ModelShape

log = logging.getLogger(__name__)


def resolve_base(base: str | None, models_dir: Path) -> ResolvedBase:
    """Map `--base` to a folder or hub id; an unknown base is refused with what to pass instead."""
    try:
        return runtime.resolve_base(base, models_dir, "--base")
    except runtime.BaseModelError as e:
        raise BaseModelError(str(e)) from None


def pick_device(requested: Device) -> str:
    try:
        return runtime.pick_device(requested)
    except runtime.BaseModelError as e:
        raise BaseModelError(str(e)) from None


def meta_model(source: Path | str, attn_implementation: str = "sdpa") -> Any:
    """The base model's module tree with no weights (meta device): shapes, names, parameter counts.

    A family without SDPA (Gemma 2, whose attention caps its scores) gets eager attention instead;
    `model.config._attn_implementation` says which the training will use.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(source)
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation)
        except ValueError:
            if attn_implementation != "sdpa":
                raise
            log.info("%s has no SDPA attention: training with eager attention", type(config).__name__)
            return AutoModelForCausalLM.from_config(config, attn_implementation="eager")


def model_shape(model: Any) -> ModelShape:
    """The numbers the memory estimate needs, from a (meta) model."""
    import torch

    config = model.config.get_text_config()
    linear = {
        name: (m.out_features, m.in_features)
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear)
    }
    output = model.get_output_embeddings()
    quantizable = sum(
        m.weight.numel()
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and m is not output
    )
    return ModelShape(
        n_params=sum(p.numel() for p in model.parameters()),
        n_layers=config.num_hidden_layers,
        hidden_size=config.hidden_size,
        n_heads=config.num_attention_heads,
        vocab_size=config.vocab_size,
        quantizable_params=quantizable,
        linear_modules=linear,
    )


def compute_dtype_name(device: str) -> str:
    """The server's compute dtype on `device` (bfloat16 on CUDA, float32 on a CPU), by name."""
    return str(runtime.pick_dtype("auto", device)).removeprefix("torch.")


def bf16_autocast(device: str, requested: bool | None) -> bool:
    """Whether training runs under bfloat16 autocast (weights, LoRA and optimizer states stay as loaded):
    as `requested` (`--bf16` / `--no-bf16`), else by the device.

    Always on CUDA. On a CPU only with native bf16 (AVX512-BF16 / AMX), where it makes a training step
    clearly faster than float32 (docs/performance.md, "Training"); emulated bf16 would be slower.
    """
    import torch

    if requested is not None:
        return requested
    if device == "cuda":
        return True
    return device == "cpu" and bool(getattr(torch.cpu, "_is_avx512_bf16_supported", bool)())


def load_tokenizer(source: Path | str, chat_template: str | None = None) -> Any:
    """The base's tokenizer, with `chat_template` (`--chat-template`: the server's rule) when given."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as e:
        raise BaseModelError(f"cannot load the tokenizer of {source}: {e}") from e
    if chat_template is not None:
        try:
            tokenizer.chat_template = resolve_chat_template(chat_template)
        except ChatTemplateError as e:
            raise ConfigError(str(e)) from None
    return tokenizer


def holds_4bit(device: str, qlora: bool) -> bool:
    """Whether training holds the base in 4-bit: QLoRA off a CPU (on a CPU it is dequantized once)."""
    return qlora and device.split(":", 1)[0] != "cpu"


def base_weights(device: str, qlora: bool) -> str:
    """What the base is trained as, for the manifest."""
    if not qlora:
        return compute_dtype_name(device)
    return "nf4" if holds_4bit(device, qlora) else f"nf4, dequantized to {compute_dtype_name(device)}"


def load_for_training(source: Path | str, *, device: str, qlora: bool, attn_implementation: str) -> Any:
    """The base model on `device`, 4-bit NF4 with `qlora`, else at the compute dtype.

    With `qlora` on a CPU the weights are quantized exactly as the server quantizes them and then
    dequantized once: the values QLoRA's forward computes with, without bitsandbytes' CPU path
    dequantizing every layer at every step (docs/performance.md, "Training"). On CUDA they stay 4-bit.
    """
    from transformers import AutoModelForCausalLM

    dtype = runtime.pick_dtype("auto", device.split(":", 1)[0])
    kwargs: dict[str, Any] = {"dtype": dtype, "attn_implementation": attn_implementation}
    if qlora:  # the served 4-bit layout: NF4 without double quantization
        kwargs["quantization_config"] = runtime.quantization_config("nf4", dtype)
        kwargs["device_map"] = {"": device}
    try:
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except OSError as e:
        raise BaseModelError(f"cannot load the base model {source}: {e}") from e
    if not qlora:
        model.to(device)  # type: ignore[arg-type]  # transformers' wrapper around `to` hides its signature
    if qlora and not holds_4bit(device, qlora):
        model = model.dequantize()
        # transformers leaves the flag set, and TRL would then cast the LoRA weights to bfloat16
        model.is_loaded_in_4bit = False
    return model
