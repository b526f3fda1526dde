"""What the serving benchmarks share: the real base and its random adapters, percentiles, the report's header.

Importing it also puts tests/ on the path, so that a script can import `support.live_server` (the
helpers that start and stop a real `hotlora serve` on a loopback port) right after it.
"""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
sys.path.insert(0, str(REPO / "tests"))

from hotlora_adapters import AdapterStore  # noqa: E402

from support.live_server import save_random_lora  # noqa: E402


def model_folder(home: Path) -> Path:
    """The converted safetensors folder of the embedded base, as hotlora loads it (converted once)."""
    from hotlora_server.engine.loader import resolve_model
    from hotlora_server.settings import Settings

    return Path(resolve_model(Settings.build({"home": str(home)}, {}))[1])


def random_adapters(model_dir: Path, library: Path, names: tuple[str, ...]) -> None:
    """One gentle random r=16 PEFT adapter per name under `library`, each from its own seed."""
    for i, name in enumerate(names):
        save_random_lora(model_dir, library / name, seed=i, r=16, strength=0.25)


def register_all(store: Path, library: Path, names: tuple[str, ...]) -> None:
    """Register the adapters of `library` in the store, as the trainer does: servable without any call."""
    for name in names:
        AdapterStore(store).register(name, library / name)


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile, linearly interpolated between the closest ranks (NaN for no values)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def machine_header(title: str, stamp: str) -> list[str]:
    """The report's title and what makes its figures comparable: machine, packages, commit, command."""
    import torch

    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    cpu = next(
        (line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")),
        platform.processor() or "unknown",
    )
    ram_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    packages = ", ".join(
        f"{name} {version(name)}" for name in ("torch", "transformers", "peft", "bitsandbytes")
    )

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()

    dirty = " (uncommitted changes)" if git("status", "--porcelain", "--untracked-files=no") else ""
    return [
        f"# {title} {stamp}",
        "",
        f"- machine: {cpu}, {os.cpu_count()} cores, {ram_gib:.0f} GiB RAM, GPU: {gpu}",
        f"- packages: {packages}",
        f"- commit: {git('rev-parse', '--short', 'HEAD')}{dirty}",
        f"- command: `{shlex.join(['python', *sys.argv])}`",
    ]


def publish(title: str, stamp: str, report: str) -> None:
    """Print the markdown report and keep it as bench/results/<title>-<stamp>.md and <title>-latest.md."""
    print(report)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{title}-{stamp}.md").write_text(report)
    (RESULTS / f"{title}-latest.md").write_text(report)
