"""Read a safetensors file's header without torch, numpy or the `safetensors` package.

The registry must judge an adapter (names, shapes, integrity) in processes that never load weights —
the server's HTTP layer, the client-facing listing — so it parses the format itself: an 8-byte
little-endian header length, a JSON header `{name: {dtype, shape, data_offsets}, "__metadata__": {...}}`,
then the tensor bytes. The checks mirror the `safetensors` library's own, so a file accepted here is one
the loader accepts, and a truncated or padded download is caught before any weights are read.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from .errors import InvalidAdapterError

MAX_HEADER_BYTES = 100_000_000  # the safetensors library's own limit
METADATA_KEY = "__metadata__"
_LFS_POINTER_PREFIX = b"version https://git-lfs"

# Bits per element; sub-byte float types are packed.
_DTYPE_BITS: dict[str, int] = {
    "BOOL": 8,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "I64": 64,
    "U64": 64,
    "F64": 64,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
}


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """One tensor's entry in the header: where its bytes are, not the bytes."""

    dtype: str
    shape: tuple[int, ...]
    data_offsets: tuple[int, int]


@dataclass(frozen=True, slots=True)
class SafetensorsHeader:
    """The parsed header of one safetensors file; tensor offsets count from `data_start`."""

    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    data_start: int


def read_safetensors_header(path: Path) -> SafetensorsHeader:
    """Parse and validate `path`'s header; raise `InvalidAdapterError` naming the defect.

    Reads only the header bytes, whatever the file size.
    """
    path = Path(path)
    try:
        with path.open("rb") as f:
            file_size = os.fstat(f.fileno()).st_size
            prefix = f.read(8)
            if (prefix + f.read(len(_LFS_POINTER_PREFIX) - 8)).startswith(_LFS_POINTER_PREFIX):
                raise _corrupt(
                    path, "it is a Git LFS pointer, not the weights (fetch them with `git lfs pull`)"
                )
            if len(prefix) < 8:
                raise _corrupt(path, f"the file is {file_size} bytes, too short for a header")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > MAX_HEADER_BYTES:
                raise _corrupt(path, f"header length {header_len} exceeds the {MAX_HEADER_BYTES}-byte limit")
            if 8 + header_len > file_size:
                raise _corrupt(
                    path, f"header length {header_len} runs past the end of the {file_size}-byte file"
                )
            f.seek(8)
            raw = f.read(header_len)
    except OSError as e:
        raise InvalidAdapterError(f"cannot read {path.name}: {e.strerror or e}", path=path.parent) from e
    return _parse_header(path, raw, data_start=8 + header_len, data_len=file_size - 8 - header_len)


def _parse_header(path: Path, raw: bytes, *, data_start: int, data_len: int) -> SafetensorsHeader:
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _corrupt(path, f"the header is not valid JSON ({e})") from e
    if not isinstance(header, dict):
        raise _corrupt(path, "the header is not a JSON object")

    metadata = header.pop(METADATA_KEY, None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _corrupt(path, "__metadata__ must map strings to strings")

    tensors = {name: _parse_entry(path, name, entry) for name, entry in header.items()}
    _check_layout(path, tensors, data_len)
    return SafetensorsHeader(tensors=tensors, metadata=dict(metadata), data_start=data_start)


def _parse_entry(path: Path, name: str, entry: object) -> TensorInfo:
    if not isinstance(entry, dict):
        raise _corrupt(path, f"tensor {name!r}: entry is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str):
        raise _corrupt(path, f"tensor {name!r}: missing dtype")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise _corrupt(path, f"tensor {name!r}: shape {shape!r} is not a list of non-negative integers")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)):
        raise _corrupt(path, f"tensor {name!r}: data_offsets {offsets!r} is not [begin, end]")
    begin, end = offsets
    if begin > end:
        raise _corrupt(path, f"tensor {name!r}: data_offsets begin {begin} > end {end}")
    bits = _DTYPE_BITS.get(dtype)
    if bits is None:  # its size could not be checked: a few bytes could declare a tensor of any shape
        raise _corrupt(path, f"tensor {name!r}: unknown dtype {dtype!r} (known: {', '.join(_DTYPE_BITS)})")
    if end - begin != (math.prod(shape) * bits + 7) // 8:
        raise _corrupt(
            path, f"tensor {name!r}: {end - begin} bytes do not hold a {dtype} tensor of shape {shape}"
        )
    return TensorInfo(dtype=dtype, shape=tuple(shape), data_offsets=(begin, end))


def _check_layout(path: Path, tensors: dict[str, TensorInfo], data_len: int) -> None:
    """Tensors must tile the data section exactly, as the safetensors loader demands."""
    expected = 0
    for name, info in sorted(tensors.items(), key=lambda kv: kv[1].data_offsets):
        begin, end = info.data_offsets
        if begin != expected:
            raise _corrupt(
                path, f"tensor {name!r} starts at byte {begin}, expected {expected} (overlap or gap)"
            )
        expected = end
    if expected > data_len:
        raise _corrupt(
            path, f"the tensors need {expected} data bytes but the file has {data_len} (truncated?)"
        )
    if expected < data_len:
        raise _corrupt(path, f"{data_len - expected} unexpected bytes after the last tensor")


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _corrupt(path: Path, why: str) -> InvalidAdapterError:
    return InvalidAdapterError(f"{path.name} is not a valid safetensors file: {why}", path=path.parent)
