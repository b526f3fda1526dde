"""The engine: one thread owns the model; the HTTP layer talks to it through queues.

`generate` validates and tokenizes in a worker thread (a bad request fails before anything is queued, and
neither the event loop nor the engine thread waits for a long prompt or an adapter's first check), then
hands a job to the engine thread through its mailbox (`mailbox`) and streams its events back through a
per-request asyncio queue. The engine thread alternates between taking what arrived (jobs for the
scheduler, management tasks run at once, between batch steps) and one scheduler step, which takes
arrivals again between its prefills; it sleeps when idle, or when every waiting request waits for its
adapter's preparation (which posts to the mailbox when it ends).
Closing a stream early sets the job's cancel flag; the scheduler drops its rows at the next step.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import gc
import logging
import threading
import time
from collections.abc import AsyncGenerator, Callable
from typing import TypeVar

from hotlora_adapters import AdapterStore, StoreChange, StoreWatcher

from ..errors import HotloraError, InvalidRequestError, OverloadedError, ServiceUnavailableError
from ..settings import Settings
from ..types import (
    BlendSpec,
    EngineStats,
    GenerationEvent,
    GenerationRequest,
    ModelInfo,
    Tokenized,
    TokenizeRequest,
    Usage,
)
from .adapter_pool import AdapterPool, PoolStats
from .admin import AdapterAdmin, StoreRoutes
from .catalog import AdapterCatalog
from .grammar import GrammarCompiler
from .kv_budget import KvBudget
from .loader import LoadedModel, ModelLoadError, load_model
from .mailbox import EngineMailbox
from .prefix_cache import PrefixCache
from .prompts import PromptTokenizer, stop_token_ids
from .rows import Job
from .scheduler import Scheduler, SchedulerStats

log = logging.getLogger(__name__)
T = TypeVar("T")


class Engine(StoreRoutes):
    """Implements `EngineClient`: loads the model in its own thread, then serves jobs in one running batch."""

    def __init__(self, settings: Settings, on_fatal: Callable[[BaseException], None] | None = None) -> None:
        self._settings = settings
        self._on_fatal = on_fatal
        self._mailbox = EngineMailbox()
        self._ready = threading.Event()
        self._loaded: LoadedModel | None = None
        self._catalog: AdapterCatalog | None = None
        self._pool: AdapterPool | None = None
        self._admin: AdapterAdmin | None = None
        self._prompts: PromptTokenizer | None = None
        self._grammars: GrammarCompiler | None = None
        self._scheduler: Scheduler | None = None
        self._kv: KvBudget | None = None
        self._watcher: StoreWatcher | None = None
        self._created = int(time.time())
        self._thread = threading.Thread(target=self._run, name="hotlora-engine", daemon=True)
        self.error: BaseException | None = None

    # -- EngineClient -------------------------------------------------------------------------------

    @property
    def served_model_name(self) -> str:
        return self._loaded.name if self._loaded else (self._settings.served_model_name or "")

    def is_ready(self) -> bool:
        return self._ready.is_set()

    def health(self) -> dict[str, object]:
        return {}

    async def list_models(self) -> list[ModelInfo]:
        """The base and every servable adapter; listed in a worker thread, as an adapter's first look
        reads its weights."""
        loaded, catalog = self._require_ready()
        servable = await asyncio.to_thread(catalog.servable)
        base = ModelInfo(
            id=loaded.name,
            created=self._created,
            quantization=loaded.quantization,
            context_length=loaded.context_length,
            kernel=loaded.device_path.kernel,
            batch_invariant=loaded.batch_invariant,
        )
        # an adapter is served on the base: the same quantization, context and kernel
        adapters = [
            dataclasses.replace(base, id=a.name, created=a.created, parent=loaded.name) for a in servable
        ]
        return [base, *adapters]

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationEvent, None]:
        job = await asyncio.to_thread(self._prepare, request)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[GenerationEvent | HotloraError] = asyncio.Queue()

        def emit(event: GenerationEvent | HotloraError) -> None:
            loop.call_soon_threadsafe(events.put_nowait, event)

        job.emit = emit
        self._mailbox.submit(job)
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

    def waiting(self) -> int:
        """Requests queued for the running batch and not in it yet (read from any thread; approximate)."""
        scheduler = self._scheduler
        return self._mailbox.queued() + (len(scheduler.waiting) if scheduler is not None else 0)

    def stats(self) -> EngineStats:
        """Counters and gauges for `/metrics`; plain reads of numbers the engine thread writes."""
        batch = self._scheduler.stats if self._scheduler is not None else SchedulerStats()
        pool = self._pool.stats if self._pool is not None else PoolStats()
        return EngineStats(
            requests_running=batch.requests_running,
            requests_waiting=self.waiting(),
            batch_rows=batch.batch_rows,
            decode_steps=batch.decode_steps,
            decoded_rows=batch.decoded_rows,
            prefill_tokens=batch.prefill_tokens,
            prefix_cache_hit_tokens=batch.prefix_cache_hit_tokens,
            requests_aborted=batch.requests_aborted,
            requests_failed=batch.requests_failed,
            kv_cache_usage=batch.kv_cache_usage,
            kv_cache_bytes=batch.kv_cache_bytes,
            adapters_resident=len(self.resident_adapters()),
            adapter_loads=pool.built,
            adapter_evictions=pool.evictions,
            adapter_merges=pool.merges,
            decode_threads=self._loaded.device_path.decode_threads if self._loaded is not None else 0,
            model_info=self._model_info(),
        )

    def _model_info(self) -> dict[str, str]:
        loaded = self._loaded
        if loaded is None:
            return {}
        return {
            "model": loaded.name,
            "device": loaded.device.type,
            "quantization": loaded.quantization,
            "kernel": loaded.device_path.kernel,
            "batch_invariant": str(loaded.batch_invariant).lower(),
        }

    def resident_adapters(self) -> frozenset[str]:
        """Store adapters loaded in memory now (a snapshot, safe from any thread)."""
        return self._mailbox.resident_adapters()

    async def call(self, fn: Callable[[AdapterPool], T]) -> T:
        """Run `fn(pool)` in the engine thread, between requests, and return its result here."""
        return await self._mailbox.call(fn)

    # -- lifecycle ----------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        if self._watcher is not None:
            self._watcher.stop()
        self._mailbox.close()
        self._thread.join(timeout)
        gc.unfreeze()  # what this engine held may become garbage now

    # -- request preparation (worker threads) --------------------------------------------------------

    def _require_ready(self) -> tuple[LoadedModel, AdapterCatalog]:
        if not self._ready.is_set() or self._loaded is None or self._catalog is None:
            raise ServiceUnavailableError("the model is still loading; retry shortly", retry_after=2)
        return self._loaded, self._catalog

    def _require_admin(self) -> AdapterAdmin:
        self._require_ready()
        assert self._admin is not None
        return self._admin

    def _check_target(self, model: str, blend: BlendSpec | None) -> None:
        """404 / 400 for a model that is not served (before anything is queued)."""
        loaded, catalog = self._require_ready()
        if blend is not None:
            catalog.check_blend(blend)
        elif model != loaded.name:
            catalog.get(model)

    def _prepare(self, request: GenerationRequest) -> Job:
        loaded, _ = self._require_ready()
        if self.waiting() >= self._settings.max_queue:  # refuse at once rather than slow everyone down
            raise OverloadedError(
                f"{self._settings.max_queue} requests are already waiting (--max-queue); retry shortly",
                retry_after=1,
            )
        self._check_target(request.model, request.blend)
        if request.n > self._settings.max_n:
            raise InvalidRequestError(f"n must be at most {self._settings.max_n} (--max-n)", param="n")
        outside = [token for token, _ in request.sampling.logit_bias if token >= loaded.vocab_size]
        if outside:
            raise InvalidRequestError(
                f"`logit_bias` names token {outside[0]}, outside this model's vocabulary (ids 0 to "
                f"{loaded.vocab_size - 1})",
                param="logit_bias",
            )
        defaults = loaded.sampling_defaults
        request = dataclasses.replace(request, sampling=request.sampling.with_defaults(defaults.given()))
        assert self._prompts is not None
        prompt_ids = self._prompts.encode(request)
        room = loaded.context_length - len(prompt_ids)
        # a default (the generation config's max_new_tokens) is capped by the room left, never refused for it
        max_new_tokens = request.sampling.max_tokens or min(defaults.max_new_tokens or room, room)
        job = Job(request=request, prompt_ids=prompt_ids, max_new_tokens=max_new_tokens, emit=lambda _: None)
        self._check_kv(job)
        if request.structured is not None:  # compiled here, in a worker thread; a bad schema is a 400
            assert self._grammars is not None
            job.grammar = self._grammars.compile(request.structured)
        return job

    async def tokenize(self, request: TokenizeRequest, token_strs: bool = False) -> Tokenized:
        """`POST /tokenize`, in a worker thread (tokenizing a long text takes a while)."""
        return await asyncio.to_thread(self._tokenize, request, token_strs)

    def _tokenize(self, request: TokenizeRequest, token_strs: bool) -> Tokenized:
        loaded, _ = self._require_ready()
        self._check_target(request.model, request.blend)
        assert self._prompts is not None
        ids, names = self._prompts.tokenize(request, token_strs)
        return Tokenized(tokens=ids, max_model_len=loaded.context_length, token_strs=names)

    async def detokenize(self, model: str, tokens: list[int], blend: BlendSpec | None = None) -> str:
        """`POST /detokenize`, in a worker thread."""
        return await asyncio.to_thread(self._detokenize, model, tokens, blend)

    def _detokenize(self, model: str, tokens: list[int], blend: BlendSpec | None) -> str:
        self._check_target(model, blend)
        assert self._prompts is not None
        return self._prompts.detokenize(tokens)

    def _check_kv(self, job: Job) -> None:
        """Refuse a request whose worst case alone exceeds the KV cache budget: it would wait forever."""
        kv, n = self._kv, job.request.n
        assert kv is not None
        if not kv.holds(n, job.reach):
            raise InvalidRequestError(
                f"This request may need {_gib(kv.bytes_for(n, job.reach))} of KV cache ({n} choices of up to "
                f"{job.reach} tokens: the prompt and max_tokens, or the rest of the context without it), more "
                f"than the server's {_gib(kv.capacity)} (--kv-cache-memory-bytes). Ask for fewer choices (n) "
                f"or set a lower max_tokens.",
                param="n",
            )

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
        scheduler = self._scheduler
        assert scheduler is not None
        mailbox = self._mailbox  # arrived jobs go to the scheduler; arrived tasks run at once
        while mailbox.take(scheduler.add, block=scheduler.idle or scheduler.stalled):
            scheduler.step(arrivals=lambda: mailbox.take(scheduler.add, block=False))
        scheduler.fail_all(ServiceUnavailableError("the server is shutting down", retry_after=1))

    def _on_store_change(self, changes: list[StoreChange]) -> None:
        """The watcher saw adapters appear, change or vanish: drop stale copies (in the engine thread)."""
        for change in changes:
            log.info("store: %s %s", change.name, change.kind)
            if change.kind != "added" and self._pool is not None:
                self._mailbox.post(functools.partial(self._pool.invalidate, change.name, change.version))

    def _load(self) -> None:
        started = time.perf_counter()
        loaded = load_model(self._settings)
        store = AdapterStore(self._settings.adapters_dir)
        catalog = AdapterCatalog(store, loaded, self._settings.max_lora_rank, self._settings.max_blend_rank)
        adapters = [a.name for a in catalog.servable()]
        self._loaded, self._catalog = loaded, catalog
        settings = self._settings
        self._pool = AdapterPool(loaded, catalog, settings.max_loaded_adapters, settings.merge_policy)
        self._mailbox.open(self._pool)
        self._pool.on_prepared(functools.partial(self._mailbox.post, _wake))  # a waiting request may run
        self._admin = AdapterAdmin(self._mailbox, catalog, loaded, settings.allow_adapter_dir)
        self._prompts = PromptTokenizer(loaded.tokenizer, loaded.context_length)
        self._watcher = StoreWatcher(store)
        self._watcher.poll()  # what is there now is known; later polls report changes
        self._watcher.start(self._on_store_change)
        stop_ids = stop_token_ids(loaded.tokenizer, loaded.model.generation_config.eos_token_id)
        self._grammars = GrammarCompiler(loaded.tokenizer, loaded.vocab_size, stop_ids)
        prefixes = PrefixCache() if settings.enable_prefix_caching else None
        if prefixes is not None:
            self._pool.on_drop(prefixes.discard)
        self._kv = _kv_budget(loaded, settings.kv_cache_memory_bytes)
        self._scheduler = Scheduler(
            loaded,
            self._pool,
            stop_ids,
            settings.max_num_seqs,
            settings.max_num_batched_tokens,
            self._kv,
            prefixes,
        )
        log.info(
            "serving %s (%s, %s, %s) in %.1fs; adapters in %s: %s",
            loaded.name,
            loaded.device_path.kernel,
            loaded.device,
            str(loaded.dtype).removeprefix("torch."),
            time.perf_counter() - started,
            self._settings.adapters_dir,
            ", ".join(adapters) or "none",
        )
        # The loaded model's objects stay for the process's life: frozen, no full garbage collection walks
        # them again (as vLLM does after start-up). Unfrozen, one took a third of a second, in whichever
        # thread allocated, and every running stream waited for it (docs/performance.md).
        gc.collect()
        gc.freeze()
        self._ready.set()


def _wake() -> None:
    """Nothing to do: posted to wake the engine thread, which then steps again."""


def _kv_budget(loaded: LoadedModel, capacity: int) -> KvBudget:
    """The KV cache budget for `loaded`; refuses one that cannot hold a single request over the whole context."""
    kv = KvBudget.of(loaded.model.config, loaded.dtype, capacity)
    if not kv.holds(1, loaded.context_length):
        raise ModelLoadError(
            f"--kv-cache-memory-bytes {capacity} cannot hold one request over the whole context: "
            f"{loaded.context_length} tokens of {loaded.name} take {_gib(kv.bytes_for(1, loaded.context_length))} "
            f"of keys and values. Raise it, or lower --max-model-len."
        )
    log.info("KV cache budget: %s, %d tokens (%d bytes each)", _gib(capacity), kv.tokens, kv.per_token)
    return kv


def _gib(size: int) -> str:
    return f"{size / 2**30:.2f} GiB"
