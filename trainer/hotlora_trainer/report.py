"""Report: save the adapter with its loss plot, training log and manifest, register it, and say how to use it.

Registration is the store's atomic rename, so the adapter appears whole or not at all; with `--server`
the run then waits until that server serves it.
"""

from __future__ import annotations

import json
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

from hotlora_adapters import TRAINING_LOG_FILENAME, Manifest, inspect_adapter
from hotlora_adapters.runtime.base_model import EMBEDDED_HUB_ID, EMBEDDED_MODEL_NAME

from .base_model import base_weights, bf16_autocast, compute_dtype_name
from .data import Dataset
from .notify import curl_line, wait_until_served
from .run import Run

LOSS_PLOT = "loss.png"


def register(run: Run, export: Path) -> None:
    """Add the loss plot, log and manifest to the saved adapter `export`, and register it in the store."""
    config, fitted = run.config, run.fitted
    metrics: dict[str, Any] = {"train_loss": fitted.train_loss, "eval_loss": fitted.eval_loss}
    if config.task is not None:
        metrics[config.task] = run.task_metrics
    run.result.metrics = metrics
    plot_losses(fitted.history, export / LOSS_PLOT, title=f"{config.name} ({run.base.name})")
    log = {"log_history": fitted.history, "evaluation": run.evaluation}
    (export / TRAINING_LOG_FILENAME).write_text(json.dumps(log, indent=1) + "\n")

    run.result.wall_time_s = wall = time.monotonic() - run.started
    stored = run.store.register(
        config.name,
        export,
        manifest=_manifest(run, export, metrics),
        overwrite=config.overwrite,
        base=run.spec,
    )
    shutil.rmtree(run.run_dir, ignore_errors=True)  # checkpoints are not needed once registered
    run.result.adapter_path = stored.path
    run.result.manifest = stored.manifest
    run.out(
        f"registered {config.name!r} at {stored.path} in {wall:.0f} s (training {fitted.runtime_s:.0f} s)"
    )


def announce(run: Run) -> None:
    """With `--server`, wait until that server serves the adapter; then print a `curl` line to try it."""
    config = run.config
    if config.server is not None:
        api_key = run.env.get("HOTLORA_API_KEY") or None
        wait_until_served(config.server, config.name, api_key=api_key, out=run.out)
    run.result.curl = curl_line(
        config.server or "http://127.0.0.1:8000",
        config.name,
        chat=run.dataset.chat,
        sample=_sample_input(run.dataset),
        api_key_set=bool(run.env.get("HOTLORA_API_KEY")),
    )
    if config.server is None:
        store = run.store.root
        run.out(
            f"registered in {store}; a server watching it (hotlora serve --adapters-dir {store}) serves "
            "it within seconds. Try:"
        )
    else:
        run.out(f"{config.name} is served by {config.server}. Try:")
    run.out(run.result.curl)


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


def save_adapter(run: Run) -> Path:
    """PEFT's files of the trained adapter in the scratch folder, naming the base by id."""
    export = run.scratch / "adapter"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if run.init_dir is not None:
            run.model.save_pretrained(export, path_initial_model_for_weight_conversion=str(run.init_dir))
        else:
            run.model.save_pretrained(export)
    _set_base_name(export, run.base.name)
    return export


def _manifest(run: Run, export: Path, metrics: dict[str, Any]) -> Manifest:
    """`hotlora.json`: the adapter's description, recipe and metrics, plus the dataset and the training."""
    config, dataset, fitted, kind = run.config, run.dataset, run.fitted, run.kind
    manifest = Manifest.for_adapter(
        config.name,
        inspect_adapter(export),
        source="trained",
        base=run.spec,
        base_model=run.base.name,
        recipe=config.recipe(),
        dataset_hash=dataset.sha256,
        eval_metrics=metrics,
    )
    extra = {
        "dataset": {
            "source": dataset.source,
            "format": dataset.format,
            "sha256": dataset.sha256,
            "size_bytes": dataset.size_bytes,
            "train_rows": len(run.train_enc),
            "eval_rows": len(run.eval_enc),
            "train_tokens": sum(len(e.input_ids) for e in run.train_enc),
            "trained_tokens": sum(e.trained_tokens for e in run.train_enc),
            **({"eval_source": dataset.eval_source} if dataset.eval_source else {}),
        },
        "training": {
            "wall_time_s": round(run.result.wall_time_s, 1),
            "train_runtime_s": round(fitted.runtime_s, 1),
            "global_step": fitted.global_step,
            "device": kind,
            "compute_dtype": compute_dtype_name(kind),
            "base_weights": base_weights(kind, config.qlora),
            "bf16_autocast": bf16_autocast(kind, config.bf16),
            "peak_memory_bytes": fitted.peak_memory,
            "peak_memory_kind": fitted.peak_kind,
            "memory_estimate": run.result.estimate.as_dict(),
            "versions": _versions(),
        },
    }
    return Manifest.model_validate({**manifest.model_dump(), **extra})


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
