"""Load the base model for serving: resolved and converted by the shared `hotlora_adapters.runtime`
(as the trainer does), quantized, on its device, with the device's forward path installed.

The one module that chooses a device path (`DevicePath`): the rest of the engine gets it through
`LoadedModel` and imports no device's modules."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from hotlora_adapters import BaseSpec, ChatTemplateError, resolve_chat_template
from hotlora_adapters.runtime.base_model import (
    EMBEDDED_GENERATION_DEFAULTS,
    EMBEDDED_MODEL_NAME,
    BaseModelError,
    base_spec,
    pick_device,
    pick_dtype,
    quantization_config,
    resolve_base,
)

from ..settings import GenerationDefaults, Settings
from . import cpu, lean_layers
from .attention import use_batch_invariant_attention
from .device_path import PLAIN, DevicePath

log = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    """The base model cannot be found or loaded; the message says what to do about it."""


@dataclass(frozen=True)
class LoadedModel:
    """The base model and everything the engine needs to know about it."""

    model: Any  # a transformers causal LM
    tokenizer: PreTrainedTokenizerBase
    name: str  # the served model id
    path: Path
    quantization: str
    device: torch.device
    dtype: torch.dtype
    context_length: int
    spec: BaseSpec
    device_path: DevicePath = PLAIN  # the forward path chosen at load: its kernels and weight layout
    batch_invariant: bool = False  # whether a request's output is independent of its batch
    sampling_defaults: GenerationDefaults = GenerationDefaults()  # for the options a request leaves out
    vocab_size: int = 0  # the logits' width: token ids a request may name (logit_bias)


def resolve_model(settings: Settings) -> tuple[str, Path | str]:
    """Map `--model` to (served name, local folder or hub id)."""
    try:
        resolved = resolve_base(settings.model, settings.models_dir, "--model")
    except BaseModelError as exc:
        raise ModelLoadError(str(exc)) from exc
    return settings.served_model_name or resolved.name, resolved.source


def load_model(settings: Settings) -> LoadedModel:
    """Load the base model for serving: quantized, on its device, in eval mode."""
    transformers.utils.logging.disable_progress_bar()  # the server log is about the server
    name, source = resolve_model(settings)
    try:
        device = torch.device(pick_device(settings.device))
    except BaseModelError as exc:
        raise ModelLoadError(str(exc)) from exc
    dtype = pick_dtype(settings.dtype, device.type)
    kwargs: dict[str, Any] = {"dtype": dtype}
    qconfig = quantization_config(settings.quantize, dtype)
    if qconfig is not None:
        kwargs["quantization_config"] = qconfig
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, device_map={"": device}, **kwargs)
    except OSError as exc:  # transformers reports missing files and unreachable hubs as OSError
        raise ModelLoadError(
            f"could not load model {source!s}: {exc}. A hub id needs network access to the Hugging Face "
            "hub (or a cached copy); otherwise pass a local folder or a .gguf file with --model."
        ) from exc
    model.eval()
    if settings.chat_template is not None:
        try:
            tokenizer.chat_template = resolve_chat_template(settings.chat_template)
        except ChatTemplateError as exc:
            raise ModelLoadError(str(exc)) from exc
    path: DevicePath
    if device.type == "cpu":
        try:
            path = cpu.install(model, settings, dtype)
        except cpu.CpuPathError as exc:
            raise ModelLoadError(str(exc)) from exc
        why = "it needs the compiled CPU kernels and float32 compute (see the warnings above)"
    else:
        path = DevicePath(
            kernel=f"{settings.quantize} ({'bitsandbytes' if qconfig else 'torch'}, {device.type})"
        )
        why = f"on {device.type} the matrix products' summation order follows the batch"
    invariant = batch_invariance(settings.batch_invariant, path.batch_invariant, why)
    if invariant:
        assert path.kernels is not None  # only row kernels make a path capable of it
        use_batch_invariant_attention(model, path.kernels)
    lean = lean_layers.install(model, path)
    log.info("decoder layers through the lean forward: %d of %d", lean, model.config.num_hidden_layers)
    context = model.config.max_position_embeddings
    if settings.max_model_len is not None:
        if settings.max_model_len > context:
            raise ModelLoadError(f"--max-model-len {settings.max_model_len} exceeds the model's {context}")
        context = settings.max_model_len
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        name=name,
        path=Path(source) if isinstance(source, Path) else Path(str(source)),
        quantization=settings.quantize,
        device=device,
        dtype=dtype,
        context_length=context,
        spec=base_spec(model),
        device_path=path,
        batch_invariant=invariant,
        sampling_defaults=sampling_defaults(settings, model, source),
        vocab_size=int(model.config.vocab_size),
    )


def batch_invariance(requested: bool | None, capable: bool, why: str) -> bool:
    """Whether to serve batch-invariant (`--batch-invariant`): by default where the device path can, on request
    (refused where it cannot, with `why`), or never (the device's own attention, which is faster)."""
    if requested and not capable:
        raise ModelLoadError(
            f"--batch-invariant cannot hold here: {why}; leave the flag out or pass --no-batch-invariant"
        )
    invariant = capable if requested is None else requested
    log.info(
        "batch invariance: %s",
        "on (fixed-order attention and products)"
        if invariant
        else "off (the device's attention; a request's output may depend on what shares its batch)",
    )
    return invariant


def sampling_defaults(settings: Settings, model: Any, source: Path | str) -> GenerationDefaults:
    """The sampling options a request that leaves them out gets, as vLLM's `--generation-config`:
    `auto` takes the model's generation config (the embedded model: its card's recommended values, which
    its GGUF does not carry, under whatever its converted folder says), `vllm` none, a folder its own
    `generation_config.json`; `--override-generation-config` goes over them. A value of the model's own
    that is out of range is left out with a warning."""
    mode = settings.generation_config
    found: dict[str, Any] = {}
    if mode == "auto":
        if settings.model in (None, EMBEDDED_MODEL_NAME):
            found.update(EMBEDDED_GENERATION_DEFAULTS)
        config = getattr(model, "generation_config", None)
        found.update(config.to_diff_dict() if config is not None else {})
    elif mode != "vllm":
        try:
            found.update(transformers.GenerationConfig.from_pretrained(mode).to_diff_dict())
        except OSError as exc:
            raise ModelLoadError(
                f"--generation-config {mode}: no generation_config.json there ({exc}); give `auto`, `vllm` or a "
                "folder that holds one"
            ) from exc
    kept: dict[str, Any] = {}
    for name in GenerationDefaults.model_fields:
        if found.get(name) is None:
            continue
        try:
            GenerationDefaults.model_validate({name: found[name]})
        except ValueError:
            log.warning(
                "ignoring the generation config's %s=%r (%s): out of the range requests may ask for",
                name,
                found[name],
                source,
            )
            continue
        kept[name] = found[name]
    defaults = GenerationDefaults.model_validate({**kept, **settings.override_generation_config.given()})
    log.info(
        "sampling defaults for options a request leaves out (--generation-config %s%s): %s",
        mode,
        ", overridden" if settings.override_generation_config.given() else "",
        defaults.describe(),
    )
    return defaults
