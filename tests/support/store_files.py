"""Helpers for the adapter store's tests: what a store folder holds, and the bytes of an adapter's files."""

from __future__ import annotations

import os
from pathlib import Path

from hotlora_adapters import AdapterStore


def entries(store: AdapterStore) -> list[str]:
    """Everything in the store folder but the writers' lock file."""
    if not store.root.exists():
        return []
    return sorted(n for n in os.listdir(store.root) if n != ".lock")


def file_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def peft_bytes(folder: Path) -> dict[str, bytes]:
    return {n: (folder / n).read_bytes() for n in ("adapter_config.json", "adapter_model.safetensors")}
