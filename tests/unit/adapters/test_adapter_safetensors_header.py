import json
import struct
from pathlib import Path

import pytest

from hotlora_adapters import InvalidAdapterError, read_safetensors_header


def _raw(path: Path, header: dict, data: bytes) -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def test_reads_hand_written_file(tmp_path: Path, safetensors_writer) -> None:
    path = tmp_path / "w.safetensors"
    safetensors_writer(path, {"a": ("F32", [2, 3]), "b": ("BF16", [4])}, metadata={"format": "pt"})
    header = read_safetensors_header(path)
    assert {k: v.shape for k, v in header.tensors.items()} == {"a": (2, 3), "b": (4,)}
    assert header.tensors["b"].dtype == "BF16" and header.metadata == {"format": "pt"}


def test_matches_the_safetensors_library(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    path = tmp_path / "lib.safetensors"
    save_file(
        {"x": torch.zeros(3, 5, dtype=torch.float16), "y": torch.zeros(7, dtype=torch.int64)},
        str(path),
        {"k": "v"},
    )
    header = read_safetensors_header(path)
    assert {k: (v.dtype, v.shape) for k, v in header.tensors.items()} == {
        "x": ("F16", (3, 5)),
        "y": ("I64", (7,)),
    }
    assert header.metadata == {"k": "v"}


@pytest.mark.parametrize(
    ("header", "data", "message"),
    [
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4, "truncated"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 12, "unexpected bytes"),
        ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8, "do not hold"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12, "overlap or gap"),
        ({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 0]}}, b"", "non-negative"),
        ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}, b"\0" * 4, "begin 4 > end 0"),
        # an unknown dtype's size cannot be checked: a 0-byte tensor would declare 115 million values
        ({"a": {"dtype": "Q9", "shape": [200000, 576], "data_offsets": [0, 0]}}, b"", "unknown dtype 'Q9'"),
        ({"a": [1, 2]}, b"", "not an object"),
        ({"__metadata__": {"k": 1}}, b"", "__metadata__"),
    ],
)
def test_corrupt_headers(tmp_path: Path, header: dict, data: bytes, message: str) -> None:
    with pytest.raises(InvalidAdapterError, match=message):
        read_safetensors_header(_raw(tmp_path / "bad.safetensors", header, data))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "too short"),
        (b"\x05\x00", "too short"),
        (struct.pack("<Q", 2**40), "exceeds"),
        (struct.pack("<Q", 4) + b"{no}", "not valid JSON"),
        (struct.pack("<Q", 2) + b"[]", "not a JSON object"),
        (b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 12\n", "Git LFS pointer"),
    ],
)
def test_not_safetensors(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "adapter_model.safetensors"
    path.write_bytes(content)
    with pytest.raises(InvalidAdapterError, match=message) as info:
        read_safetensors_header(path)
    assert info.value.path == tmp_path
