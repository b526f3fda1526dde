"""How many threads a CPU decode step uses: chosen while serving, by timing steps.

A decode step of a few rows is hundreds of short parallel regions, each ending at a barrier. On a quiet
machine all cores are fastest; but when another program holds a core, every barrier waits for the thread
that lost it, and all cores become several times slower than fewer (docs/performance.md). Which holds
changes with what else runs, so a few steps run with another thread count now and then, and at once when
steps slow down, and the faster count is kept. While all cores serve, probes that lose come more rarely, up
to a bound; on fewer, every `interval` steps, so that a machine growing quiet again (a program ended, an
adapter finished loading beside the batch) gets its cores back soon. A fixed count (`--cpu-decode-threads`) is never probed. The kernels give a row the same bits with any thread count, so
the choice changes no output.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

log = logging.getLogger(__name__)


def candidates(most: int) -> list[int]:
    """The counts worth trying on `most` cores: all of them, then halving down to one."""
    counts = [max(1, most)]
    while counts[-1] > 1:
        counts.append(counts[-1] // 2)
    return counts


class DecodeThreads:
    """The thread count of each decode step (`step`), probed against the others and kept when faster.

    `probe` steps of another count (after one more that wakes its threads, not counted) are compared, by
    their median, with the last `probe` steps of the current one with the same number of rows; the other
    count is taken when it is faster by more than `margin`. Probes come after `interval` steps (doubled up
    to `longest` each time all cores win), and at once when the current count's steps have become
    `slowdown` times slower than they were after the last probe. Called from the engine thread only.
    """

    def __init__(
        self,
        most: int,
        fixed: int | None = None,
        interval: int = 64,
        longest: int = 256,
        probe: int = 4,
        margin: float = 0.1,
        slowdown: float = 1.5,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._counts = [fixed] if fixed is not None else candidates(most)
        self.current = self._counts[0]
        self._base, self._longest, self._probe, self._margin = interval, longest, probe, margin
        self._slowdown = slowdown
        self._settled: dict[int, float] = {}  # rows: the current count's median step after the last probe
        self._interval = interval
        self._clock = clock
        self._since = 0  # steps of the current count since the last probe
        self._recent: list[tuple[int, float]] = []  # the current count's last steps: (rows, seconds)
        self._trial: list[tuple[int, float]] = []  # the probed count's steps so far
        self._next = 1  # index in `_counts` of the next count to probe (never the current one)
        self.trying: int | None = None  # the count being probed

    @property
    def fixed(self) -> bool:
        return len(self._counts) == 1

    @contextmanager
    def step(self, rows: int) -> Iterator[None]:
        """Run one decode step of `rows` rows with the chosen thread count, and time it."""
        threads = self._choose(rows)
        before = torch.get_num_threads()
        if threads != before:
            torch.set_num_threads(threads)
        start = self._clock()
        try:
            yield
        finally:
            if threads != before:
                torch.set_num_threads(before)
        self._record(rows, threads, self._clock() - start)

    def _choose(self, rows: int) -> int:
        if self.trying is None and not self.fixed and self._comparable(rows):
            now = statistics.median(s for _, s in self._recent)
            settled = self._settled.setdefault(rows, now)
            if self._since >= self._interval or now > self._slowdown * settled:
                self.trying = self._counts[self._next]
                self._next = self._following(self._next)
        return self.trying if self.trying is not None else self.current

    def _record(self, rows: int, threads: int, seconds: float) -> None:
        if threads != self.trying:
            self._recent = [*self._recent, (rows, seconds)][-self._probe :]
            self._since += 1
            return
        if not self._comparable(rows):  # the batch changed: the probe compares nothing
            self._end_probe(won=False)
            return
        self._trial.append((rows, seconds))
        if len(self._trial) <= self._probe:  # the first wakes the count's threads: not counted
            return
        mine = statistics.median(s for _, s in self._recent)
        theirs = statistics.median(s for _, s in self._trial[1:])
        won = theirs < mine * (1 - self._margin)
        if won:
            log.info(
                "decode threads %d -> %d: a step of %d rows took %.1f ms against %.1f ms (other programs "
                "use the cores, or stopped using them)",
                self.current,
                threads,
                rows,
                theirs * 1e3,
                mine * 1e3,
            )
            self.current = threads
            self._settled = {}  # the other batch sizes' steps were timed on the other count
        self._settled[rows] = theirs if won else mine
        self._end_probe(won)

    def _end_probe(self, won: bool) -> None:
        self.trying = None
        self._trial = []
        self._since = 0
        if won:
            self._recent = []
            self._interval = self._base
            self._next = self._following(self._counts.index(self.current))
        elif self.current == self._counts[0]:
            self._interval = min(2 * self._interval, self._longest)

    def _comparable(self, rows: int) -> bool:
        """Whether the current count's last steps are as many as a probe, all of `rows` rows."""
        return len(self._recent) == self._probe and all(r == rows for r, _ in self._recent)

    def _following(self, index: int) -> int:
        """The index after `index` in `_counts`, skipping the current count."""
        following = (index + 1) % len(self._counts)
        if self._counts[following] == self.current and len(self._counts) > 1:
            following = (following + 1) % len(self._counts)
        return following
