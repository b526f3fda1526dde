"""Continuous batching: requests join the running batch after their prefill and leave when done.

Each scheduler step (in the engine thread) first spends up to `max_num_batched_tokens` prompt tokens on
prefilling waiting requests in arrival order, those that arrive meanwhile included, while the rows and
the KV cache budget (`kv_budget`) hold them — a long prompt is prefilled in chunks of that size over
several steps, so it never stalls the rows already decoding for long — then runs one decode step over
every running row. Beside a few streams, a prefill that would stall them is itself sliced
(`prefill_slices`): about every decode step's time it pauses between two decoder layers for a decode
step of the running rows, so that an arrival does not hold their next token for its whole prefill. A
row carries its own adapter (or blend, or the base), sampling parameters, seed, stop sequences and
token budget; rows of one request (`n`) share its prefill, which starts from the prompt's longest
cached prefix when prefix caching is on. Cancelled requests leave at the next step.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from transformers import DynamicCache

from ..errors import HotloraError
from ..types import Usage
from .adapter_pool import AdapterPool
from .batch_cache import BatchCache, new_cache
from .generate import decode_one_token, prefill
from .kv_budget import KvBudget, KvReservations
from .loader import LoadedModel
from .prefill_layout import GroupLayout
from .prefill_slices import PrefillSlices
from .prefix_cache import PrefixCache, fill_past
from .rows import Job, Row, internal_error, jobs_of
from .sampling import choose_tokens

log = logging.getLogger(__name__)

PREFILLS_PER_STEP = 2  # prefill forwards before a decode step: a burst's first arrivals, then the rest
SLICE_STEPS = 1.0  # a prefill's slice beside running rows lasts about this many decode steps
WHOLE_STEPS = 2.0  # a prefill expected to take at most this many decode steps runs whole
SLICED_ROWS = 4  # prefills are sliced beside at most this many running rows (streams people watch)...
STREAMING_TOKENS = 8  # ...each of which has streamed at least this many tokens (not a burst's start)
PREPARATION_SHARE = 1.0  # decode steps' time a preparation gets before each step while rows run
STEPS_TIMED = 16  # the latest decode steps (and prefills) whose median times size a prefill's slices


@dataclass
class SchedulerStats:
    """Counters since start and the batch's size after the last step; written by the engine thread only."""

    requests_running: int = 0
    batch_rows: int = 0
    decode_steps: int = 0
    decoded_rows: int = 0
    prefill_tokens: int = 0
    prefix_cache_hit_tokens: int = 0
    requests_aborted: int = 0
    requests_failed: int = 0
    kv_cache_usage: float = 0.0  # the admitted requests' worst case, as a fraction of the KV cache budget
    kv_cache_bytes: int = 0  # what the running batch's KV cache holds now


class Scheduler:
    """The waiting queue and the running batch; driven by the engine thread, one `step` at a time."""

    def __init__(
        self,
        loaded: LoadedModel,
        pool: AdapterPool,
        stop_ids: frozenset[int],
        max_num_seqs: int,
        max_num_batched_tokens: int,
        kv_budget: KvBudget,
        prefix_cache: PrefixCache | None = None,
    ) -> None:
        self._loaded = loaded
        self._pool = pool
        self._stop_ids = stop_ids
        self._max_rows = max_num_seqs
        self._token_budget = max_num_batched_tokens
        self._prefix = prefix_cache
        self._kv = KvReservations(kv_budget)
        self._may_load = True  # this step has not loaded an adapter or built a blend yet
        self.waiting: deque[Job] = deque()
        self.running: list[Row] = []
        self._batch = BatchCache()
        self._slices = PrefillSlices(loaded.model)
        self._step_times: deque[float] = deque(maxlen=STEPS_TIMED)  # seconds of the latest decode steps
        self._decoded_at = 0.0  # when the last decode step ended (`time.perf_counter()`)
        self._prefill_times: deque[tuple[float, int]] = deque(maxlen=STEPS_TIMED)  # seconds, tokens
        self.stats = SchedulerStats()

    @property
    def idle(self) -> bool:
        return not self.waiting and not self.running

    @property
    def stalled(self) -> bool:
        """Nothing to run until an adapter's preparation ends (the pool tells its listeners when one does)."""
        return not self.running and all(
            not self._pool.ready_for(job.request.model, job.request.blend) for job in self.waiting
        )

    def add(self, job: Job) -> None:
        self.waiting.append(job)

    def step(self, arrivals: Callable[[], object]) -> None:
        """Prefill what the token budget allows, then decode one token for every running row.

        `arrivals` is called between prefills to add what arrived meanwhile (see `_prefill_waiting`).

        Failures of one request's prefill, sampling or text are contained where they happen; anything
        else that escapes a step fails the requests in the batch, which is then started afresh.
        """
        self._may_load = True
        share = statistics.median(self._step_times) * PREPARATION_SHARE if self.running else 0.0
        try:
            with self._pool.turns.step(share):
                self._prefill_waiting(arrivals)
                self._compact()
                if self.running:
                    self._decode()
                    self._compact()
        except Exception as exc:  # the batch's state is unknown now: end its requests, keep serving
            log.exception(
                "batch step failed; failing the %d requests in the batch", len(jobs_of(self.running))
            )
            self._reset_batch(exc)
        self.stats.requests_running = len(jobs_of(self.running))
        self.stats.batch_rows = len(self.running)
        self.stats.kv_cache_usage = self._kv.usage()
        self.stats.kv_cache_bytes = self._batch.nbytes()

    def fail_all(self, error: HotloraError) -> None:
        """Fail every request (the engine is stopping)."""
        for job in [*self.waiting, *jobs_of(self.running)]:
            self._fail(job, error)
        self.waiting.clear()
        self._compact()

    def _reset_batch(self, exc: Exception) -> None:
        """Fail every request in the running batch and start with an empty one."""
        jobs = jobs_of(self.running)
        self.running = []
        self._batch = BatchCache()
        for job in jobs:
            self._fail(job, internal_error(job, exc))

    # -- prefill ------------------------------------------------------------------------------------

    def _prefill_waiting(self, arrivals: Callable[[], object]) -> None:
        """Prefill waiting prompts in arrival order while they fit this step's token budget.

        Prompts that fit one chunk are prefilled together in one padded forward, each costing the budget
        only the tokens it computes (as in vLLM, a cached prefix is free); a longer prompt is prefilled
        alone in chunks cut at fixed offsets (multiples of the budget), never where another request left
        the budget: the cut changes the arithmetic, and no output may depend on others. Prompts that
        arrived during a prefill get what is left of the budget in a second forward before the decode
        step, so that a burst whose first requests found the engine idle does not wait a decode step for
        the rest; no more than that, or a trickle of arrivals would hold the running rows' next token
        for many small prefills, each paying a prefill's fixed cost.
        """
        budget = self._token_budget
        for forward in range(PREFILLS_PER_STEP):
            if forward:
                arrivals()
            spent = self._prefill_some(budget)
            budget -= spent
            if not spent or not budget:
                return

    def _prefill_some(self, budget: int) -> int:
        """One group (or one chunk) of `_prefill_waiting` within `budget`; the budget it spent.

        A request whose adapter or blend is not in memory waits at the head of the queue while it is
        prepared beside the batch (`preparing`), and a step attaches one at most (each more would hold the
        running rows for another); the requests behind it whose targets are in memory go ahead meanwhile
        (as vLLM schedules past the LoRAs it cannot load yet). Rows and the KV cache budget keep strict
        arrival order.
        """
        deferred: list[Job] = []
        try:
            return self._prefill_queue(budget, deferred)
        finally:
            self.waiting.extendleft(reversed(deferred))

    def _prefill_queue(self, budget: int, deferred: list[Job]) -> int:
        """`_prefill_some`, taking the requests that wait for the next step's adapter load into `deferred`."""
        rows, start = len(self.running), budget
        group: list[Job] = []
        while self.waiting:
            job = self.waiting[0]
            if job.cancelled.is_set():
                self._finish(self.waiting.popleft())
                continue
            if job.key is None:
                if rows and rows + job.request.n > self._max_rows:
                    break  # wait for rows to leave
                if not self._kv.admits(job):
                    break  # wait for rows to leave and free their reservations
                if not self._pool.ready_for(job.request.model, job.request.blend, load=self._may_load):
                    deferred.append(self.waiting.popleft())  # being prepared, or one was attached this step
                    continue
                if not self._admit(job):
                    self.waiting.popleft()
                    continue
            remaining = len(job.prompt_ids) - job.prefilled
            whole = remaining <= self._token_budget and not job.prefilled
            cost = remaining - self._cached(job) if whole else min(remaining, self._token_budget)
            if cost > budget:
                break  # waits for the next step
            if whole:
                group.append(self.waiting.popleft())
            elif group:
                break  # the group goes first: arrival order
            else:
                self._guarded([job], partial(self._prefill_chunk, job), cost)
                return cost
            budget -= cost
            rows += job.request.n
        if group:
            self._guarded(group, lambda: self._prefill_group(group), start - budget)
        return start - budget

    def _prefixes(self) -> PrefixCache | None:
        """The prefix cache while it applies (not while an adapter is merged into the base)."""
        return self._prefix if self._prefix is not None and not self._pool.merged else None

    def _cached(self, job: Job) -> int:
        prefixes = self._prefixes()
        return prefixes.cached(job.key, job.prompt_ids) if prefixes is not None and job.key is not None else 0

    def _guarded(self, jobs: list[Job], prefill_step: Callable[[], None], tokens: int) -> None:
        """Run a prefill of `tokens` computed tokens, in slices beside the running rows where it may be and
        would hold them too long (`_sliced`); if it fails, fail only the requests it was for."""
        try:
            started = time.perf_counter()
            if self._sliced(jobs, tokens):
                seconds = statistics.median(self._step_times) * SLICE_STEPS
                spent = self._slices.run(prefill_step, seconds, self._decoded_at, self._decode_between)
            else:
                prefill_step()
                spent = time.perf_counter() - started
            self._prefill_times.append((spent, max(tokens, 1)))
        except Exception as exc:  # these requests' failure must not take the others down
            for job in jobs:
                if self.waiting and self.waiting[0] is job:
                    self.waiting.popleft()
                self._fail(job, internal_error(job, exc))

    def _sliced(self, jobs: list[Job], tokens: int) -> bool:
        """Whether a prefill for `jobs` runs in slices: a few rows stream (up to `SLICED_ROWS`, each past
        its first `STREAMING_TOKENS`), no other request waits behind it, it is expected to hold the rows
        longer than `WHOLE_STEPS` of their steps (`tokens` at the latest prefills' median time per token),
        and decode steps may run in the middle of it (the pool's adapters route both forwards as before,
        no merge changes the base in between). A prefill that runs whole costs the rows one gap; sliced,
        it costs its own requests a decode step per slice, and a full batch its TTFT and throughput
        (docs/performance.md): worth it beside a few streams, not in a full batch or a burst."""
        if not 0 < len(self.running) <= SLICED_ROWS or not self._step_times or not self._slices.layers:
            return False
        if any(row.generated < STREAMING_TOKENS for row in self.running):
            return False
        if any(job not in jobs for job in self.waiting):
            return False  # a backlog (a burst): the waiting requests' TTFT comes first
        if self._prefill_times:
            rate = statistics.median(seconds / count for seconds, count in self._prefill_times)
            if rate * tokens <= statistics.median(self._step_times) * WHOLE_STEPS:
                return False
        keys = {job.key for job in jobs} | {row.job.key for row in self.running}
        return self._pool.interleaves(keys)  # type: ignore[arg-type]  # admitted jobs have keys

    def _decode_between(self) -> bool:
        """A decode step between two slices of a prefill; whether rows are left to decode at the next."""
        try:
            self._decode()
            self._compact()
        except Exception as exc:  # as in `step`: the batch's state is unknown now
            log.exception("decode step beside a prefill failed; failing the batch's requests")
            self._reset_batch(exc)
        return bool(self.running)

    def _admit(self, job: Job) -> bool:
        """Pin the job's adapter (loading it if needed) and reserve its KV cache; False if the adapter
        failed (the job got the error)."""
        built = self._pool.stats.built
        try:
            job.key = self._pool.acquire(job.request.model, job.request.blend)
        except HotloraError as exc:
            self._fail(job, exc)
            return False
        except Exception as exc:  # a broken adapter fails its request, not the engine
            self._fail(job, internal_error(job, exc))
            return False
        finally:
            self._may_load = self._may_load and self._pool.stats.built == built
        self._kv.add(job)
        return True

    def _prefill_group(self, jobs: list[Job]) -> None:
        """Prefill whole prompts together, each from its longest cached prefix (`GroupLayout`), and start
        their rows."""
        device = self._loaded.device
        jobs = sorted(jobs, key=lambda job: job.key or "")  # an adapter's rows together: one LoRA slice each
        keys = [job.key for job in jobs]
        with self._pool.routing(keys, decode=False) as kwargs:  # type: ignore[arg-type]
            prefixes = self._prefixes()
            hits = [prefixes.lookup(job.key, job.prompt_ids) if prefixes else (0, None) for job in jobs]  # type: ignore[arg-type]
            layout = GroupLayout.of([job.prompt_ids for job in jobs], hits)
            cache = new_cache()
            if layout.past:
                fill_past(cache, layout.hits, layout.past, device)
            self.stats.prefill_tokens += layout.computed
            self.stats.prefix_cache_hit_tokens += layout.reused
            logits = prefill(
                self._pool.model,
                layout.ids.to(device),
                cache,
                attention_mask=layout.valid.to(device).long(),
                position_ids=layout.positions.to(device),
                **kwargs,
            )
        if prefixes is not None:
            for i, job in enumerate(jobs):
                prefixes.store(job.key, job.prompt_ids, layout.row_kv(cache, i))  # type: ignore[arg-type]
        self._start_rows(jobs, cache, layout.pad, logits)

    def _prefill_chunk(self, job: Job) -> None:
        """Run the next chunk of a long prompt in the job's own cache; after the last, start its rows."""
        assert job.key is not None
        if job.cache is None:
            job.cache = new_cache()
        chunk = job.prompt_ids[job.prefilled : job.prefilled + self._token_budget]
        ids = torch.tensor([chunk], device=self._loaded.device)
        self.stats.prefill_tokens += len(chunk)
        with self._pool.routing([job.key], decode=False) as kwargs:
            logits = prefill(self._pool.model, ids, job.cache, **kwargs)
        job.prefilled += len(chunk)
        if job.prefilled == len(job.prompt_ids):
            self.waiting.popleft()
            cache, job.cache = job.cache, None
            self._start_rows([job], cache, torch.zeros(1, dtype=torch.long), logits)

    def _start_rows(
        self, jobs: list[Job], cache: DynamicCache, pad: torch.Tensor, logits: torch.Tensor
    ) -> None:
        """Join prefilled prompts (one cache row each, left-padded by `pad`) to the batch as `n` rows each."""
        index = torch.tensor([i for i, job in enumerate(jobs) for _ in range(job.request.n)])
        cache.batch_select_indices(index.to(self._loaded.device))
        self._batch.join(cache, pad[index])
        rows: list[Row] = []
        for job in jobs:
            job.rows = [Row(i, job, self._loaded, self._stop_ids) for i in range(job.request.n)]
            rows.extend(job.rows)
        self.running.extend(rows)
        self._sample(rows, logits[index.to(logits.device)])

    # -- decode -------------------------------------------------------------------------------------

    def _decode(self) -> None:
        rows = self.running
        device = self._loaded.device
        tokens = torch.tensor([row.last_token for row in rows], device=device)
        mask, positions = self._batch.step_inputs(device)
        keys = [row.job.key for row in rows]
        cache = self._batch.cache
        assert cache is not None  # running rows are rows of the batch's cache
        step = self._loaded.device_path.decode_step(len(rows))  # times a step that did not raise
        started = time.perf_counter()
        try:
            with step, self._pool.routing(keys, decode=True) as kwargs:  # type: ignore[arg-type]
                logits = decode_one_token(
                    self._pool.model,
                    tokens,
                    cache,
                    attention_mask=mask,
                    position_ids=positions,
                    **kwargs,
                )
        except Exception as exc:  # a failed batch step fails the requests in it; the engine keeps serving
            log.exception("decode step failed for %d rows", len(rows))
            for job in jobs_of(rows):
                self._fail(job, internal_error(job, exc))
            return
        self._batch.advance()
        self.stats.decode_steps += 1
        self.stats.decoded_rows += len(rows)
        self._sample(rows, logits)
        self._decoded_at = time.perf_counter()
        self._step_times.append(self._decoded_at - started)

    def _sample(self, rows: list[Row], logits: torch.Tensor) -> None:
        """Sample every row's next token and emit its text. A row that fails (logits that are not finite,
        text that does not decode) ends its own request; the other rows carry on as if it were not there."""
        live = [i for i, row in enumerate(rows) if not row.job.done]
        batch = logits if len(live) == len(rows) else logits[live]
        tokens = choose_tokens([rows[i].sampler for i in live], batch) if live else []
        for i, token in zip(live, tokens, strict=True):
            row = rows[i]
            try:
                if isinstance(token, Exception):
                    raise token
                row.step(token, logits[i], self._loaded, self._stop_ids)
            except Exception as exc:  # this request's failure must not take the others down
                self._fail(row.job, internal_error(row.job, exc))

    def _compact(self) -> None:
        """Drop finished and cancelled rows from the batch; finish requests whose rows are all done."""
        keep = [i for i, row in enumerate(self.running) if not (row.finished or row.job.done)]
        if len(keep) == len(self.running):
            return
        kept = set(keep)
        leaving = jobs_of([r for i, r in enumerate(self.running) if i not in kept])
        self._batch.keep(keep)
        self.running = [self.running[i] for i in keep]
        for job in leaving:
            if job.done:
                self._finish(job)

    # -- ending requests ----------------------------------------------------------------------------

    def _finish(self, job: Job) -> None:
        """Report usage (unless the client left or the job failed) and unpin its adapter."""
        if job.cancelled.is_set() and not job.failed:
            self.stats.requests_aborted += 1
        elif not job.failed and job.rows:
            generated = sum(row.generated for row in job.rows)
            job.emit(Usage(prompt_tokens=len(job.prompt_ids), completion_tokens=generated))
        self._release(job)

    def _fail(self, job: Job, error: HotloraError) -> None:
        if job.failed:
            return
        job.failed = True
        self.stats.requests_failed += 1
        job.emit(error)
        if not any(row.job is job for row in self.running):
            self._release(job)  # otherwise its rows release it when they leave the batch

    def _release(self, job: Job) -> None:
        self._kv.discard(job)
        if job.key is not None:
            self._pool.release(job.key)
            job.key = None
        job.cache = None
