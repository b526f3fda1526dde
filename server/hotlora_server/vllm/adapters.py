"""The store's adapters in vLLM: which LoRA name and folder a request runs on, loaded where it is routed,
and unloaded everywhere when the store drops or replaces them. The vLLM engine's `AdapterHost`."""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path

from ..engine.catalog import AdapterCatalog
from ..errors import ServiceUnavailableError
from ..types import BlendSpec
from .blends import BlendFolders
from .names import adapter_of, lora_name
from .replica import Replica
from .routing import pick

log = logging.getLogger(__name__)

Target = tuple[str, str]  # (LoRA name in vLLM, adapter folder vLLM reads)


class VllmAdapters:
    """Implements `AdapterHost` over the fleet's servers."""

    def __init__(self, replicas: Sequence[Replica], catalog: AdapterCatalog, blends: BlendFolders) -> None:
        self._replicas = replicas
        self._catalog = catalog
        self._blends = blends

    def resident_adapters(self) -> frozenset[str]:
        return frozenset(
            name for r in self._replicas for lora in r.loras if (name := adapter_of(lora)) is not None
        )

    async def target(self, model: str, blend: BlendSpec | None, base: str) -> Target | None:
        """The LoRA a request on `model` runs on (None: the base); a 404/400 for one that is not served."""
        if blend is not None:
            key = await asyncio.to_thread(self._blends.key, blend)
            return key, str(await self._blends.folder(blend, key))
        if model == base:
            return None
        entry = await asyncio.to_thread(self._catalog.get, model)
        return lora_name(entry.name, entry.version), str(entry.path)

    async def load(self, name: str) -> None:
        """Load `name` into the least loaded ready server now (requests for it are then routed there)."""
        target = await self.target(name, None, "")
        assert target is not None
        replica = pick(self._replicas, target[0])
        if replica is None:
            raise ServiceUnavailableError("no vLLM server is ready; retry shortly", retry_after=2)
        await replica.ensure_lora(*target)

    async def invalidate(self, name: str) -> None:
        await self.unload_stale(name, keep=None)

    async def unload_stale(self, name: str, keep: str | None) -> None:
        """Unload every LoRA of adapter `name` from every server but `keep` (its current LoRA name)."""
        for replica in self._replicas:
            for lora in [n for n in replica.loras if adapter_of(n) == name and n != keep]:
                log.info("unloading %s from %s", lora, replica.url)
                await replica.unload_lora(lora)

    async def save_blend(self, blend: BlendSpec, target: Path) -> Path:
        """A copy of the blend's cached folder under `target` (the store registers it from there)."""
        key = await asyncio.to_thread(self._blends.key, blend)
        folder = await self._blends.folder(blend, key)
        return Path(await asyncio.to_thread(shutil.copytree, folder, target / key))
