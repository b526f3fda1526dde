"""A change feed for the adapter store: which adapters appeared, changed or went away.

Polls `AdapterStore.versions()` (a few `stat`s per adapter, no parsing) rather than using inotify: it
works on every OS and file system (network mounts, containers' bind mounts), and with the default
0.5 s interval an adapter written into the store by any process is noticed well within 2 s.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from .store import AdapterStore

logger = logging.getLogger(__name__)

StoreChangeKind = Literal["added", "changed", "removed"]
DEFAULT_INTERVAL_S = 0.5


@dataclass(frozen=True)
class StoreChange:
    """One adapter's change between two looks at the store; `version` is None for "removed"."""

    kind: StoreChangeKind
    name: str
    version: str | None


class StoreWatcher:
    """Diffs the store's name -> version listing against the previous look.

    The first `poll()` reports every adapter present as "added", so a consumer can build its whole state
    from the feed. A "changed" adapter has new files or a new manifest (e.g. disabled): read it again
    with `store.get(name)`. Changes between two polls are coalesced (an adapter replaced twice is one
    "changed"; one added and removed again is not reported).
    """

    def __init__(self, store: AdapterStore, interval: float = DEFAULT_INTERVAL_S) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be positive, got {interval}")
        self.store = store
        self.interval = float(interval)
        self._snapshot: dict[str, str] | None = None
        self._poll_lock = threading.Lock()
        self._stop_event = threading.Event()
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"StoreWatcher({self.store!r}, interval={self.interval})"

    @property
    def snapshot(self) -> dict[str, str]:
        """Name -> version as of the last poll (empty before the first)."""
        return dict(self._snapshot or {})

    def poll(self) -> list[StoreChange]:
        """Look at the store once; the changes since the previous look, in name order."""
        with self._poll_lock:
            current = self.store.versions()
            previous = self._snapshot or {}
            self._snapshot = current
        changes: list[StoreChange] = []
        for name in sorted(previous.keys() | current.keys()):
            old, new = previous.get(name), current.get(name)
            if old == new:
                continue
            if old is None:
                changes.append(StoreChange("added", name, new))
            elif new is None:
                changes.append(StoreChange("removed", name, None))
            else:
                changes.append(StoreChange("changed", name, new))
        return changes

    def run(self, callback: Callable[[list[StoreChange]], None], stop: threading.Event) -> None:
        """Poll every `interval` seconds until `stop` is set, handing each non-empty batch to `callback`.

        A failing poll or callback is logged and the loop goes on (the batch is not delivered again).
        """
        while not stop.is_set():
            try:
                changes = self.poll()
            except Exception:
                logger.exception("looking at the adapter store at %s failed", self.store.root)
                changes = []
            if changes:
                try:
                    callback(changes)
                except Exception:
                    logger.exception("adapter store change callback failed for %s", changes)
            stop.wait(self.interval)

    def start(self, callback: Callable[[list[StoreChange]], None]) -> threading.Thread:
        """Run `run(callback, ...)` in a daemon thread until `stop()`; return the thread."""
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError("this store watcher is already running")
        self._stop_event = threading.Event()
        thread = threading.Thread(
            target=self.run, args=(callback, self._stop_event), name="hotlora-store-watcher", daemon=True
        )
        self._thread = thread
        thread.start()
        return thread

    def stop(self, timeout: float | None = 5.0) -> None:
        """Stop the thread `start()` began and wait up to `timeout` seconds for it to finish."""
        self._stop_event.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
