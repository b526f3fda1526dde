"""Adapter management: the store's write side and the engine's adapters, behind the management routes.

File work (import, disable, delete, register) runs in a worker thread so the event loop stays free;
anything that touches the model goes through an `AdapterHost`: the built-in engine's mailbox has a load
prepared beside the batch (`preparing`) and then attached in the engine thread, the vLLM engine's talks to
vLLM. Every step checks before it writes, and a load that fails after an import removes what the import
added, so a refused adapter is never left half-registered or half-loaded. No torch here: both engines share it.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from hotlora_adapters import (
    AdapterError,
    AdapterExistsError,
    AdapterNotFoundError,
    AdapterPathError,
    BlendSource,
    InvalidAdapterError,
    InvalidAdapterNameError,
    Manifest,
    StoredAdapter,
    read_training_log,
    validate_adapter_name,
)

from ..errors import ConflictError, HotloraError, InvalidRequestError, NotFoundError
from ..types import AdapterInfo, AdapterStatus, BlendSpec
from .catalog import AdapterCatalog, ServedBase, max_rank


class AdapterHost(Protocol):
    """Where an engine keeps adapters in memory: what `AdapterAdmin` needs of it."""

    def resident_adapters(self) -> frozenset[str]:
        """Store adapters in memory now (a snapshot, safe from any thread)."""
        ...

    async def load(self, name: str) -> None:
        """Make store adapter `name` resident now (a `HotloraError` if it cannot be served)."""
        ...

    async def invalidate(self, name: str) -> None:
        """Drop whatever is held of `name` (it was disabled or deleted)."""
        ...

    async def save_blend(self, blend: BlendSpec, target: Path) -> Path:
        """Write `blend` as a PEFT folder under `target`; return the folder."""
        ...


def domain_error(exc: AdapterError) -> HotloraError:
    """The registry's errors as the API's: 404 unknown, 409 taken, 400 for everything refused."""
    if isinstance(exc, AdapterNotFoundError):
        return NotFoundError(str(exc), param="name", code="adapter_not_found")
    if isinstance(exc, AdapterExistsError):
        return ConflictError(f"{exc} (use another name, or unload it with purge first)", param="name")
    if isinstance(exc, (AdapterPathError, InvalidAdapterNameError)):
        return InvalidRequestError(str(exc), param="path" if isinstance(exc, AdapterPathError) else "name")
    return InvalidRequestError(str(exc), param="name")


class AdapterAdmin:
    """Implements the engine's adapter-management calls."""

    def __init__(
        self, host: AdapterHost, catalog: AdapterCatalog, loaded: ServedBase, allowed: Sequence[Path]
    ) -> None:
        self._host = host
        self._catalog = catalog
        self._store = catalog.store
        self._loaded = loaded
        self._allowed = tuple(allowed)

    def list_adapters(self) -> list[AdapterInfo]:
        """Every adapter of the store with its status (blocking: a first check reads an adapter's weights)."""
        resident = self._host.resident_adapters()
        return [self._info(entry, resident) for entry in self._catalog.entries()]

    async def load(self, name: str, path: str | None) -> AdapterInfo:
        imported = False
        try:
            validate_adapter_name(name)
            if path is not None:
                entry = await asyncio.to_thread(self._import, Path(path), name)
                imported = entry.path.resolve() != Path(path).resolve()
            entry = self._store.get(name)
            if entry.disabled:
                await asyncio.to_thread(self._store.set_disabled, name, False)
            await self._host.load(name)
        except AdapterError as exc:
            raise domain_error(exc) from None
        except HotloraError:
            if imported:  # refused after the import wrote it: leave the store as it was
                await asyncio.to_thread(self._store.delete, name)
            raise
        return await asyncio.to_thread(self._describe, name)

    async def unload(self, name: str, purge: bool) -> None:
        try:
            self._store.get(name)
            if purge:
                await asyncio.to_thread(self._store.delete, name)
            else:
                await asyncio.to_thread(self._store.set_disabled, name, True)
        except AdapterError as exc:
            raise domain_error(exc) from None
        await self._host.invalidate(name)

    async def save_blend(self, name: str, blend: BlendSpec) -> AdapterInfo:
        try:
            validate_adapter_name(name)
            if name in self._store:
                raise AdapterExistsError(f"adapter '{name}' already exists")
        except AdapterError as exc:
            raise domain_error(exc) from None
        with tempfile.TemporaryDirectory(prefix="hotlora-blend-") as tmp:
            folder = await self._host.save_blend(blend, Path(tmp))
            manifest = self._blend_manifest(name, blend, folder)
            try:
                await asyncio.to_thread(
                    self._store.register,
                    name,
                    folder,
                    manifest=manifest,
                    base=self._loaded.spec,
                    max_rank=self._catalog.max_rank,
                )
            except AdapterError as exc:
                raise domain_error(exc) from None
        return await asyncio.to_thread(self._describe, name)  # its first check reads the new weights

    def training_log(self, name: str) -> list[dict[str, float]] | None:
        """The loss history the trainer logged beside `name` (blocking: reads the file)."""
        try:
            validate_adapter_name(name)
            entry = self._store.get(name)
            if entry.config is None and entry.error is not None:  # it reaches outside the store: not read
                raise InvalidAdapterError(entry.error)
            return read_training_log(entry.path)
        except AdapterError as exc:
            raise domain_error(exc) from None

    # -- helpers ------------------------------------------------------------------------------------

    def _import(self, path: Path, name: str) -> StoredAdapter:
        return self._store.import_adapter(
            path, name, allowed_roots=self._allowed, base=self._loaded.spec, max_rank=self._catalog.max_rank
        )

    def _blend_manifest(self, name: str, blend: BlendSpec, folder: Path) -> Manifest:
        from hotlora_adapters import inspect_adapter

        return Manifest.for_adapter(
            name,
            inspect_adapter(folder),
            source="blend",
            base=self._loaded.spec,
            base_model=self._loaded.name,
            sources=[BlendSource(name=n, weight=w) for n, w in blend.components],
            blend_method=blend.method,
            density=blend.density,
        )

    def _describe(self, name: str) -> AdapterInfo:
        return self._info(self._store.get(name), self._host.resident_adapters())

    def _info(self, entry: StoredAdapter, resident: frozenset[str]) -> AdapterInfo:
        refusal = self._catalog.refusal(entry)
        status: AdapterStatus
        if entry.disabled:
            status = "disabled"
        elif refusal is not None:
            status = "invalid"
        else:
            status = "resident" if entry.name in resident else "available"
        return AdapterInfo(
            name=entry.name,
            status=status,
            created=entry.created,
            size_bytes=entry.size_bytes,
            version=entry.version,
            manifest=entry.manifest.model_dump(mode="json") if entry.manifest else None,
            error=refusal,
            rank=max_rank(entry.config) if entry.config else None,
            target_modules=entry.config.target_modules if entry.config else None,
        )


class StoreRoutes:
    """The store half of `EngineClient` (list, load, unload, blends, training logs), the same for every
    engine: each hands it its `AdapterAdmin` once ready (`_require_admin` raises until then)."""

    def _require_admin(self) -> AdapterAdmin:
        raise NotImplementedError

    async def list_adapters(self) -> list[AdapterInfo]:
        return await asyncio.to_thread(self._require_admin().list_adapters)

    async def load_adapter(self, name: str, path: str | None = None) -> AdapterInfo:
        return await self._require_admin().load(name, path)

    async def unload_adapter(self, name: str, purge: bool = False) -> None:
        await self._require_admin().unload(name, purge)

    async def save_blend(self, name: str, blend: BlendSpec) -> AdapterInfo:
        return await self._require_admin().save_blend(name, blend)

    async def training_log(self, name: str) -> list[dict[str, float]] | None:
        return await asyncio.to_thread(self._require_admin().training_log, name)
