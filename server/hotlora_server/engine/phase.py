"""Which phase a forward pass is in, for device paths that run a prefill differently from a decode step."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_prefilling: ContextVar[bool] = ContextVar("hotlora_prefilling", default=False)


@contextmanager
def prefilling() -> Iterator[None]:
    """Forwards inside are a prefill (many tokens per row), not a decode step."""
    token = _prefilling.set(True)
    try:
        yield
    finally:
        _prefilling.reset(token)


def is_prefilling() -> bool:
    return _prefilling.get()
