"""NaN and infinity in an adapter's weights, found without torch or numpy.

A diverged training run saves NaN/Inf weights that load without complaint and then turn every reply of
the adapter into garbage; no header shows them, so registration and loading read the data once. Every
float format marks a non-finite value with an all-ones exponent, so the test is a byte mask applied to
whole strided byte lanes with `bytes.translate`: C speed with the standard library alone.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .errors import InvalidAdapterError
from .peft_files import WEIGHTS_FILENAME
from .safetensors_header import read_safetensors_header

CHUNK_BYTES = 1 << 24
MAX_LISTED_TENSORS = 5
Lanes = tuple[tuple[int, bytes], ...]


def _lane(byte_index: int, mask: int) -> tuple[int, bytes]:
    """A byte of each little-endian element, and a table mapping it to 1 when all `mask` bits are set."""
    return byte_index, bytes(int(value & mask == mask) for value in range(256))


# dtype -> (bytes per element, lanes): an element is NaN or infinite when each lane's byte maps to 1.
# Integer formats and F4/F6 have no such values: they are finite by construction and not read.
_NONFINITE: dict[str, tuple[int, Lanes]] = {
    "F64": (8, (_lane(7, 0x7F), _lane(6, 0xF0))),
    "F32": (4, (_lane(3, 0x7F), _lane(2, 0x80))),
    "F16": (2, (_lane(1, 0x7C),)),
    "BF16": (2, (_lane(1, 0x7F), _lane(0, 0x80))),
    "F8_E5M2": (1, (_lane(0, 0x7C),)),
    "F8_E4M3": (1, (_lane(0, 0x7F),)),  # the "fn" variant: no infinity, NaN is S.1111.111
    "F8_E8M0": (1, (_lane(0, 0xFF),)),
}


def nonfinite_tensors(path: Path) -> list[str]:
    """Names of the tensors in the safetensors file `path` holding a NaN or an infinity, in file order."""
    path = Path(path)
    header = read_safetensors_header(path)
    found: list[str] = []
    try:
        with path.open("rb") as f:
            for name, info in sorted(header.tensors.items(), key=lambda item: item[1].data_offsets):
                layout = _NONFINITE.get(info.dtype)
                if layout is None:
                    continue
                begin, end = info.data_offsets
                f.seek(header.data_start + begin)
                if _holds_nonfinite(f.read, end - begin, *layout):
                    found.append(name)
    except OSError as e:
        raise InvalidAdapterError(f"cannot read {path.name}: {e.strerror or e}", path=path.parent) from e
    return found


def check_finite(adapter_dir: Path, *, shown_as: Path | None = None) -> None:
    """Refuse (`InvalidAdapterError`, reported at `shown_as`) weights holding NaN or infinite values."""
    adapter_dir = Path(adapter_dir)
    bad = nonfinite_tensors(adapter_dir / WEIGHTS_FILENAME)
    if not bad:
        return
    listed = ", ".join(bad[:MAX_LISTED_TENSORS])
    if len(bad) > MAX_LISTED_TENSORS:
        listed += f" and {len(bad) - MAX_LISTED_TENSORS} more"
    raise InvalidAdapterError(
        f"{WEIGHTS_FILENAME} holds NaN or infinite values in {len(bad)} tensor(s): {listed}; "
        "such an adapter would only produce garbage (did its training diverge?)",
        path=shown_as or adapter_dir,
    )


def _holds_nonfinite(read: Callable[[int], bytes], size: int, itemsize: int, lanes: Lanes) -> bool:
    """Read `size` bytes of one tensor in chunks of whole elements; stop at the first non-finite one."""
    step = max(itemsize, CHUNK_BYTES - CHUNK_BYTES % itemsize)
    remaining = size
    while remaining:
        chunk = read(min(step, remaining))
        if not chunk:
            raise OSError(f"the file ended {remaining} bytes early (modified while being read?)")
        remaining -= len(chunk)
        if _chunk_holds_nonfinite(chunk, itemsize, lanes):
            return True
    return False


def _chunk_holds_nonfinite(chunk: bytes, itemsize: int, lanes: Lanes) -> bool:
    hits = -1
    for byte_index, table in lanes:
        lane = chunk[byte_index::itemsize].translate(table)
        if 1 not in lane:
            return False
        hits &= int.from_bytes(lane, "little")
    return hits != 0
