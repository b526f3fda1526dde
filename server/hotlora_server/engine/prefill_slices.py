"""A prefill in slices, with a decode step of the running rows between two slices.

A prefill takes several decode steps' time, and while the engine thread runs it every running stream
waits: one long gap in each stream whenever a request arrives. Here the prefill's forward runs in a
greenlet of the engine thread, which gives control back at the start of a decoder layer once the slice
has run for its time; the engine runs a decode step and resumes it. The prefill runs the same ops in the
same order on the same thread (torch's thread-local modes, the same OpenMP team), so its results are the
bits of one uninterrupted forward. State one forward sets for itself is kept per `contextvars` context,
and a greenlet has its own (`phase`, the LoRA stack's routing); state the two forwards share must not
change in between, which the caller checks (`AdapterPool.interleaves`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import greenlet
import torch


@dataclass
class _Slice:
    """The running prefill's current slice: whom to give control back to, and when."""

    engine: greenlet.greenlet
    seconds: float
    started: float


_CURRENT: ContextVar[_Slice | None] = ContextVar("hotlora_prefill_slice", default=None)


class PrefillSlices:
    """The decoder layers of a model, each of which may pause a sliced prefill at its start (through a
    forward pre-hook, there only while one runs: a hooked module's call costs more in every step)."""

    def __init__(self, model: torch.nn.Module) -> None:
        layers = getattr(getattr(model, "model", None), "layers", None)
        self.layers = list(layers) if isinstance(layers, torch.nn.ModuleList) else []

    def run(
        self, prefill: Callable[[], None], seconds: float, since: float, between: Callable[[], bool]
    ) -> float:
        """Run `prefill`; each time `seconds` have passed since `since` (a `time.perf_counter()`: when the
        running rows last got a token) or since it last resumed, pause its forward at a decoder layer's
        start and call `between()`, which must not raise and says whether to go on pausing. Returns the
        seconds `prefill` ran (the pauses not counted); exceptions of `prefill` propagate."""
        current = _Slice(greenlet.getcurrent(), seconds, since)

        def body() -> None:
            _CURRENT.set(current)  # in the greenlet's own context: the engine's layers never pause
            prefill()

        child = greenlet.greenlet(body)
        hooks = [layer.register_forward_pre_hook(_boundary) for layer in self.layers]
        try:
            ran, resumed = 0.0, time.perf_counter()
            child.switch()
            while not child.dead:
                ran += time.perf_counter() - resumed
                if not between():
                    current.seconds = math.inf
                current.started = resumed = time.perf_counter()
                child.switch()
            return ran + time.perf_counter() - resumed
        finally:
            for hook in hooks:
                hook.remove()


def _boundary(module: torch.nn.Module, args: Any) -> None:
    """A decoder layer's forward pre-hook: the pause point of a sliced prefill whose slice is over."""
    current = _CURRENT.get()
    if current is not None and time.perf_counter() - current.started >= current.seconds:
        current.engine.switch()
