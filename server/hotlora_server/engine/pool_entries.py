"""What the adapter pool keeps: its entries, its counters, and how it finds and frees them."""

from __future__ import annotations

import ctypes
import gc
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import torch

from ..types import BlendSpec


@dataclass
class Resident:
    """One adapter or blend loaded into the PeftModel under the internal name `key`."""

    key: str
    label: str  # what clients call it: an adapter name or a blend string
    kind: Literal["adapter", "blend"]
    sources: dict[str, str]  # store adapter -> the version it was built from
    refs: int = 0
    stale: bool = False  # superseded or removed: dropped as soon as no request uses it


@dataclass
class PoolStats:
    loads: int = 0
    evictions: int = 0
    unloads: int = 0
    blends: int = 0
    merges: int = 0
    unmerges: int = 0
    merge_refusals: int = 0

    @property
    def built(self) -> int:
        """Adapters loaded and blends built: the work that may make `acquire` slow."""
        return self.loads + self.blends


def blend_key(blend: BlendSpec, versions: Iterable[str]) -> tuple[Any, ...]:
    """A blend's entry in the pool: by its sources' store versions, so re-registering a source makes it new."""
    return ("blend", blend.components, tuple(versions), blend.method, blend.density)


def release_memory() -> None:
    """Give freed tensors back to the OS, so many load/unload cycles do not grow the process."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the allocator keeps its own counsel
        pass
