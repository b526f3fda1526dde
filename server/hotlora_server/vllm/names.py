"""The LoRA names hotlora gives vLLM.

vLLM caches a LoRA by its name: loading new weights under a name it already has serves the old ones. So
each store version of an adapter gets its own name, and a blend is named by what it is made of (its
sources' versions included): re-registered weights are served under a new name, and the stale one is
unloaded.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable

from ..types import BlendSpec

BLEND_PREFIX = "blend-"
_SEPARATOR = "@"  # adapter names never hold it ([a-z0-9._-])


def lora_name(adapter: str, version: str) -> str:
    """`adapter`'s name in vLLM for one store version: `<adapter>@<12 hex of the version>`."""
    return f"{adapter}{_SEPARATOR}{_digest(version)}"


def adapter_of(name: str) -> str | None:
    """The store adapter a vLLM LoRA name stands for; None for a blend or a name hotlora did not give."""
    adapter, sep, _ = name.partition(_SEPARATOR)
    return adapter if sep and not name.startswith(BLEND_PREFIX) else None


def blend_key(blend: BlendSpec, versions: Iterable[str]) -> str:
    """A blend's name in vLLM and its cached folder's: the sources, their weights and versions, the method
    and the density."""
    payload = json.dumps(
        [[list(c) for c in blend.components], list(versions), blend.method, blend.density],
        separators=(",", ":"),
    )
    return BLEND_PREFIX + hashlib.sha256(payload.encode()).hexdigest()[:16]


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]
