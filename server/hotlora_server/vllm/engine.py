"""`VllmEngine`: hotlora's `EngineClient` over vLLM servers.

A monitor thread resolves the base, starts the child vLLM (or finds the `--vllm-url` servers), then checks
their health every second for as long as the engine runs: `/health` is ready while one server is, a server
that fails a request is out until it answers again, and a child that exits stops hotlora. Requests are
checked against the store here (404 unknown, 400 unservable, as with the built-in engine), routed
(`routing.py`), their LoRA loaded on demand, and streamed back as hotlora's events.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from collections.abc import AsyncGenerator, Callable
from typing import Any

from hotlora_adapters import AdapterStore, StoreChange, StoreWatcher

from ..engine.admin import AdapterAdmin, StoreRoutes
from ..engine.catalog import AdapterCatalog
from ..errors import InvalidRequestError, OverloadedError, ServiceUnavailableError
from ..settings import Settings
from ..types import (
    BlendSpec,
    EngineStats,
    GenerationEvent,
    GenerationRequest,
    ModelInfo,
    Tokenized,
    TokenizeRequest,
)
from .adapters import VllmAdapters
from .base import VllmBase, resolve_vllm_base
from .blends import BlendFolders
from .child import VllmChild, free_port, vllm_command
from .errors import ReplicaDown
from .names import lora_name
from .probe import remove_probe, write_probe
from .replica import Replica
from .routing import pick
from .translate import events, vllm_request

log = logging.getLogger(__name__)
_HEALTH_EVERY_S = 1.0


class VllmEngine(StoreRoutes):
    """Implements `EngineClient` (and `start`/`stop`/`error`, as the built-in `Engine`)."""

    def __init__(self, settings: Settings, on_fatal: Callable[[BaseException], None] | None = None) -> None:
        self._settings = settings
        self._on_fatal = on_fatal
        self._replicas: list[Replica] = [Replica(url) for url in settings.vllm_url]
        self._child: VllmChild | None = None
        self._base: VllmBase | None = None
        self._catalog: AdapterCatalog | None = None
        self._adapters: VllmAdapters | None = None
        self._admin: AdapterAdmin | None = None
        self._watcher: StoreWatcher | None = None
        self._context_length: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = threading.Event()  # the base is known and a server was ready once
        self._stopping = threading.Event()
        self._created = int(time.time())
        self._failed = 0
        self._thread = threading.Thread(target=self._run, name="hotlora-vllm", daemon=True)
        self.error: BaseException | None = None

    # -- EngineClient ---------------------------------------------------------------------------------

    @property
    def served_model_name(self) -> str:
        return self._base.name if self._base else (self._settings.served_model_name or "")

    def is_ready(self) -> bool:
        return self._started.is_set() and any(r.ready for r in self._replicas)

    def ready_replicas(self) -> int:
        return sum(r.ready for r in self._replicas)

    def health(self) -> dict[str, object]:
        """The fleet: how many vLLM servers there are and how many take requests now."""
        return {"engine": "vllm", "servers": len(self._replicas), "servers_ready": self.ready_replicas()}

    async def list_models(self) -> list[ModelInfo]:
        base, catalog, _ = self._require_ready()
        servable = await asyncio.to_thread(catalog.servable)
        info = ModelInfo(
            id=base.name, created=self._created, context_length=self._context_length, kernel="vllm"
        )
        return [
            info,
            *(dataclasses.replace(info, id=a.name, created=a.created, parent=base.name) for a in servable),
        ]

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationEvent, None]:
        base, _, adapters = self._require_ready()
        if request.n > self._settings.max_n:
            raise InvalidRequestError(f"n must be at most {self._settings.max_n} (--max-n)", param="n")
        busy = sum(r.in_flight for r in self._replicas)
        if busy >= self._settings.max_queue + self._settings.max_num_seqs * len(self._replicas):
            raise OverloadedError(f"{busy} requests are running or waiting; retry shortly", retry_after=1)
        target = await adapters.target(request.model, request.blend, base.name)
        path, body = vllm_request(request, target[0] if target else base.name)
        tried: set[Replica] = set()
        while True:
            replica = pick(self._replicas, target[0] if target else None, tried)
            if replica is None:
                raise ServiceUnavailableError("no vLLM server is ready; retry shortly", retry_after=2)
            tried.add(replica)
            replica.in_flight += 1
            started = False
            try:
                if target is not None:
                    await replica.ensure_lora(*target)
                async for chunk in replica.stream(path, body):
                    for event in events(chunk):
                        started = True
                        yield event
                return
            except ReplicaDown:
                replica.mark_down()
                if started:  # part of the answer is out: another server cannot continue it
                    self._failed += 1
                    raise
                log.warning("retrying request %s on another vLLM server", request.request_id)
            finally:
                replica.in_flight -= 1

    def stats(self) -> EngineStats:
        running = sum(r.in_flight for r in self._replicas)
        return EngineStats(
            requests_running=running,
            requests_waiting=0,
            batch_rows=0,
            decode_steps=0,
            decoded_rows=0,
            prefill_tokens=0,
            prefix_cache_hit_tokens=0,
            requests_aborted=0,
            requests_failed=self._failed,
            kv_cache_usage=0.0,
            kv_cache_bytes=0,
            adapters_resident=len(self._adapters.resident_adapters()) if self._adapters else 0,
            adapter_loads=sum(r.lora_loads for r in self._replicas),
            adapter_evictions=0,
            adapter_merges=0,
            model_info={
                "model": self.served_model_name,
                "engine": "vllm",
                "servers": str(len(self._replicas)),
                "servers_ready": str(self.ready_replicas()),
            },
        )

    async def tokenize(self, request: TokenizeRequest, token_strs: bool = False) -> Tokenized:
        base, _, adapters = self._require_ready()
        await adapters.target(request.model, request.blend, base.name)  # 404/400 as for generation
        body: dict[str, Any] = {
            "model": base.name,
            "add_special_tokens": request.add_special_tokens,
            "return_token_strs": token_strs,
        }
        if request.messages is not None:
            body.update(messages=list(request.messages), add_generation_prompt=request.add_generation_prompt)
            if request.tools:
                body["tools"] = list(request.tools)
        else:
            body["prompt"] = request.prompt or ""
        data = await self._any_replica().post_json("/tokenize", body)
        return Tokenized(data["tokens"], data["max_model_len"], data.get("token_strs"))

    async def detokenize(self, model: str, tokens: list[int], blend: BlendSpec | None = None) -> str:
        base, _, adapters = self._require_ready()
        await adapters.target(model, blend, base.name)
        data = await self._any_replica().post_json("/detokenize", {"model": base.name, "tokens": tokens})
        return str(data["prompt"])

    # -- lifecycle ------------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stopping.set()
        if self._watcher is not None:
            self._watcher.stop()
        self._thread.join(timeout)

    # -- helpers --------------------------------------------------------------------------------------

    def _require_ready(self) -> tuple[VllmBase, AdapterCatalog, VllmAdapters]:
        """Also notes the server's event loop (called on it): the store watcher schedules unloads there."""
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            pass
        if not self.is_ready() or self._base is None or self._catalog is None or self._adapters is None:
            raise ServiceUnavailableError("no vLLM server is ready yet; retry shortly", retry_after=2)
        return self._base, self._catalog, self._adapters

    def _require_admin(self) -> AdapterAdmin:
        self._require_ready()
        assert self._admin is not None
        return self._admin

    def _any_replica(self) -> Replica:
        replica = pick(self._replicas, None)
        if replica is None:
            raise ServiceUnavailableError("no vLLM server is ready; retry shortly", retry_after=2)
        return replica

    # -- the monitor thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        """Start, then watch the servers until `stop`; the child is started (and stopped) from this thread,
        which lives as long as the engine (the child's parent-death signal follows the thread)."""
        try:
            self._start_servers()
            while not self._stopping.wait(_HEALTH_EVERY_S):
                self._check_servers()
        except BaseException as exc:  # reported to the CLI, which exits with the message
            self.error = exc
            log.error("the vLLM engine failed: %s", exc)
            if self._on_fatal:
                self._on_fatal(exc)
        finally:
            if self._child is not None:
                self._child.stop()

    def _start_servers(self) -> None:
        settings = self._settings
        started = time.perf_counter()
        base = resolve_vllm_base(settings)
        store = AdapterStore(settings.adapters_dir)
        store.ensure_root()
        catalog = AdapterCatalog(store, base, settings.max_lora_rank, settings.max_blend_rank)
        self._base, self._catalog = base, catalog
        if settings.vllm_python is not None:
            port = free_port()
            self._child = VllmChild(vllm_command(settings, base, port), port)
            self._child.start()
            self._replicas = [Replica(self._child.url)]
        blends = BlendFolders(catalog, base.folder, settings.max_lora_rank)
        self._adapters = VllmAdapters(self._replicas, catalog, blends)
        self._admin = AdapterAdmin(self._adapters, catalog, base, settings.allow_adapter_dir)
        deadline = time.monotonic() + settings.vllm_start_timeout
        while not self._check_servers():
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"no vLLM server was ready within {settings.vllm_start_timeout:g}s (--vllm-start-timeout)"
                )
            if self._stopping.wait(_HEALTH_EVERY_S):
                return
        self._context_length = self._max_model_len()
        self._watcher = StoreWatcher(store)
        self._watcher.poll()
        self._watcher.start(self._on_store_change)
        log.info(
            "serving %s through vLLM (%d of %d servers ready) in %.1fs; adapters in %s",
            base.name,
            self.ready_replicas(),
            len(self._replicas),
            time.perf_counter() - started,
            settings.adapters_dir,
        )
        self._started.set()

    def _check_servers(self) -> bool:
        """Health-check every server; False when none is ready. A child that exited is fatal; a `--vllm-url`
        server is asked once, when first ready, whether it sees the store (`probe.py`): at start one that
        does not is refused (hotlora stops), later it is left out."""
        if self._child is not None and (code := self._child.exit_code()) is not None:
            raise RuntimeError(f"vLLM exited with status {code} (its log is above)")
        for replica in self._replicas:
            if replica.check() and replica.sees_store is None and self._child is None:
                self._probe(replica)
        return any(replica.ready for replica in self._replicas)

    def _probe(self, replica: Replica) -> None:
        assert self._base is not None
        store = self._settings.adapters_dir
        folder = write_probe(store, self._base.spec)
        try:
            refusal = replica.load_blocking(f"hotlora-probe-{folder.name}", str(folder))
        finally:
            remove_probe(folder)
        replica.sees_store = refusal is None
        if refusal is None:
            return
        replica.ready = False
        message = (
            f"vLLM server {replica.url} cannot read the adapter store {store} ({refusal}): mount the store at "
            "the same path on every vLLM server (a shared volume, NFS), and start it with --enable-lora and "
            "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True"
        )
        if not self._started.is_set():
            raise RuntimeError(message)
        log.error("%s; it is left out", message)

    def _max_model_len(self) -> int | None:
        import httpx

        for replica in self._replicas:
            if replica.ready:
                try:
                    cards = httpx.get(f"{replica.url}/v1/models", timeout=10).json()["data"]
                    return int(cards[0]["max_model_len"])
                except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError):
                    continue
        return None

    def _on_store_change(self, changes: list[StoreChange]) -> None:
        """An adapter changed or left the store: unload its stale LoRAs everywhere (in the server's loop)."""
        loop, adapters = self._loop, self._adapters
        if loop is None or adapters is None:
            return  # nothing was loaded yet
        for change in changes:
            if change.kind == "added":
                continue
            keep = lora_name(change.name, change.version) if change.version else None
            try:
                asyncio.run_coroutine_threadsafe(adapters.unload_stale(change.name, keep), loop)
            except RuntimeError:  # the loop has closed: the server is stopping
                return


__all__ = ["VllmEngine"]
