"""One training run: preflight -> fit -> save -> evaluate (as served) -> register, each a step over one `Run`.

Everything that can be refused is refused before the model's weights load (`preflight`). Registration is
the store's atomic rename, so an interrupted run (Ctrl-C) never leaves a half-registered adapter; its
temporary files are removed, and only checkpoints (for `--resume`) are kept.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hotlora_adapters.private import make_private_dirs

from .config import TrainConfig
from .errors import ConfigError
from .evaluate import score_served
from .fit import fit, load_model
from .preflight import preflight
from .report import announce, register, save_adapter
from .run import Run, TrainResult

__all__ = ["TrainResult", "train"]


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
    run = Run.begin(config, env, out, progress_bar=progress_bar, callbacks=callbacks)
    preflight(run)
    if run.config.estimate_only:
        return run.result
    if not run.main:  # the main process prepares the run folder and does everything after training
        make_private_dirs(run.run_dir)
        run.scratch = run.run_dir
        _train_and_register(run)
        return run.result
    with _run_folder(run):
        _train_and_register(run)
    announce(run)
    return run.result


def _train_and_register(run: Run) -> None:
    load_model(run)
    fit(run)
    if not run.main:
        return
    export = save_adapter(run)
    score_served(run, export)
    register(run, export)


@contextmanager
def _run_folder(run: Run) -> Iterator[None]:
    """The run folder for checkpoints and a scratch folder in it; on the way out the scratch is removed,
    and so is the run folder unless it keeps a checkpoint (an interrupted run, for `--resume`)."""
    run_dir = run.run_dir
    _prepare_run_dir(run_dir, run.config.resume)
    run.scratch = Path(tempfile.mkdtemp(prefix=".scratch-", dir=run_dir))
    try:
        yield
    finally:
        shutil.rmtree(run.scratch, ignore_errors=True)
        if not _checkpoints(run_dir):
            shutil.rmtree(run_dir, ignore_errors=True)
            _remove_empty(run_dir.parent)


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
