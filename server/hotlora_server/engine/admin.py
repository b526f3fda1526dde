"""Adapter management: the store's write side and the pool, behind the management routes.

File work (import, disable, delete, register) runs in a worker thread so the event loop stays free;
anything that touches the model runs in the engine thread through the engine's mailbox, and a load is
prepared beside the batch first (`preparing`), so that the engine thread only attaches it. Every step checks
before it writes, and a load that fails after an import removes what the import added, so a refused
adapter is never left half-registered or half-loaded.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Sequence
from pathlib import Path

from hotlora_adapters import (
    AdapterError,
    AdapterExistsError,
    AdapterNotFoundError,
    AdapterPathError,
    BlendSource,
    InvalidAdapterNameError,
    Manifest,
    StoredAdapter,
    validate_adapter_name,
)

from ..errors import ConflictError, HotloraError, InvalidRequestError, NotFoundError
from ..types import AdapterInfo, AdapterStatus, BlendSpec
from .catalog import AdapterCatalog
from .loader import LoadedModel
from .mailbox import EngineMailbox


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
        self, mailbox: EngineMailbox, catalog: AdapterCatalog, loaded: LoadedModel, allowed: Sequence[Path]
    ) -> None:
        self._mailbox = mailbox
        self._catalog = catalog
        self._store = catalog.store
        self._loaded = loaded
        self._allowed = tuple(allowed)

    def list_adapters(self) -> list[AdapterInfo]:
        """Every adapter of the store with its status (blocking: a first check reads an adapter's weights)."""
        resident = self._mailbox.resident_adapters()
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
            await self._prepared(name)
            await self._mailbox.call(lambda pool: pool.load(name))
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
        await self._mailbox.call(lambda pool: pool.invalidate(name))

    async def save_blend(self, name: str, blend: BlendSpec) -> AdapterInfo:
        try:
            validate_adapter_name(name)
            if name in self._store:
                raise AdapterExistsError(f"adapter '{name}' already exists")
        except AdapterError as exc:
            raise domain_error(exc) from None
        await self._prepared(blend.label(), blend)
        with tempfile.TemporaryDirectory(prefix="hotlora-blend-") as tmp:
            folder = await self._mailbox.call(lambda pool: pool.save_blend(blend, Path(tmp)))
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

    # -- helpers ------------------------------------------------------------------------------------

    async def _prepared(self, model: str, blend: BlendSpec | None = None) -> None:
        """Have the target read and built beside the batch, so that loading it only attaches it; its
        error, if any, comes with the load."""
        preparation = await self._mailbox.call(lambda pool: pool.preparation(model, blend))
        if preparation is not None:
            await asyncio.wait([asyncio.wrap_future(preparation)])

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
        return self._info(self._store.get(name), self._mailbox.resident_adapters())

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
        )
