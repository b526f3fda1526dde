"""Preflight: everything that can be refused is refused before the model's weights load.

A missing extra, a name already taken, a malformed dataset, an unknown base, a target module the base
lacks, an estimate that does not fit: each would otherwise surface only after minutes of loading or
training. The base is read on the meta device (no weights) for that, and the data tokenized.
"""

from __future__ import annotations

import importlib.util
import os
import re
import warnings
from typing import Any

from hotlora_adapters import AdapterStore
from hotlora_adapters.runtime.base_model import base_spec

from . import piglatin
from .base_model import (
    compute_dtype_name,
    holds_4bit,
    load_tokenizer,
    meta_model,
    model_shape,
    pick_device,
    resolve_base,
)
from .config import TrainConfig
from .data import Dataset, load_jsonl
from .encoding import encode_dataset, length_report
from .errors import ConfigError, MemoryEstimateError
from .memory import MemoryEstimate, ModelShape, estimate, fmt_bytes, free_memory
from .run import Run, TrainResult


def preflight(run: Run) -> None:
    """Check everything that can be checked without weights; set the dataset, base, tokenizer, encoded
    rows and the result with its memory estimate on `run`."""
    config = run.config
    _require_train_extra(config)
    _refuse_taken_name(run.store, config)

    run.dataset = dataset = _load_dataset(config)
    run.out(
        f"dataset: {dataset.source}: {len(dataset.rows)} training rows, {len(dataset.eval_rows)} evaluation rows "
        f"({dataset.format.replace('_', '/')} format, sha256 {dataset.sha256[:12]})"
    )

    run.base = resolve_base(config.base, run.home / "models")
    device = pick_device(config.device)
    run.device = f"cuda:{run.local_rank}" if device == "cuda" and run.world > 1 else device
    _check_optional_deps(config)
    meta = meta_model(run.base.source, config.attn_implementation)
    if meta.config._attn_implementation != config.attn_implementation:  # eager where the family has no SDPA
        run.config = config = config.model_copy(
            update={"attn_implementation": meta.config._attn_implementation}
        )
    run.spec = base_spec(meta)
    shape = model_shape(meta)  # before PEFT wraps `meta` to count its trainable parameters
    check_module_names(config, meta)
    trainable = count_trainable(meta, config)

    run.tokenizer = load_tokenizer(run.base.source, config.chat_template)
    run.train_enc, run.eval_enc = encode_dataset(run.tokenizer, dataset)
    warning = length_report(run.train_enc + run.eval_enc, config.max_length)
    if warning:
        run.out(f"warning: {warning}")
    est = _estimate(run, shape, trainable, device)
    run.out(est.describe())
    _check_fits(est, device, config)
    run.result = TrainResult(config.name, est)


def check_module_names(config: TrainConfig, model: Any) -> None:
    """Refuse target_modules / modules_to_save names the base lacks, listing the names it has."""
    import torch

    names = [n for n, _ in model.named_modules() if n]
    linear = sorted(
        {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    )
    targets = config.target_modules
    problems: list[str] = []
    if isinstance(targets, str) and targets != "all-linear":
        try:
            pattern = re.compile(targets)
        except re.error as e:
            raise ConfigError(
                f"--target-modules {targets!r} is not a valid regular expression: {e}"
            ) from None
        if not any(pattern.fullmatch(n) for n in names):
            problems.append(f"--target-modules {targets!r} matches no module of the base")
    elif isinstance(targets, list):
        missing = [t for t in targets if not _has_module(names, t)]
        if missing:
            problems.append(f"--target-modules: the base has no module named {', '.join(map(repr, missing))}")
    missing_save = [t for t in config.modules_to_save or [] if not _has_module(names, t)]
    if missing_save:
        problems.append(
            f"--modules-to-save: the base has no module named {', '.join(map(repr, missing_save))}"
        )
    if problems:
        raise ConfigError(
            "; ".join(problems) + f". Its linear layers are: {', '.join(linear)} "
            "(or leave --target-modules out for all linear layers)"
        )


def count_trainable(meta: Any, config: TrainConfig) -> int:
    """Trainable parameters of the LoRA model, counted by building it on the meta device (no weights)."""
    from peft import LoraConfig, get_peft_model

    kwargs = {**config.lora_kwargs(), "init_lora_weights": True}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            peft_model = get_peft_model(meta, LoraConfig(task_type="CAUSAL_LM", **kwargs))
    except (ValueError, TypeError, NotImplementedError) as e:
        raise ConfigError(f"PEFT refuses this LoRA configuration for the base: {e}") from None
    return trainable_parameters(peft_model)


def trainable_parameters(model: Any) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _estimate(run: Run, shape: ModelShape, trainable: int, device: str) -> MemoryEstimate:
    config = run.config
    longest = max(len(e.input_ids) for e in run.train_enc + run.eval_enc)
    return estimate(
        shape,
        trainable_params=trainable,
        batch_size=config.per_device_train_batch_size,
        seq_len=config.max_length if config.packing else min(config.max_length, longest),
        compute_dtype=compute_dtype_name(device),
        qlora=holds_4bit(device, config.qlora),
        optim=config.optim,
        attention=config.attn_implementation,
        gradient_checkpointing=config.gradient_checkpointing,
    )


def _has_module(names: list[str], key: str) -> bool:
    return any(n == key or n.endswith("." + key) for n in names)


def _refuse_taken_name(store: AdapterStore, config: TrainConfig) -> None:
    if config.overwrite:
        return
    path = store.root / config.name
    if config.name in store:
        raise ConfigError(
            f"an adapter named {config.name!r} already exists in {store.root}: choose another --name, "
            "or pass --overwrite to replace it"
        )
    if os.path.lexists(path):
        raise ConfigError(f"{path} exists and is not an adapter: remove it or choose another --name")


def _load_dataset(config: TrainConfig) -> Dataset:
    if config.task is not None:
        if config.eval_split:
            raise ConfigError(
                "--eval-split does not apply to --task piglatin: its evaluation lists are fixed (61-72)"
            )
        return piglatin.task_dataset(config.seed)
    assert config.data is not None
    dataset = load_jsonl(config.data)
    if config.eval_data is not None:
        return dataset.with_eval(load_jsonl(config.eval_data))
    return dataset.split(config.eval_split, config.seed)


def _require_train_extra(config: TrainConfig) -> None:
    missing = [m for m in ("trl", "datasets", "matplotlib") if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"the trainer needs {', '.join(missing)}: pip install 'hotlora[train]'")
    if config.server is not None and importlib.util.find_spec("hotlora_client") is None:
        raise ConfigError("--server needs the hotlora client SDK: pip install ./clients/python")


def _check_optional_deps(config: TrainConfig) -> None:
    if config.qlora or "8bit" in config.optim:
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            what = "--qlora" if config.qlora else f"--optim {config.optim}"
            raise ConfigError(f"{what} needs bitsandbytes (pip install bitsandbytes)") from None


def _check_fits(est: MemoryEstimate, device: str, config: TrainConfig) -> None:
    free = free_memory(device)
    if free is None or est.total <= free:
        return
    hints = [
        f"a smaller --batch-size (now {config.per_device_train_batch_size}, with --grad-accum to keep the "
        "effective batch)",
        f"a smaller --max-seq-length (now {config.max_length})",
    ]
    if not config.gradient_checkpointing:
        hints.append("--gradient-checkpointing")
    if not config.qlora:
        hints.append("--qlora")
    if "8bit" not in config.optim:
        hints.append("--optim adamw_8bit")
    if config.attn_implementation == "eager":
        hints.append("SDPA attention instead of eager")
    raise MemoryEstimateError(
        f"the estimate ({fmt_bytes(est.total)}) does not fit in the {fmt_bytes(free)} free on {device}: "
        f"try {', '.join(hints)}"
    )
