"""Which vLLM server of a fleet takes a request: adapter affinity first, then the least loaded.

A server that already has the request's LoRA loaded serves it without a load (and without evicting
another LoRA from its slots); otherwise the least loaded ready server takes it and loads it. Pure, so the
policy is tested without servers.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Protocol, TypeVar


class Routable(Protocol):
    @property
    def ready(self) -> bool: ...

    @property
    def in_flight(self) -> int:
        """Requests it is generating for now."""
        ...

    def has_lora(self, name: str) -> bool: ...

    @property
    def lora_count(self) -> int: ...


R = TypeVar("R", bound=Routable)


def pick(replicas: Sequence[R], lora: str | None, exclude: Collection[R] = ()) -> R | None:
    """The server for a request on `lora` (None: the base), skipping `exclude` (those that failed it);
    None when no ready server is left. Among equally busy servers, the one with the fewest LoRAs loaded
    takes a new one (so adapters spread over the fleet), then the first listed."""
    ready = [r for r in replicas if r.ready and r not in exclude]
    if lora is not None:
        having = [r for r in ready if r.has_lora(lora)]
        if having:
            return min(having, key=lambda r: r.in_flight)
    return min(ready, key=lambda r: (r.in_flight, r.lora_count), default=None)
