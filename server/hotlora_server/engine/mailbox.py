"""The engine thread's mailbox: how other threads hand it requests and model work.

Jobs and management tasks share one queue, so a task runs between batch steps, in order with the jobs
around it. `AdapterAdmin` reaches the engine only through a mailbox (an `AdapterHost`), so it needs
nothing of `Engine`, which owns the mailbox and is the only reader of its queue.
"""

from __future__ import annotations

import asyncio
import logging
import queue
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ..errors import HotloraError
from ..types import BlendSpec
from .adapter_pool import AdapterPool
from .rows import Job

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class _Control:
    """A management task (load, unload, blend) run in the engine thread, between batch steps."""

    fn: Callable[[], Any]
    done: Callable[[Any, BaseException | None], None]


class EngineMailbox:
    """Posted to from any thread; taken from by the engine thread alone (`take`)."""

    def __init__(self) -> None:
        self._queue: queue.Queue[Job | _Control | None] = queue.Queue()
        self._pool: AdapterPool | None = None
        self._stopping = False  # the stop sentinel was taken

    def open(self, pool: AdapterPool) -> None:
        """The model is loaded: `call` runs its tasks on `pool` from now on."""
        self._pool = pool

    # -- any thread ---------------------------------------------------------------------------------

    def submit(self, job: Job) -> None:
        self._queue.put(job)

    def post(self, fn: Callable[[], Any]) -> None:
        """Run `fn` in the engine thread; nobody waits for it."""
        self._queue.put(_Control(fn=fn, done=lambda *_: None))

    async def call(self, fn: Callable[[AdapterPool], T]) -> T:
        """Run `fn(pool)` in the engine thread, between requests, and return its result here."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()

        def done(result: Any, error: BaseException | None) -> None:
            def settle() -> None:
                if future.cancelled():
                    return
                if error is not None:
                    future.set_exception(error)
                else:
                    future.set_result(result)

            loop.call_soon_threadsafe(settle)

        pool = self._pool
        assert pool is not None
        self._queue.put(_Control(fn=lambda: fn(pool), done=done))
        return await future

    def resident_adapters(self) -> frozenset[str]:
        """Store adapters loaded in memory now (the pool's published snapshot)."""
        return self._pool.resident if self._pool is not None else frozenset()

    # -- AdapterHost: the pool's management calls, run in the engine thread --------------------------

    async def load(self, name: str) -> None:
        await self._prepared(name)
        await self.call(lambda pool: pool.load(name))

    async def invalidate(self, name: str) -> None:
        await self.call(lambda pool: pool.invalidate(name))

    async def save_blend(self, blend: BlendSpec, target: Path) -> Path:
        await self._prepared(blend.label(), blend)
        return await self.call(lambda pool: pool.save_blend(blend, target))

    async def _prepared(self, model: str, blend: BlendSpec | None = None) -> None:
        """Have the target read and built beside the batch, so that loading it in the engine thread only
        attaches it; its error, if any, comes with the load."""
        preparation = await self.call(lambda pool: pool.preparation(model, blend))
        if preparation is not None:
            await asyncio.wait([asyncio.wrap_future(preparation)])

    def queued(self) -> int:
        """Jobs and tasks not taken yet (approximate)."""
        return self._queue.qsize()

    def close(self) -> None:
        """Tell the engine thread to stop once it has taken what came before."""
        self._queue.put(None)

    # -- the engine thread --------------------------------------------------------------------------

    def take(self, deliver: Callable[[Job], None], block: bool) -> bool:
        """Hand arrived jobs to `deliver` and run arrived tasks; False once told to stop."""
        if self._stopping:
            return False
        try:
            item = self._queue.get(block=block)
        except queue.Empty:
            return True
        while True:
            if item is None:
                self._stopping = True
                return False
            if isinstance(item, _Control):
                _run(item)
            else:
                deliver(item)
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return True


def _run(task: _Control) -> None:
    try:
        result = task.fn()
    except Exception as exc:  # reported to the caller, who maps it to an error response
        if not isinstance(exc, HotloraError):
            log.exception("adapter management task failed")
        task.done(None, exc)
    else:
        task.done(result, None)
