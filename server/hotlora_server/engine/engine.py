"""The engine: one thread owns the model; the HTTP layer talks to it through queues.

`generate` validates and tokenizes in the caller (cheap, and a bad request fails before anything is
queued), then hands a job to the engine thread and streams its events back through a per-request
asyncio queue. Closing the stream early sets the job's cancel flag; the engine drops it at the next step.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from transformers import DynamicCache

from hotlora_adapters import AdapterStore, StoreChange, StoreWatcher

from ..errors import ContextLengthExceededError, HotloraError, InvalidRequestError, ServiceUnavailableError
from ..settings import Settings
from ..types import (
    AdapterInfo,
    BlendSpec,
    ChoiceDelta,
    GenerationEvent,
    GenerationRequest,
    ModelInfo,
    TokenLogprob,
    TopLogprob,
    Usage,
)
from .adapter_pool import AdapterCatalog, AdapterPool
from .admin import AdapterAdmin
from .generate import decode_one_token, prefill
from .loader import LoadedModel, load_model
from .prompts import chat_prompt_ids, completion_prompt_ids, stop_token_ids
from .sampling import RowSampler, logprobs_of, sample_batch
from .text import IncrementalDetokenizer, StopMatcher, token_bytes

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class _Control:
    """A management task (load, unload, blend) run in the engine thread, between requests."""

    fn: Callable[[], Any]
    done: Callable[[Any, BaseException | None], None]


@dataclass
class _Job:
    request: GenerationRequest
    prompt_ids: list[int]
    max_new_tokens: int
    emit: Callable[[GenerationEvent | HotloraError], None]
    cancelled: threading.Event = field(default_factory=threading.Event)


class _Row:
    """One choice being generated: sampler, detokenizer and stop matcher of a single row."""

    def __init__(self, index: int, job: _Job, loaded: LoadedModel) -> None:
        self.index = index
        self.job = job
        self.sampler = RowSampler.create(job.request.sampling, index)
        self.detok = IncrementalDetokenizer(loaded.tokenizer)
        self.stops = StopMatcher(job.request.sampling.stop)
        self.generated = 0
        self.last_token = -1

    def step(self, token: int, logits: torch.Tensor, loaded: LoadedModel, stop_ids: frozenset[int]) -> bool:
        """Account for one sampled token, emit its text; return True when this row is finished."""
        self.generated += 1
        self.last_token = token
        params = self.job.request.sampling
        if token in stop_ids:
            self._emit(self.detok.flush(), [], finish="stop", flush=True)
            return True
        logprobs = self._logprobs(token, logits, loaded) if params.logprobs else []
        text, hit = self.stops.feed(self.detok.add(token))
        if hit:
            self._emit(text, logprobs, finish="stop")
            return True
        if self.generated >= self.job.max_new_tokens:
            self._emit(text, logprobs, finish="length", flush=True)
            return True
        if text or logprobs:
            self._emit(text, logprobs)
        return False

    def _emit(self, text: str, logprobs: list[TokenLogprob], finish: str | None = None, flush: bool = False) -> None:
        if flush:
            tail, hit = self.stops.feed(self.detok.flush())
            text += tail if hit else tail + self.stops.flush()
        self.job.emit(ChoiceDelta(index=self.index, text=text, logprobs=logprobs, finish_reason=finish))  # type: ignore[arg-type]

    def _logprobs(self, token: int, logits: torch.Tensor, loaded: LoadedModel) -> list[TokenLogprob]:
        tok = loaded.tokenizer
        value, alternatives = logprobs_of(logits, token, self.job.request.sampling.top_logprobs)

        def piece(token_id: int) -> tuple[str, list[int]]:
            raw = token_bytes(tok, token_id)
            return raw.decode("utf-8", errors="replace"), list(raw)

        text, raw = piece(token)
        top = [TopLogprob(token=t, logprob=lp, bytes=b) for (t, b), lp in ((piece(i), lp) for i, lp in alternatives)]
        return [TokenLogprob(token=text, logprob=value, bytes=raw, top_logprobs=top)]


class Engine:
    """Implements `EngineClient`: loads the model in its own thread, then serves jobs one at a time."""

    def __init__(self, settings: Settings, on_fatal: Callable[[BaseException], None] | None = None) -> None:
        self._settings = settings
        self._on_fatal = on_fatal
        self._jobs: queue.Queue[_Job | _Control | None] = queue.Queue()
        self._ready = threading.Event()
        self._loaded: LoadedModel | None = None
        self._catalog: AdapterCatalog | None = None
        self._pool: AdapterPool | None = None
        self._admin: AdapterAdmin | None = None
        self._watcher: StoreWatcher | None = None
        self._stop_ids: frozenset[int] = frozenset()
        self._created = int(time.time())
        self._thread = threading.Thread(target=self._run, name="hotlora-engine", daemon=True)
        self.error: BaseException | None = None

    # -- EngineClient -------------------------------------------------------------------------------

    @property
    def served_model_name(self) -> str:
        return self._loaded.name if self._loaded else (self._settings.served_model_name or "")

    def is_ready(self) -> bool:
        return self._ready.is_set()

    def list_models(self) -> list[ModelInfo]:
        loaded, catalog = self._require_ready()
        base = ModelInfo(
            id=loaded.name,
            created=self._created,
            quantization=loaded.quantization,
            context_length=loaded.context_length,
        )
        adapters = [
            ModelInfo(
                id=a.name,
                created=a.created,
                parent=loaded.name,
                quantization=loaded.quantization,
                context_length=loaded.context_length,
            )
            for a in catalog.servable()
        ]
        return [base, *adapters]

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        job = self._prepare(request)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[GenerationEvent | HotloraError] = asyncio.Queue()
        job.emit = lambda event: loop.call_soon_threadsafe(events.put_nowait, event)
        self._jobs.put(job)
        try:
            while True:
                event = await events.get()
                if isinstance(event, HotloraError):
                    raise event
                yield event
                if isinstance(event, Usage):
                    return
        finally:
            job.cancelled.set()

    def resident_adapters(self) -> frozenset[str]:
        """Store adapters loaded in memory now (a snapshot, safe from any thread)."""
        return self._pool.resident if self._pool is not None else frozenset()

    def list_adapters(self) -> list[AdapterInfo]:
        return self._require_admin().list_adapters()

    async def load_adapter(self, name: str, path: str | None = None) -> AdapterInfo:
        return await self._require_admin().load(name, path)

    async def unload_adapter(self, name: str, purge: bool = False) -> None:
        await self._require_admin().unload(name, purge)

    async def save_blend(self, name: str, blend: BlendSpec) -> AdapterInfo:
        return await self._require_admin().save_blend(name, blend)

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
        self._jobs.put(_Control(fn=lambda: fn(pool), done=done))
        return await future

    # -- lifecycle ----------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        if self._watcher is not None:
            self._watcher.stop()
        self._jobs.put(None)
        self._thread.join(timeout)

    # -- request preparation (caller's thread) -------------------------------------------------------

    def _require_ready(self) -> tuple[LoadedModel, AdapterCatalog]:
        if not self._ready.is_set() or self._loaded is None or self._catalog is None:
            raise ServiceUnavailableError("the model is still loading; retry shortly", retry_after=2)
        return self._loaded, self._catalog

    def _require_admin(self) -> AdapterAdmin:
        self._require_ready()
        assert self._admin is not None
        return self._admin

    def _prepare(self, request: GenerationRequest) -> _Job:
        loaded, catalog = self._require_ready()
        if request.blend is not None:  # 404 / 400 before anything is queued
            catalog.check_blend(request.blend)
        elif request.model != loaded.name:
            catalog.get(request.model)
        if request.n > self._settings.max_n:
            raise InvalidRequestError(f"n must be at most {self._settings.max_n} (--max-n)", param="n")
        if request.messages is not None:
            prompt_ids = chat_prompt_ids(loaded.tokenizer, request.messages)
            param = "messages"
        else:
            prompt_ids = completion_prompt_ids(loaded.tokenizer, request.prompt or "")
            param = "prompt"
        context = loaded.context_length
        wanted = request.sampling.max_tokens
        room = context - len(prompt_ids)
        if (wanted is not None and wanted > room) or room < 1:
            raise ContextLengthExceededError(
                f"This model's maximum context length is {context} tokens. However, you requested "
                f"{len(prompt_ids) + (wanted or 1)} tokens ({len(prompt_ids)} in the {param}, "
                f"{wanted or 1} in the completion). Please reduce the length of the {param} or completion.",
                param=param,
            )
        return _Job(request=request, prompt_ids=prompt_ids, max_new_tokens=wanted or room, emit=lambda _: None)

    # -- engine thread ------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._load()
        except BaseException as exc:  # reported to the CLI, which exits with the message
            self.error = exc
            log.error("failed to start the engine: %s", exc)
            if self._on_fatal:
                self._on_fatal(exc)
            return
        while (job := self._jobs.get()) is not None:
            if isinstance(job, _Control):
                self._control(job)
                continue
            if job.cancelled.is_set():
                continue
            try:
                self._serve(job)
            except HotloraError as exc:
                job.emit(exc)
            except Exception as exc:  # one failed request must not take the engine down
                log.exception("request %s failed", job.request.request_id)
                job.emit(HotloraError(f"internal error while generating: {type(exc).__name__}: {exc}"))

    @staticmethod
    def _control(task: _Control) -> None:
        try:
            result = task.fn()
        except Exception as exc:  # reported to the caller, who maps it to an error response
            if not isinstance(exc, HotloraError):
                log.exception("adapter management task failed")
            task.done(None, exc)
        else:
            task.done(result, None)

    def _on_store_change(self, changes: list[StoreChange]) -> None:
        """The watcher saw adapters appear, change or vanish: drop stale copies (in the engine thread)."""
        for change in changes:
            log.info("store: %s %s", change.name, change.kind)
            if change.kind != "added" and self._pool is not None:
                invalidate = functools.partial(self._pool.invalidate, change.name, change.version)
                self._jobs.put(_Control(fn=invalidate, done=lambda *_: None))

    def _load(self) -> None:
        started = time.perf_counter()
        loaded = load_model(self._settings)
        store = AdapterStore(self._settings.adapters_dir)
        catalog = AdapterCatalog(store, loaded)
        adapters = [a.name for a in catalog.servable()]
        self._loaded, self._catalog = loaded, catalog
        settings = self._settings
        self._pool = AdapterPool(loaded, catalog, settings.max_loaded_adapters, settings.merge_policy)
        self._admin = AdapterAdmin(self, catalog, loaded, settings.allow_adapter_dir)
        self._watcher = StoreWatcher(store)
        self._watcher.poll()  # what is there now is known; later polls report changes
        self._watcher.start(self._on_store_change)
        self._stop_ids = stop_token_ids(loaded.tokenizer, loaded.model.generation_config.eos_token_id)
        log.info(
            "serving %s (%s, %s, %s) in %.1fs; adapters in %s: %s",
            loaded.name, loaded.quantization, loaded.device, str(loaded.dtype).removeprefix("torch."),
            time.perf_counter() - started, self._settings.adapters_dir, ", ".join(adapters) or "none",
        )  # fmt: skip
        self._ready.set()

    def _serve(self, job: _Job) -> None:
        pool = self._pool
        assert pool is not None
        adapter = pool.acquire(job.request.model, job.request.blend)
        try:
            self._generate(job, pool, adapter)
        finally:
            pool.release(adapter)

    def _generate(self, job: _Job, pool: AdapterPool, adapter: str) -> None:
        loaded = self._loaded
        assert loaded is not None
        pool.prepare([adapter])
        model = pool.model
        cache = DynamicCache(config=loaded.model.config)
        ids = torch.tensor([job.prompt_ids], device=loaded.device)
        logits = prefill(model, ids, cache, **pool.forward_kwargs([adapter]))
        n = job.request.n
        if n > 1:
            cache.batch_repeat_interleave(n)
            logits = logits.expand(n, -1)
        all_rows = [_Row(i, job, loaded) for i in range(n)]
        rows = list(all_rows)
        while rows and not job.cancelled.is_set():
            tokens = sample_batch([r.sampler for r in rows], logits)
            keep = [i for i, (row, token) in enumerate(zip(rows, tokens, strict=True))
                    if not row.step(token, logits[i], loaded, self._stop_ids)]  # fmt: skip
            if len(keep) < len(rows):
                rows = [rows[i] for i in keep]
                if not rows:
                    break
                cache.batch_select_indices(torch.tensor(keep, device=loaded.device))
                logits = logits[keep]
            last = torch.tensor([r.last_token for r in rows], device=loaded.device)
            logits = decode_one_token(model, last, cache, **pool.forward_kwargs([adapter] * len(rows)))
        if not job.cancelled.is_set():
            generated = sum(r.generated for r in all_rows)
            job.emit(Usage(prompt_tokens=len(job.prompt_ids), completion_tokens=generated))
