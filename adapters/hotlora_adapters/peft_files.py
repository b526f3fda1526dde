"""A PEFT LoRA adapter folder as files: config + safetensors header, checked for usability.

`inspect_adapter` is the single gate every adapter passes (listing, import, load): it refuses pickle
weights (loading them runs code), non-LoRA configs and corrupt files with a reason a user can act on,
and it reads no tensor data, so it is cheap enough to run on every store listing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .errors import InvalidAdapterError
from .peft_config import CONFIG_FILENAME, AdapterConfig, read_adapter_config
from .safetensors_header import read_safetensors_header

WEIGHTS_FILENAME = "adapter_model.safetensors"
PICKLE_WEIGHT_FILENAMES = ("adapter_model.bin", "adapter_model.pt", "adapter_model.pth", "adapter_model.pkl")
PICKLE_REFUSAL = "pickle weights are refused: loading them runs code; convert with safetensors"


@dataclass(frozen=True)
class AdapterFiles:
    """A validated adapter folder: its config and the shape of every saved tensor (no weights loaded)."""

    path: Path
    config: AdapterConfig
    tensor_shapes: dict[str, list[int]]
    tensor_dtypes: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def weights_path(self) -> Path:
        return self.path / WEIGHTS_FILENAME

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_FILENAME


def read_tensor_shapes(adapter_dir: Path) -> dict[str, list[int]]:
    """Map each tensor name in `<adapter_dir>/adapter_model.safetensors` to its shape, from the header alone."""
    header = read_safetensors_header(_weights_file(Path(adapter_dir)))
    return {name: list(info.shape) for name, info in header.tensors.items()}


def inspect_adapter(adapter_dir: Path) -> AdapterFiles:
    """Read and validate a PEFT LoRA folder; raise `InvalidAdapterError` saying why it is unusable."""
    adapter_dir = Path(adapter_dir)
    config = read_adapter_config(adapter_dir)
    header = read_safetensors_header(_weights_file(adapter_dir))
    if not header.tensors:
        raise InvalidAdapterError(f"{WEIGHTS_FILENAME} holds no tensors", path=adapter_dir)
    return AdapterFiles(
        path=adapter_dir,
        config=config,
        tensor_shapes={name: list(info.shape) for name, info in header.tensors.items()},
        tensor_dtypes={name: info.dtype for name, info in header.tensors.items()},
        metadata=header.metadata,
    )


def _weights_file(adapter_dir: Path) -> Path:
    weights = adapter_dir / WEIGHTS_FILENAME
    if weights.is_file():
        return weights
    pickles = [name for name in PICKLE_WEIGHT_FILENAMES if (adapter_dir / name).exists()]
    if pickles:
        raise InvalidAdapterError(f"only {', '.join(pickles)} found; {PICKLE_REFUSAL}", path=adapter_dir)
    raise InvalidAdapterError(f"{WEIGHTS_FILENAME} is missing", path=adapter_dir)
