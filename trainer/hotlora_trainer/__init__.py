"""hotlora's trainer: a JSONL dataset in, a registered LoRA adapter out.

    from hotlora_trainer import TrainConfig, train
    result = train(TrainConfig(name="piglatin", task="piglatin"))

`import hotlora_trainer` is light (pydantic only); torch, transformers, PEFT and TRL load when `train` runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .config import TrainConfig
from .errors import (
    BaseModelError,
    ConfigError,
    DatasetError,
    MemoryEstimateError,
    ServerWaitError,
    TrainError,
)

if TYPE_CHECKING:
    from .run import TrainResult

__all__ = [
    "BaseModelError",
    "ConfigError",
    "DatasetError",
    "MemoryEstimateError",
    "ServerWaitError",
    "TrainConfig",
    "TrainError",
    "TrainResult",
    "train",
]


def train(config: TrainConfig, **kwargs: Any) -> TrainResult:
    """Train, evaluate and register one adapter (see `hotlora_trainer.runner.train`)."""
    from .runner import train as _train

    return _train(config, **kwargs)


def __getattr__(name: str) -> Any:
    if name == "TrainResult":
        from .run import TrainResult

        return TrainResult
    raise AttributeError(name)
