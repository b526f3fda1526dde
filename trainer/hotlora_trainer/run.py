"""One training run as its steps hand it along: what was asked, where things go, and what each step made.

The steps (`preflight`, `fit`, `evaluate`, `report`) each read what earlier ones set on the `Run` and set
their own part; `runner` calls them in order.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hotlora_adapters import AdapterStore, BaseSpec, Manifest, default_home_dir, default_store_dir
from hotlora_adapters.runtime.base_model import ResolvedBase

from .config import TrainConfig
from .data import Dataset
from .encoding import Encoded
from .memory import MemoryEstimate

RUNS_DIR = "runs"


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


@dataclass
class Fitted:
    """What training measured."""

    train_loss: float
    eval_loss: float | None
    history: list[dict[str, Any]]
    runtime_s: float
    global_step: int
    peak_memory: int
    peak_kind: str  # what `peak_memory` counts, in words


def _later() -> Any:
    """A field a step sets: not in `__init__`, and an AttributeError if read before that step ran."""
    return field(init=False, repr=False)


@dataclass
class Run:
    """The state of one run. The fields after `started` are set by the step named above them."""

    config: TrainConfig
    env: Mapping[str, str]
    out: Callable[[str], None]
    home: Path
    store: AdapterStore
    progress_bar: bool = True
    callbacks: Sequence[Any] = ()
    rank: int = 0  # under `accelerate launch` (several processes) rank 0 evaluates, registers and talks
    local_rank: int = 0
    world: int = 1
    started: float = field(default_factory=time.monotonic)
    # preflight
    dataset: Dataset = _later()
    base: ResolvedBase = _later()
    device: str = _later()  # where the weights load: "cpu", "cuda", or "cuda:<local rank>" under a launch
    spec: BaseSpec = _later()
    tokenizer: Any = _later()
    train_enc: list[Encoded] = _later()
    eval_enc: list[Encoded] = _later()
    result: TrainResult = _later()
    # runner: where checkpoints go; scratch holds the export and PiSSA's initial adapter
    scratch: Path = _later()
    # fit
    model: Any = _later()
    rss_loaded: int = _later()
    init_dir: Path | None = None  # the initial adapter, for PiSSA/OLoRA's conversion to plain LoRA
    fitted: Fitted = _later()
    # evaluate (a built-in task only, through a server); `evaluation`: per sentence its input, reference,
    # and the base's and the adapter's replies
    task_metrics: dict[str, Any] = field(default_factory=dict)
    evaluation: list[dict[str, str]] = field(default_factory=list)

    @classmethod
    def begin(
        cls,
        config: TrainConfig,
        env: Mapping[str, str] | None = None,
        out: Callable[[str], None] = print,
        **options: Any,
    ) -> Run:
        """A run of `config`; `env` stands in for `os.environ`; `options` are `progress_bar` and `callbacks`."""
        env = os.environ if env is None else env
        rank, local_rank, world = (
            int(env.get(k, d)) for k, d in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"))
        )
        home = (config.home or default_home_dir(env)).expanduser()
        store_dir = (
            config.adapters_dir
            or env.get("HOTLORA_ADAPTERS_DIR")
            or default_store_dir({**env, "HOTLORA_HOME": str(home)})
        )
        return cls(
            config,
            env,
            out if rank == 0 else _quiet,
            home,
            AdapterStore(Path(store_dir).expanduser()),
            rank=rank,
            local_rank=local_rank,
            world=world,
            **options,
        )

    @property
    def main(self) -> bool:
        """The process that evaluates, registers and prints (the only one, unless launched on several)."""
        return self.rank == 0

    @property
    def kind(self) -> str:
        """The device type: "cpu" or "cuda"."""
        return self.device.split(":", 1)[0]

    @property
    def run_dir(self) -> Path:
        """Checkpoints, kept for `--resume` until the adapter is registered."""
        return self.home / RUNS_DIR / self.config.name


def _quiet(_: str) -> None:
    pass
