"""NaN/Inf weights: found in every float format, refused at registration and at load, with the tensor named.

Files are written by the real `safetensors` library from torch tensors (torch only builds them), so the
byte layouts are exactly what PEFT saves; adapters are real PEFT adapters from conftest, then poisoned.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

import hotlora_adapters.finite as finite
from hotlora_adapters import (
    WEIGHTS_FILENAME,
    AdapterStore,
    InvalidAdapterError,
    check_finite,
    nonfinite_tensors,
)

torch = pytest.importorskip("torch")
from safetensors.torch import load_file, save_file  # noqa: E402

FLOAT_DTYPES = [
    torch.float64,
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.float8_e5m2,
    torch.float8_e4m3fn,
]
POISONED_KEY = "base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"


def _save(path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    save_file(tensors, str(path), {"format": "pt"})
    return path


def _edge_values(dtype: torch.dtype) -> torch.Tensor:
    """Finite values whose bit patterns come closest to NaN/Inf: the largest, the smallest, -0, subnormals."""
    info = torch.finfo(dtype)
    return torch.tensor([info.max, -info.max, info.tiny, info.tiny / 4, -0.0, 1.0], dtype=torch.float64).to(
        dtype
    )


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_finite_extremes_are_not_flagged(tmp_path: Path, dtype: torch.dtype) -> None:
    path = _save(tmp_path / "w.safetensors", {"edges": _edge_values(dtype), "ints": torch.arange(-5, 5)})
    assert nonfinite_tensors(path) == []


POISONS = [
    pytest.param(dtype, value, id=f"{dtype}-{value}")
    for dtype in FLOAT_DTYPES
    for value in (float("nan"), float("inf"), float("-inf"))
    if math.isnan(value) or dtype != torch.float8_e4m3fn  # it has no infinity: torch saturates to its max
]


@pytest.mark.parametrize(("dtype", "value"), POISONS)
def test_each_float_format_is_read_right(tmp_path: Path, dtype: torch.dtype, value: float) -> None:
    poisoned = _edge_values(dtype).to(torch.float64)
    poisoned[3] = value
    tensors = {
        "clean": _edge_values(dtype),
        "poisoned": poisoned.to(dtype),
        "last": torch.zeros(2, dtype=dtype),
    }
    path = _save(tmp_path / "w.safetensors", tensors)
    assert (
        load_file(str(path))["poisoned"].double().isfinite().tolist().count(False) == 1
    )  # the file holds it
    assert nonfinite_tensors(path) == ["poisoned"]


@pytest.mark.parametrize("position", [0, 4095, 4096, 9999])
def test_found_in_any_chunk_of_a_large_tensor(tmp_path: Path, monkeypatch, position: int) -> None:
    monkeypatch.setattr(
        finite, "CHUNK_BYTES", 1000
    )  # not a multiple of the element size: rounded down to one
    weights = torch.zeros(10_000, dtype=torch.bfloat16)
    weights[position] = float("nan")
    path = _save(tmp_path / "w.safetensors", {"a": torch.ones(3), "big": weights})
    assert nonfinite_tensors(path) == ["big"]


def poison(adapter: Path, key: str = POISONED_KEY, value: float = float("nan")) -> None:
    """Write `value` into one tensor of a real PEFT adapter, as a diverged training run would save it."""
    weights = adapter / WEIGHTS_FILENAME
    tensors = load_file(str(weights))
    tensors[key][0, 0] = value
    _save(weights, tensors)


def test_real_peft_adapter_passes_and_a_poisoned_one_names_its_tensors(adapter_dir: Path) -> None:
    check_finite(adapter_dir)
    poison(adapter_dir)
    poison(adapter_dir, key=POISONED_KEY.replace("layers.1", "layers.0"), value=float("inf"))
    with pytest.raises(InvalidAdapterError) as info:
        check_finite(adapter_dir)
    message = str(info.value)
    assert "NaN or infinite values in 2 tensor(s)" in message
    assert POISONED_KEY in message and POISONED_KEY.replace("layers.1", "layers.0") in message


def test_long_lists_are_cut(adapter_dir: Path) -> None:
    weights = load_file(str(adapter_dir / WEIGHTS_FILENAME))
    _save(adapter_dir / WEIGHTS_FILENAME, {k: torch.full_like(v, float("nan")) for k, v in weights.items()})
    with pytest.raises(
        InvalidAdapterError, match=rf"in {len(weights)} tensor\(s\): .* and {len(weights) - 5} more"
    ):
        check_finite(adapter_dir)


def test_registration_refuses_nan_weights_and_leaves_nothing_behind(
    tmp_path: Path, make_adapter, tiny_base_spec
) -> None:
    store = AdapterStore(tmp_path / "store")
    store.register("keep", make_adapter(name="keep"))
    before = store.versions()
    source = make_adapter(name="diverged")
    poison(source)
    with pytest.raises(InvalidAdapterError, match="NaN or infinite") as info:
        store.register("diverged", source, base=tiny_base_spec)
    assert info.value.path == source  # reported where the user's files are, not the private copy
    assert store.versions() == before
    assert sorted(os.listdir(store.root)) == [".lock", "keep"]  # the copy is gone too


def test_overwrite_with_nan_weights_keeps_the_old_adapter(tmp_path: Path, make_adapter) -> None:
    store = AdapterStore(tmp_path / "store")
    old = store.register("pig", make_adapter(name="v1"))
    source = make_adapter(name="v2")
    poison(source)
    with pytest.raises(InvalidAdapterError, match="NaN"):
        store.register("pig", source, overwrite=True)
    assert store.get("pig").version == old.version


def test_import_refuses_nan_weights(tmp_path: Path, make_adapter) -> None:
    store, allowed = AdapterStore(tmp_path / "store"), tmp_path / "allowed"
    allowed.mkdir()
    source = make_adapter(name="pig", parent=allowed)
    poison(source)
    with pytest.raises(InvalidAdapterError, match="NaN"):
        store.import_adapter(source, allowed_roots=[allowed])
    assert store.list() == []


def test_a_folder_copied_into_the_store_is_refused_when_loaded(tmp_path: Path, make_adapter) -> None:
    """Listing reads headers only (cheap, every few seconds); loading reads the weights and refuses."""
    store = AdapterStore(tmp_path / "store")
    poison(make_adapter(name="dropped", parent=store.ensure_root()))
    assert [a.name for a in store.list()] == ["dropped"]
    with pytest.raises(InvalidAdapterError, match=f"NaN or infinite values in 1 tensor.*{POISONED_KEY}"):
        store.load_files("dropped")
    with pytest.raises(
        InvalidAdapterError, match="NaN"
    ):  # also when the path given is the store's own folder
        store.import_adapter(store.root / "dropped")


def test_a_file_cut_short_after_its_header_was_read_is_refused(tmp_path: Path) -> None:
    path = _save(tmp_path / "w.safetensors", {"a": torch.zeros(1000)})
    header = finite.read_safetensors_header(path)
    with open(path, "r+b") as f:
        f.truncate(header.data_start + 100)
    with open(path, "rb") as f:
        f.seek(header.data_start)
        with pytest.raises(OSError, match="ended 3900 bytes early"):
            finite._holds_nonfinite(f.read, 4000, 4, finite._NONFINITE["F32"][1])
