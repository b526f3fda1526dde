"""Fit: load the base to train, wrap it in PEFT's LoRA and train it with TRL's SFTTrainer.

torch, PEFT and TRL are imported here only when a step runs, so `import hotlora_trainer` stays light.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from typing import Any

from .base_model import bf16_autocast, load_for_training
from .config import TrainConfig
from .encoding import Encoded
from .memory import current_rss, fmt_bytes, peak_memory, reset_peak
from .preflight import trainable_parameters
from .run import Fitted, Run


def load_model(run: Run) -> None:
    """Seed, pick the CPU threads, and load the base's weights for training onto `run.device`."""
    import datasets
    import torch
    from transformers.utils import logging as hf_logging

    config = run.config
    hf_logging.set_verbosity_error()
    datasets.disable_progress_bars()
    torch.manual_seed(config.seed)
    if run.kind == "cpu":
        threads = cpu_threads(config.torch_threads)
        torch.set_num_threads(threads)
        run.out(f"using {threads} CPU thread(s) of {os.cpu_count()} cores (idle ones; --threads to choose)")
    run.out(f"loading {run.base.name} on {run.device}{' in 4-bit NF4 (QLoRA)' if config.qlora else ''}")
    run.model = load_for_training(
        run.base.source, device=run.device, qlora=config.qlora, attn_implementation=config.attn_implementation
    )
    run.rss_loaded = current_rss()


def fit(run: Run) -> None:
    """Wrap the loaded model in LoRA, train it, and set what training measured on `run.fitted`."""
    _wrap_lora(run)
    trainer = _sft_trainer(run)
    config = run.config
    batch = f"batch {config.per_device_train_batch_size} x {config.gradient_accumulation_steps} accumulation"
    if run.world > 1:
        batch += f" x {run.world} processes"
    run.out(
        f"training: {_total_steps(config, run.train_enc, run.world)} steps ({batch}, "
        f"{trainable_parameters(run.model):,} trainable parameters)"
    )
    reset_peak(run.kind)
    train_started = time.monotonic()
    output = trainer.train(resume_from_checkpoint=True if config.resume else None)
    runtime_s = time.monotonic() - train_started
    history = list(trainer.state.log_history)
    eval_loss = next((h["eval_loss"] for h in reversed(history) if "eval_loss" in h), None)
    if run.eval_enc and not any(
        "eval_loss" in h and h.get("step") == trainer.state.global_step for h in history
    ):
        eval_loss = trainer.evaluate()["eval_loss"]
        history = list(trainer.state.log_history)
    peak = peak_memory(run.kind)
    peak_kind = "peak CUDA memory allocated" if run.kind == "cuda" else "peak resident memory of this process"
    run.fitted = Fitted(
        output.training_loss, eval_loss, history, runtime_s, trainer.state.global_step, peak, peak_kind
    )
    run.result.peak_memory_bytes = peak
    run.out(
        f"memory: estimated {fmt_bytes(run.result.estimate.total)}, measured {peak_kind} {fmt_bytes(peak)}"
        + (f" ({fmt_bytes(run.rss_loaded)} after loading the model)" if run.kind == "cpu" else "")
    )


def _wrap_lora(run: Run) -> None:
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    config = run.config
    if getattr(run.model, "hf_quantizer", None) is not None:  # still 4-bit: QLoRA off a CPU
        run.model = prepare_model_for_kbit_training(
            run.model, use_gradient_checkpointing=config.gradient_checkpointing
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run.model = model = get_peft_model(
            run.model, LoraConfig(task_type="CAUSAL_LM", **config.lora_kwargs())
        )
    if config.init_lora_weights in ("pissa", "olora") and run.main:
        # PiSSA/OLoRA move the adapter's initial value out of the base weights; saving relative to that
        # initial adapter turns the result into a plain LoRA for the unmodified base (PEFT's conversion).
        run.init_dir = run.scratch / "initial-adapter"
        lora = model.peft_config["default"]
        assert isinstance(lora, LoraConfig)
        lora.init_lora_weights = True
        model.save_pretrained(str(run.init_dir))
        lora.init_lora_weights = config.init_lora_weights


def _sft_trainer(run: Run) -> Any:
    from transformers import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    from .sft import CompactLossSFTTrainer, compact_loss_supported

    config = run.config
    train_ds = _token_dataset(run.train_enc)
    eval_ds = _token_dataset(run.eval_enc) if run.eval_enc else None
    total_steps = _total_steps(config, run.train_enc, run.world)
    eval_kwargs: dict[str, Any] = {"eval_strategy": "no"}  # `fit` still computes eval_loss at the end
    if eval_ds is not None and config.task is None:  # a task is judged by its own evaluation after training
        eval_kwargs = {
            "eval_strategy": "steps",
            "eval_steps": max(1, math.ceil(total_steps / 3)),
            "per_device_eval_batch_size": config.per_device_train_batch_size,
        }
    sft_kwargs = config.sft_kwargs()
    # transformers 5 renamed it; TRL's SFTConfig still defaults the old name to True
    sft_kwargs["activation_checkpointing"] = sft_kwargs.pop("gradient_checkpointing")
    args = SFTConfig(
        output_dir=str(run.run_dir),
        **sft_kwargs,
        **eval_kwargs,
        logging_steps=config.logging_steps or max(1, total_steps // 50),
        logging_first_step=True,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=1,
        report_to="none",
        bf16=bf16_autocast(run.kind, config.bf16),
        fp16=False,
        use_cpu=run.kind == "cpu",
        disable_tqdm=not run.progress_bar,
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False if run.world > 1 else None,  # every LoRA weight is used
    )
    trainer_class = SFTTrainer
    if run.kind == "cpu" and run.world == 1 and compact_loss_supported(run.model):
        # no full-vocabulary projection of prompt positions; not under DDP, whose gradient sync is armed
        # by the wrapped model's own forward, which the compact loss goes around
        trainer_class = CompactLossSFTTrainer
    trainer = trainer_class(
        model=run.model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=run.tokenizer,
        callbacks=list(run.callbacks) or None,
    )
    if not run.progress_bar:
        trainer.remove_callback(PrinterCallback)  # no per-step log lines either; the summary is printed
    return trainer


def _token_dataset(encoded: list[Encoded]) -> Any:
    import datasets

    return datasets.Dataset.from_dict(
        {"input_ids": [e.input_ids for e in encoded], "labels": [e.labels for e in encoded]}
    )


def _total_steps(config: TrainConfig, train_enc: list[Encoded], world: int = 1) -> int:
    """Optimizer steps; each takes `per_device_train_batch_size` rows in each of the `world` processes."""
    if config.max_steps > 0:
        return config.max_steps
    if config.packing:
        rows = max(1, math.ceil(sum(len(e.input_ids) for e in train_enc) / config.max_length))
    else:
        rows = len(train_enc)
    per_epoch = max(
        1,
        math.ceil(rows / (config.per_device_train_batch_size * world)) // config.gradient_accumulation_steps,
    )
    return max(1, math.ceil(per_epoch * config.num_train_epochs))


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
