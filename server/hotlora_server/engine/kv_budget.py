"""The KV cache budget (`--kv-cache-memory-bytes`): requests join the running batch only while it holds them.

The batch's cache is left-padded (`batch_cache`): every row holds as many columns as the longest row, plus
the room a decode step writes into. So what the cache may grow to, whatever happens next, is

    rows x (longest prompt + max_tokens of any admitted request + room) x bytes per token

— TGI's rule for padded batches. A request reserves its worst case (its `max_tokens`, or the rest of the
context when it gives none) from admission to its end; one that would take the batch past the budget
waits in the queue until rows leave. Reserving the worst case, rather than growing and preempting rows as
vLLM's paged cache does, keeps a running row's output independent of what arrives after it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from .batch_cache import ROOM

if TYPE_CHECKING:
    from .rows import Job


@dataclass(frozen=True)
class KvBudget:
    """Bytes the running batch's keys and values may take, and what one token of one row costs."""

    capacity: int  # bytes
    per_token: int  # bytes of one token's keys and values over every layer

    @classmethod
    def of(cls, config: Any, dtype: torch.dtype, capacity: int) -> KvBudget:
        """The budget for a model with this (transformers) `config` whose cache holds `dtype` values."""
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        return cls(capacity, 2 * config.num_hidden_layers * kv_heads * head_dim * dtype.itemsize)

    def bytes_for(self, rows: int, longest: int) -> int:
        """What a batch of `rows` rows, the longest reaching `longest` tokens, may take at most."""
        return rows * (longest + ROOM) * self.per_token if rows else 0

    def holds(self, rows: int, longest: int) -> bool:
        return self.bytes_for(rows, longest) <= self.capacity

    @property
    def tokens(self) -> int:
        """How many tokens of keys and values the budget holds (rows x columns, padding included)."""
        return self.capacity // self.per_token


class KvReservations:
    """The worst cases the admitted requests (prefilling or running) hold against the budget."""

    def __init__(self, budget: KvBudget) -> None:
        self.budget = budget
        self._jobs: dict[int, Job] = {}  # id -> request holding a reservation

    def add(self, job: Job) -> None:
        self._jobs[id(job)] = job

    def discard(self, job: Job) -> None:
        self._jobs.pop(id(job), None)

    def admits(self, job: Job) -> bool:
        """Whether the budget holds `job`'s rows beside the admitted requests' (alone it always does:
        `Engine` refuses a request that never fits)."""
        return not self._jobs or self.budget.holds(*self._worst(job))

    def usage(self) -> float:
        """The admitted requests' worst case, as a fraction of the budget."""
        return self.budget.bytes_for(*self._worst()) / self.budget.capacity

    def _worst(self, extra: Job | None = None) -> tuple[int, int]:
        """(rows, longest reach) of the admitted requests, with `extra` added: their KV cache's worst case."""
        jobs = [*self._jobs.values(), *([extra] if extra else [])]
        return sum(job.request.n for job in jobs), max((job.reach for job in jobs), default=0)
