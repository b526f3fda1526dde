"""The built-in Pig Latin task, end to end, as a user runs it: wall time, peak memory, accuracy vs the base.

    python bench/train_piglatin.py [--store DIR] [--home DIR] [-- extra `hotlora train` options]

Runs `hotlora train --task piglatin --name piglatin-bench` (the default recipe unless options are given
after `--`) as a subprocess into a throw-away store (or `--store`), times the whole command — model
loading, training, the evaluation through a real `hotlora serve` (the 4-bit base as served, greedy chats
of the 120 sentences of lists 61-72 to the base and to the adapter) and registration included — and
prints the figures recorded in the adapter's manifest, with the CPU they were measured on. Not a test:
past runs' figures are in docs/performance.md ("Training"). Target (issue 25): the whole command in at
most 20 minutes, word accuracy as served >= 80%.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NAME = "piglatin-bench"


def hotlora_train() -> list[str]:
    script = Path(sys.executable).parent / "hotlora"
    return [str(script), "train"] if script.is_file() else [sys.executable, "-m", "hotlora_trainer"]


def cpu_model() -> str:
    """The CPU's model name and whether it has AVX512-BF16 (the figures differ by CPU: docs/performance.md)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown CPU"
    name = next(
        (line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?"
    )
    return f"{name}, {'AVX512-BF16' if 'avx512_bf16' in info else 'no AVX512-BF16'}"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--store", type=Path, help="adapter store to register into (default: a temporary one)"
    )
    parser.add_argument(
        "--home", type=Path, help="HOTLORA_HOME for the converted model (default: the usual one)"
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="options after `--` go to hotlora train")
    args = parser.parse_args()
    extra = args.extra[1:] if args.extra[:1] == ["--"] else args.extra

    with tempfile.TemporaryDirectory(prefix="hotlora-bench-") as tmp:
        store = args.store or Path(tmp) / "store"
        cmd = [
            *hotlora_train(),
            "--task",
            "piglatin",
            "--name",
            NAME,
            "--adapters-dir",
            str(store),
            "--overwrite",
            *(["--home", str(args.home)] if args.home else []),
            *extra,
        ]
        print("$", " ".join(cmd), flush=True)
        started = time.monotonic()
        result = subprocess.run(cmd, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        wall = time.monotonic() - started
        if result.returncode != 0:
            print(f"hotlora train failed with exit status {result.returncode}", file=sys.stderr)
            return result.returncode
        manifest = json.loads((store / NAME / "hotlora.json").read_text())

    scores = manifest["eval_metrics"]["piglatin"]
    training = manifest["training"]
    if "error" in scores:
        print(f"the served evaluation failed: {scores['error']}", file=sys.stderr)
        return 1
    served = scores["served"]
    figures = {
        "command_wall_time_s": round(wall, 1),
        "train_runtime_s": training["train_runtime_s"],
        "device": training["device"],
        "peak_memory_bytes": training["peak_memory_bytes"],
        "peak_memory_kind": training["peak_memory_kind"],
        "memory_estimate_bytes": training["memory_estimate"]["total"],
        "train_loss": manifest["eval_metrics"]["train_loss"],
        "eval_loss": manifest["eval_metrics"]["eval_loss"],
        "adapter": scores["adapter"],
        "base": scores["base"],
        "served": served,
        "recipe": manifest["recipe"],
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
    }
    gib = 1024**3
    print()
    print(
        f"whole command:      {wall / 60:.1f} min (training {training['train_runtime_s'] / 60:.1f} min, "
        f"{training['global_step']} steps on {training['device']}, {os.cpu_count()} CPU cores: {cpu_model()})"
    )
    print(
        f"scored as served:   hotlora serve, base {served['model']} ({served['quantization']}), "
        f"{served['decoding']}"
    )
    print(
        f"peak memory:        {training['peak_memory_bytes'] / gib:.2f} GiB ({training['peak_memory_kind']}); "
        f"estimated {training['memory_estimate']['total'] / gib:.2f} GiB"
    )
    print(f"losses:             train {figures['train_loss']:.3f}, eval {figures['eval_loss']:.3f}")
    print(
        f"word accuracy:      adapter {scores['adapter']['word_accuracy']:.1%}   base {scores['base']['word_accuracy']:.1%}"
        "   (as served)"
    )
    for kind in ("seen", "unseen"):
        print(
            f"  words {kind + ' in training:':19} adapter {scores['adapter'][f'{kind}_word_accuracy']:.1%}   "
            f"base {scores['base'][f'{kind}_word_accuracy']:.1%}"
        )
    print(
        f"exact match:        adapter {scores['adapter']['exact_match']:.1%}   base {scores['base']['exact_match']:.1%}"
    )
    target = wall <= 20 * 60 and scores["adapter"]["word_accuracy"] >= 0.8
    print(f"target (<= 20 min, word accuracy as served >= 80%): {'met' if target else 'NOT met'}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
