"""Cold adapters and blends prepared in one worker thread while the batch runs (the skeleton: `staging`).

The pool asks `Preparations.start` for each waiting request's target: the first ask starts its
preparation, and the request stays in the queue (those behind it go ahead) until it has ended. The engine
thread then takes the result (`take`) and attaches it between two steps; a preparation that failed raises
its error there, for the requests of that target alone, and leaves the served model as it was. Results
are keyed by the store versions they were read from, so a re-registered adapter is prepared again.
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from types import FrameType
from typing import Any

import torch

from hotlora_adapters import AdapterError, StoredAdapter, inspect_adapter

from ..blend_methods import combination_type
from ..errors import InvalidRequestError
from ..types import BlendSpec
from .catalog import AdapterCatalog
from .staging import Prepared, Skeleton

log = logging.getLogger(__name__)

Start = Callable[[str], Prepared | None]  # prepares under the given key; None: load it in the engine thread

WAIT_LIMIT = 0.5  # seconds a preparation waits for an engine step at most (a lock it holds may hold the step)


class Turns:
    """The engine thread's steps and a preparation take turns: while one runs, the engine thread gives it
    time between two steps and it pauses during them. Run at once, the preparation held the interpreter
    lock that a decode step takes back after each torch op (a wait of up to the switch interval each
    time) and a core the step's threads need: the running streams' steps took several times as long
    (docs/performance.md). Taking turns, a step is as fast as without; only the preparation, and the
    request that waits for it, takes longer."""

    def __init__(self) -> None:
        self._engine = threading.Lock()  # held by the engine thread during a step
        self._stepping = False  # the engine thread holds `_engine` (written by it alone)
        self._preparing = threading.Event()

    @contextmanager
    def step(self, share: float) -> Iterator[None]:
        """One engine step (engine thread); before it, `share` seconds for a preparation that runs."""
        if share > 0 and self._preparing.is_set():
            time.sleep(share)
        with self._engine:
            self._stepping = True
            try:
                yield
            finally:
                self._stepping = False

    @contextmanager
    def engine_waits(self) -> Iterator[None]:
        """The engine thread waits for a preparation (a management call in a step): it runs meanwhile."""
        if not self._stepping:
            yield
            return
        self._engine.release()
        try:
            yield
        finally:
            self._engine.acquire()

    @contextmanager
    def preparation(self) -> Iterator[None]:
        """A preparation in the calling thread, pausing at each Python or C call while a step runs."""
        self._preparing.set()
        sys.setprofile(self._pause)
        try:
            yield
        finally:
            sys.setprofile(None)
            self._preparing.clear()

    def _pause(self, frame: FrameType, event: str, arg: Any) -> None:
        if self._engine.locked() and self._engine.acquire(timeout=WAIT_LIMIT):
            self._engine.release()


class Preparations:
    """Preparations by pool entry (`AdapterPool`'s cache keys), run one at a time in their own thread.

    `start`, `take` and `forget` are called from the engine thread only; the skeleton is used only by the
    worker thread.
    """

    def __init__(self, skeleton: Skeleton, catalog: AdapterCatalog, keys: Iterator[str], kept: int) -> None:
        self._skeleton = skeleton
        self._catalog = catalog
        self._keys = keys  # the pool's PEFT names: a prepared adapter keeps the one it was given
        self._kept = kept  # ended preparations kept for requests that have not come back for them
        self._futures: dict[tuple[Any, ...], Future[Prepared | None]] = {}
        self._listeners: list[Callable[[], None]] = []
        self.turns = Turns()
        self._queue: queue.Queue[tuple[Callable[[], Prepared | None], Future[Prepared | None]]] = (
            queue.Queue()
        )
        threading.Thread(target=self._run, name="hotlora-prepare", daemon=True).start()

    def on_done(self, listener: Callable[[], None]) -> None:
        """Call `listener()` (from the worker thread) whenever a preparation ends, e.g. to wake the engine."""
        self._listeners.append(listener)

    def start(self, cache_key: tuple[Any, ...], start: Start) -> Future[Prepared | None]:
        """The preparation of `cache_key`, started with `start` if it has not begun."""
        future = self._futures.get(cache_key)
        if future is None:
            ended = [k for k, f in self._futures.items() if f.done()]  # oldest first
            for stale in ended[: max(0, len(ended) - self._kept + 1)]:
                del self._futures[stale]  # whoever still waits for it (a cancelled request?) starts it again
            future = self._futures[cache_key] = Future()
            key = next(self._keys)
            self._queue.put((lambda: start(key), future))
        return future

    def take(self, cache_key: tuple[Any, ...]) -> Prepared | None:
        """The ended preparation of `cache_key` (None: none, or the engine thread must load it); raises the
        error it failed with. Waits for one still running: only management calls ask before it ends."""
        future = self._futures.pop(cache_key, None)
        if future is None:
            return None
        with self.turns.engine_waits():
            return future.result()

    def forget(self, name: str, current: str | None) -> None:
        """Drop preparations that read another version of `name` than `current`: they are never served."""
        for cache_key in [k for k in self._futures if _sources(k).get(name, current) != current]:
            del self._futures[cache_key]

    # -- what the worker thread runs ----------------------------------------------------------------

    def adapter(self, entry: StoredAdapter) -> Start:
        def start(key: str) -> Prepared | None:
            try:
                files = inspect_adapter(entry.path)
            except AdapterError:  # changed since it was judged: the engine thread judges it again
                return None
            if not self._skeleton.holds(files):
                return None
            log.info("preparing adapter %s from %s", entry.name, entry.path)
            prepared = self._skeleton.adapter(files, key)
            return prepared if self._unchanged([entry]) else None

        return start

    def blend(self, blend: BlendSpec, entries: list[StoredAdapter]) -> Start:
        def start(key: str) -> Prepared | None:
            try:
                sources = [inspect_adapter(entry.path) for entry in entries]
            except AdapterError:
                return None
            if not all(self._skeleton.holds(files) for files in sources):
                return None

            def combine(model: Any, keys: list[str]) -> None:
                torch.manual_seed(0)  # DARE prunes at random: build the same blend the same way every time
                model.add_weighted_adapter(
                    adapters=keys,
                    weights=[weight for _, weight in blend.components],
                    adapter_name=key,
                    combination_type=combination_type(blend.method),
                    density=blend.density,
                )

            log.info("preparing blend %s (%s)", blend.label(), blend.method)
            try:
                prepared = self._skeleton.blend(sources, combine, key)
            except (ValueError, TypeError, RuntimeError) as exc:
                raise InvalidRequestError(
                    f"cannot blend {blend.label()} with '{blend.method}': {exc}", param="model"
                ) from exc
            return prepared if self._unchanged(entries) else None

        return start

    def _unchanged(self, entries: list[StoredAdapter]) -> bool:
        """Whether the store still holds these versions: else a mix of two may have been read."""
        versions = self._catalog.store.versions()
        return all(versions.get(entry.name) == entry.version for entry in entries)

    def _run(self) -> None:
        # One thread for torch's own parallel sections here: the preparation runs beside the batch and
        # must not take the engine's cores. A second OpenMP team would also outnumber the cores, and
        # libgomp then stops its threads spinning between sections, which slows every decode step.
        torch.set_num_threads(1)
        while True:
            start, future = self._queue.get()
            try:
                with self.turns.preparation():
                    future.set_result(start())
            except BaseException as exc:  # the requests that wait for it get the error
                future.set_exception(exc)
            del start, future  # the result is the engine thread's now: nothing here may keep it alive
            for listener in self._listeners:
                listener()


def _sources(cache_key: tuple[Any, ...]) -> dict[str, str]:
    """The store versions a pool entry is built from: ("adapter", name, version) or ("blend", components,
    versions, ...)."""
    if cache_key[0] == "adapter":
        return {cache_key[1]: cache_key[2]}
    return {name: version for (name, _), version in zip(cache_key[1], cache_key[2], strict=True)}
