"""One training run: dataset -> checks and memory estimate -> SFTTrainer + PEFT -> evaluation -> the store.

Everything that can be refused is refused before the model's weights load: a name already taken, a
malformed dataset, an unknown base, a target module the base lacks, an estimate that does not fit.
Registration is the store's atomic rename, so an interrupted run (Ctrl-C) never leaves a half-registered
adapter; its temporary files are removed, and only checkpoints (for `--resume`) are kept.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hotlora_adapters import AdapterStore, Manifest, default_home_dir, default_store_dir, inspect_adapter
from hotlora_adapters.private import make_private_dirs
from hotlora_adapters.runtime.base_model import EMBEDDED_HUB_ID, EMBEDDED_MODEL_NAME, base_spec

from . import piglatin
from .base_model import (
    bf16_autocast,
    compute_dtype_name,
    load_for_training,
    load_tokenizer,
    meta_model,
    model_shape,
    pick_device,
    resolve_base,
)
from .config import TrainConfig
from .data import Dataset, load_jsonl
from .encoding import Encoded, encode_dataset, length_report
from .errors import ConfigError, MemoryEstimateError
from .memory import MemoryEstimate, current_rss, estimate, fmt_bytes, free_memory, peak_memory, reset_peak
from .notify import curl_line, wait_until_served

log = logging.getLogger(__name__)

RUNS_DIR = "runs"
LOSS_PLOT = "loss.png"
TRAINING_LOG = "training_log.json"


@dataclass
class TrainResult:
    """What a run produced. `adapter_path` is None for `--estimate-only`."""

    name: str
    estimate: MemoryEstimate
    adapter_path: Path | None = None
    manifest: Manifest | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    wall_time_s: float = 0.0
    peak_memory_bytes: int | None = None
    curl: str | None = None


def train(
    config: TrainConfig,
    *,
    env: Mapping[str, str] | None = None,
    out: Callable[[str], None] = print,
    progress_bar: bool = True,
    callbacks: Sequence[Any] = (),
) -> TrainResult:
    """Train, evaluate and register one adapter as `config` says; see the module docstring.

    `env` stands in for `os.environ` (HOTLORA_HOME, HOTLORA_ADAPTERS_DIR, HOTLORA_API_KEY); `out` receives
    each progress line; `callbacks` are extra `transformers.TrainerCallback`s for the SFTTrainer.
    """
    started = time.monotonic()
    env = os.environ if env is None else env
    # under `accelerate launch` (several processes) the main one evaluates, registers and talks
    rank, local_rank, world = (int(env.get(k, d)) for k, d in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1")))
    main = rank == 0
    if not main:
        out = _quiet
    home = (config.home or default_home_dir(env)).expanduser()
    store_dir = config.adapters_dir or env.get("HOTLORA_ADAPTERS_DIR") or default_store_dir({**env, "HOTLORA_HOME": str(home)})
    store = AdapterStore(Path(store_dir).expanduser())
    _require_train_extra(config)
    _refuse_taken_name(store, config)

    dataset = _load_dataset(config)
    out(f"dataset: {dataset.source}: {len(dataset.rows)} training rows, {len(dataset.eval_rows)} evaluation rows "
        f"({dataset.format.replace('_', '/')} format, sha256 {dataset.sha256[:12]})")  # fmt: skip

    resolved = resolve_base(config.base, home / "models")
    device = pick_device(config.device)
    load_device = f"cuda:{local_rank}" if device == "cuda" and world > 1 else device
    _check_optional_deps(config, device)
    meta = meta_model(resolved.source, config.attn_implementation)
    if meta.config._attn_implementation != config.attn_implementation:  # eager where the family has no SDPA
        config = config.model_copy(update={"attn_implementation": meta.config._attn_implementation})
    spec = base_spec(meta)
    shape = model_shape(meta)
    check_module_names(config, meta)
    trainable = count_trainable(meta, config)

    tokenizer = load_tokenizer(resolved.source, config.chat_template)
    train_enc, eval_enc = encode_dataset(tokenizer, dataset)
    warning = length_report(train_enc + eval_enc, config.max_length)
    if warning:
        out(f"warning: {warning}")
    longest = max(len(e.input_ids) for e in train_enc + eval_enc)
    seq_len = config.max_length if config.packing else min(config.max_length, longest)
    est = estimate(
        shape,
        trainable_params=trainable,
        batch_size=config.per_device_train_batch_size,
        seq_len=seq_len,
        compute_dtype=compute_dtype_name(device),
        qlora=config.qlora,
        optim=config.optim,
        attention=config.attn_implementation,
        gradient_checkpointing=config.gradient_checkpointing,
    )
    out(est.describe())
    _check_fits(est, device, config)
    result = TrainResult(config.name, est)
    if config.estimate_only:
        return result

    run_dir = home / RUNS_DIR / config.name
    if not main:  # the main process prepares the run folder and does everything after training
        make_private_dirs(run_dir)
        _run(config, result, dataset, train_enc, eval_enc, resolved, load_device, spec, tokenizer, store, run_dir,
             run_dir, started, out, progress_bar, callbacks, main=False)  # fmt: skip
        return result
    _prepare_run_dir(run_dir, config.resume)
    scratch = Path(tempfile.mkdtemp(prefix=".scratch-", dir=run_dir))
    try:
        _run(config, result, dataset, train_enc, eval_enc, resolved, load_device, spec, tokenizer, store, run_dir,
             scratch, started, out, progress_bar, callbacks)  # fmt: skip
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if not _checkpoints(run_dir):
            shutil.rmtree(run_dir, ignore_errors=True)
            _remove_empty(run_dir.parent)
    if config.server is not None:
        api_key = env.get("HOTLORA_API_KEY") or None
        wait_until_served(config.server, config.name, api_key=api_key, out=out)
    result.curl = curl_line(
        config.server or "http://127.0.0.1:8000",
        config.name,
        chat=dataset.chat,
        sample=_sample_input(dataset),
        api_key_set=bool(env.get("HOTLORA_API_KEY")),
    )
    if config.server is None:
        out(f"registered in {store.root}; a server watching it (hotlora serve --adapters-dir {store.root}) serves "
            "it within seconds. Try:")  # fmt: skip
    else:
        out(f"{config.name} is served by {config.server}. Try:")
    out(result.curl)
    return result


def _run(
    config: TrainConfig,
    result: TrainResult,
    dataset: Dataset,
    train_enc: list[Encoded],
    eval_enc: list[Encoded],
    resolved: Any,
    device: str,
    spec: Any,
    tokenizer: Any,
    store: AdapterStore,
    run_dir: Path,
    scratch: Path,
    started: float,
    out: Callable[[str], None],
    progress_bar: bool,
    callbacks: Sequence[Any],
    *,
    main: bool = True,
) -> None:
    import datasets
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import PrinterCallback
    from transformers.utils import logging as hf_logging
    from trl import SFTConfig, SFTTrainer

    from .sft import CompactLossSFTTrainer, compact_loss_supported

    hf_logging.set_verbosity_error()
    kind = device.split(":", 1)[0]  # "cuda:1" under a multi-GPU launch
    datasets.disable_progress_bars()
    torch.manual_seed(config.seed)
    if kind == "cpu":
        threads = cpu_threads(config.torch_threads)
        torch.set_num_threads(threads)
        out(f"using {threads} CPU thread(s) of {os.cpu_count()} cores (idle ones; --threads to choose)")
    out(f"loading {resolved.name} on {device}{' in 4-bit NF4 (QLoRA)' if config.qlora else ''}")
    model = load_for_training(resolved.source, device=device, qlora=config.qlora,
                              attn_implementation=config.attn_implementation)  # fmt: skip
    rss_loaded = current_rss()

    task_metrics: dict[str, Any] = {}
    samples: list[dict[str, str]] = []
    if config.task is not None and main:
        out("evaluating the base model on the evaluation lists (greedy)")
        task_metrics["base"], _ = _evaluate_task(model, tokenizer, config, out)

    if config.qlora:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.gradient_checkpointing)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **config.lora_kwargs()))
    init_dir: Path | None = None
    if config.init_lora_weights in ("pissa", "olora") and main:
        # PiSSA/OLoRA move the adapter's initial value out of the base weights; saving relative to that
        # initial adapter turns the result into a plain LoRA for the unmodified base (PEFT's conversion).
        init_dir = scratch / "initial-adapter"
        model.peft_config["default"].init_lora_weights = True
        model.save_pretrained(init_dir)
        model.peft_config["default"].init_lora_weights = config.init_lora_weights

    train_ds = datasets.Dataset.from_dict({"input_ids": [e.input_ids for e in train_enc],
                                           "labels": [e.labels for e in train_enc]})  # fmt: skip
    eval_ds = None
    if eval_enc:
        eval_ds = datasets.Dataset.from_dict({"input_ids": [e.input_ids for e in eval_enc],
                                              "labels": [e.labels for e in eval_enc]})  # fmt: skip
    total_steps = _total_steps(config, train_enc)
    logging_steps = config.logging_steps or max(1, total_steps // 50)
    eval_kwargs: dict[str, Any] = {"eval_strategy": "no"}
    if eval_ds is not None:
        eval_kwargs = {"eval_strategy": "steps", "eval_steps": max(1, math.ceil(total_steps / 3)),
                       "per_device_eval_batch_size": config.per_device_train_batch_size}  # fmt: skip
    sft_kwargs = config.sft_kwargs()
    # transformers 5 renamed it; TRL's SFTConfig still defaults the old name to True
    sft_kwargs["activation_checkpointing"] = sft_kwargs.pop("gradient_checkpointing")
    args = SFTConfig(
        output_dir=str(run_dir),
        **sft_kwargs,
        **eval_kwargs,
        logging_steps=logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=1,
        report_to="none",
        bf16=bf16_autocast(kind, config.qlora),
        fp16=False,
        use_cpu=kind == "cpu",
        disable_tqdm=not progress_bar,
        dataloader_num_workers=0,
    )
    trainer_class = SFTTrainer
    if kind == "cpu" and compact_loss_supported(model):
        trainer_class = CompactLossSFTTrainer  # no full-vocabulary projection of prompt positions
    trainer = trainer_class(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                            processing_class=tokenizer, callbacks=list(callbacks) or None)  # fmt: skip
    if not progress_bar:
        trainer.remove_callback(PrinterCallback)  # no per-step log lines either; the summary is printed
    out(f"training: {total_steps} steps (batch {config.per_device_train_batch_size} x "
        f"{config.gradient_accumulation_steps} accumulation, {_count_trainable(model):,} trainable parameters)")  # fmt: skip
    reset_peak(kind)
    train_started = time.monotonic()
    output = trainer.train(resume_from_checkpoint=True if config.resume else None)
    train_runtime = time.monotonic() - train_started
    history = list(trainer.state.log_history)
    eval_loss = next((h["eval_loss"] for h in reversed(history) if "eval_loss" in h), None)
    if eval_ds is not None and not any("eval_loss" in h and h.get("step") == trainer.state.global_step for h in history):
        eval_loss = trainer.evaluate()["eval_loss"]
        history = list(trainer.state.log_history)
    peak = peak_memory(kind)
    result.peak_memory_bytes = peak
    peak_kind = "peak CUDA memory allocated" if kind == "cuda" else "peak resident memory of this process"
    out(f"memory: estimated {fmt_bytes(result.estimate.total)}, measured {peak_kind} {fmt_bytes(peak)}"
        + (f" ({fmt_bytes(rss_loaded)} after loading the model)" if kind == "cpu" else ""))  # fmt: skip

    if not main:
        return  # the main process evaluates and registers
    if config.task is not None:
        out("evaluating the adapter on the evaluation lists (greedy)")
        task_metrics["adapter"], samples = _evaluate_task(model, tokenizer, config, out)
        b, a = task_metrics["base"], task_metrics["adapter"]
        out(f"{config.task}: word accuracy adapter {a['word_accuracy']:.1%} vs base {b['word_accuracy']:.1%}; "
            f"exact match adapter {a['exact_match']:.1%} vs base {b['exact_match']:.1%}")  # fmt: skip

    export = scratch / "adapter"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if init_dir is not None:
            model.save_pretrained(export, path_initial_model_for_weight_conversion=str(init_dir))
        else:
            model.save_pretrained(export)
    _set_base_name(export, resolved.name)
    metrics: dict[str, Any] = {"train_loss": output.training_loss, "eval_loss": eval_loss}
    if config.task is not None:
        metrics[config.task] = task_metrics
    result.metrics = metrics
    plot_losses(history, export / LOSS_PLOT, title=f"{config.name} ({resolved.name})")
    (export / TRAINING_LOG).write_text(json.dumps({"log_history": history, "samples": samples}, indent=1) + "\n")

    wall = time.monotonic() - started
    result.wall_time_s = wall
    files = inspect_adapter(export)
    manifest = Manifest.for_adapter(config.name, files, source="trained", base=spec, base_model=resolved.name,
                                    recipe=config.recipe(), dataset_hash=dataset.sha256, eval_metrics=metrics)  # fmt: skip
    extra = {
        "dataset": {
            "source": dataset.source, "format": dataset.format, "sha256": dataset.sha256,
            "size_bytes": dataset.size_bytes, "train_rows": len(train_enc), "eval_rows": len(eval_enc),
            "train_tokens": sum(len(e.input_ids) for e in train_enc),
            "trained_tokens": sum(e.trained_tokens for e in train_enc),
        },
        "training": {
            "wall_time_s": round(wall, 1), "train_runtime_s": round(train_runtime, 1),
            "global_step": trainer.state.global_step, "device": kind,
            "compute_dtype": compute_dtype_name(kind), "bf16_autocast": bf16_autocast(kind, config.qlora),
            "peak_memory_bytes": peak, "peak_memory_kind": peak_kind,
            "memory_estimate": result.estimate.as_dict(), "versions": _versions(),
        },
    }  # fmt: skip
    manifest = Manifest.model_validate({**manifest.model_dump(), **extra})
    stored = store.register(config.name, export, manifest=manifest, overwrite=config.overwrite, base=spec)
    shutil.rmtree(run_dir, ignore_errors=True)  # checkpoints are not needed once registered
    result.adapter_path = stored.path
    result.manifest = stored.manifest
    out(f"registered {config.name!r} at {stored.path} in {wall:.0f} s (training {train_runtime:.0f} s)")


def _quiet(_: str) -> None:
    pass


def _evaluate_task(model: Any, tokenizer: Any, config: TrainConfig, out: Callable[[str], None]) -> tuple[dict[str, Any], list[dict[str, str]]]:
    from .evaluate import generate_replies

    training, sentences = piglatin.split_sentences()
    sources = [s.text for s in sentences]
    references = [piglatin.to_pig_latin(s) for s in sources]
    longest = max(len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in references)
    budget = min(config.eval_max_new_tokens, longest + 16)
    t0 = time.monotonic()
    # decoding reads every weight once per step whatever the batch: few large batches are fastest
    on_cuda = next(model.parameters()).device.type == "cuda"
    replies = generate_replies(model, tokenizer, sources, max_new_tokens=budget,
                               batch_size=len(sources) if on_cuda else 40)  # fmt: skip
    score = piglatin.score(replies, references, [piglatin.to_pig_latin(s.text) for s in training])
    out(f"  {score.sentences} sentences in {time.monotonic() - t0:.0f} s: word accuracy {score.word_accuracy:.1%} "
        f"(words seen in training {score.seen_word_accuracy:.1%}, the {score.unseen_words} unseen "
        f"{score.unseen_word_accuracy:.1%}), exact match {score.exact_match:.1%}")  # fmt: skip
    samples = [{"input": s, "reference": r, "output": o} for s, r, o in zip(sources, references, replies, strict=True)]
    return score.as_dict(), samples[:20]


def cpu_threads(requested: int | None) -> int:
    """Torch threads for CPU work: `requested`, else as many as there are idle cores (at least one).

    With more threads than idle cores every parallel op waits for a thread the OS has not scheduled yet,
    and a step takes several times longer (docs/performance.md, "Training").
    """
    import torch

    if requested:
        return requested
    return max(1, min(torch.get_num_threads(), int(idle_cores() + 0.5)))


def idle_cores(sample_s: float = 0.5) -> float:
    """Cores idle now, from /proc/stat over `sample_s` (Linux); elsewhere cores minus the 1-minute load
    average, which still counts a load that ended minutes ago (and so once halved a run's threads here)."""
    cores = os.cpu_count() or 1
    try:
        before = _cpu_times()
        time.sleep(sample_s)
        after = _cpu_times()
    except (OSError, ValueError, IndexError):
        return cores - os.getloadavg()[0]
    total = sum(after) - sum(before)
    idle = (after[3] + after[4]) - (before[3] + before[4])  # idle + iowait
    return cores * idle / total if total > 0 else float(cores)


def _cpu_times() -> list[int]:
    """The aggregate `cpu` line of /proc/stat: user nice system idle iowait irq softirq steal (jiffies)."""
    with open("/proc/stat", encoding="ascii") as f:
        return [int(field) for field in f.readline().split()[1:9]]


def check_module_names(config: TrainConfig, model: Any) -> None:
    """Refuse target_modules / modules_to_save names the base lacks, listing the names it has."""
    import torch

    names = [n for n, _ in model.named_modules() if n]
    linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
    targets = config.target_modules
    problems: list[str] = []
    if isinstance(targets, str) and targets != "all-linear":
        try:
            pattern = re.compile(targets)
        except re.error as e:
            raise ConfigError(f"--target-modules {targets!r} is not a valid regular expression: {e}") from None
        if not any(pattern.fullmatch(n) for n in names):
            problems.append(f"--target-modules {targets!r} matches no module of the base")
    elif isinstance(targets, list):
        missing = [t for t in targets if not _has_module(names, t)]
        if missing:
            problems.append(f"--target-modules: the base has no module named {', '.join(map(repr, missing))}")
    missing_save = [t for t in config.modules_to_save or [] if not _has_module(names, t)]
    if missing_save:
        problems.append(f"--modules-to-save: the base has no module named {', '.join(map(repr, missing_save))}")
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
    return _count_trainable(peft_model)


def _count_trainable(model: Any) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


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
            raise ConfigError("--eval-split does not apply to --task piglatin: its evaluation lists are fixed (61-72)")
        return piglatin.task_dataset(config.seed)
    assert config.data is not None
    return load_jsonl(config.data).split(config.eval_split, config.seed)


def _require_train_extra(config: TrainConfig) -> None:
    import importlib.util

    missing = [m for m in ("trl", "datasets", "matplotlib") if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"the trainer needs {', '.join(missing)}: pip install 'hotlora[train]'")
    if config.server is not None and importlib.util.find_spec("hotlora_client") is None:
        raise ConfigError("--server needs the hotlora client SDK: pip install ./clients/python")


def _check_optional_deps(config: TrainConfig, device: str) -> None:
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
    hints = [f"a smaller --batch-size (now {config.per_device_train_batch_size}, with --grad-accum to keep the "
             "effective batch)", f"a smaller --max-seq-length (now {config.max_length})"]  # fmt: skip
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


def _prepare_run_dir(run_dir: Path, resume: bool) -> None:
    if resume:
        if not _checkpoints(run_dir):
            raise ConfigError(f"--resume: no checkpoint to resume from in {run_dir} (run without --resume)")
        return
    if run_dir.exists():
        shutil.rmtree(run_dir)  # an earlier interrupted run of this name: start afresh
    make_private_dirs(run_dir)


def _checkpoints(run_dir: Path) -> list[Path]:
    try:
        return sorted(p for p in run_dir.iterdir() if p.name.startswith("checkpoint-") and p.is_dir())
    except OSError:
        return []


def _remove_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass


def _total_steps(config: TrainConfig, train_enc: list[Encoded]) -> int:
    if config.max_steps > 0:
        return config.max_steps
    if config.packing:
        rows = max(1, math.ceil(sum(len(e.input_ids) for e in train_enc) / config.max_length))
    else:
        rows = len(train_enc)
    per_epoch = max(1, math.ceil(rows / config.per_device_train_batch_size) // config.gradient_accumulation_steps)
    return max(1, math.ceil(per_epoch * config.num_train_epochs))


def _set_base_name(adapter_dir: Path, base_id: str) -> None:
    """Name the base in adapter_config.json by id, not by this machine's cache path."""
    path = adapter_dir / "adapter_config.json"
    config = json.loads(path.read_text())
    config["base_model_name_or_path"] = EMBEDDED_HUB_ID if base_id == EMBEDDED_MODEL_NAME else base_id
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _sample_input(dataset: Dataset) -> str | None:
    rows = dataset.eval_rows or dataset.rows
    data = rows[0].data
    if dataset.format == "messages":
        return next((m["content"] for m in data["messages"] if m["role"] == "user"), None)
    if dataset.format == "conversational_prompt_completion":
        return next((m["content"] for m in data["prompt"] if m["role"] == "user"), None)
    if dataset.format == "prompt_completion":
        return data["prompt"] or None
    return data["text"][:40] or None


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found: dict[str, str] = {}
    for dist in ("hotlora", "torch", "transformers", "peft", "trl", "bitsandbytes"):
        try:
            found[dist] = version(dist)
        except PackageNotFoundError:
            continue
    return found


def plot_losses(history: list[dict[str, Any]], path: Path, *, title: str) -> None:
    """The training (and evaluation) loss against the step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(h["step"], h["loss"]) for h in history if "loss" in h and "step" in h]
    evals = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h and "step" in h]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss", color="tab:blue")
    if evals:
        ax.plot(*zip(*evals, strict=True), "o-", label="eval loss", color="tab:orange")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if train or evals:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
