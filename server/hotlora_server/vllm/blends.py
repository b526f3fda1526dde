"""Blends for vLLM: built once into a cached PEFT folder in the store, then served as an ordinary LoRA.

The folder sits under `<store>/.blends/<key>` (hidden: the store lists no hidden folder), where every
vLLM server of a fleet reads it as it reads the adapters; its key (`names.blend_key`) holds the sources'
store versions, so a source re-registered makes a new blend. A build runs in a child process of this
interpreter (`engine/blend_build.py`: torch and PEFT are not imported here); one build per key at a time.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from pathlib import Path

from ..blend_methods import blend_rank
from ..engine.catalog import AdapterCatalog, adapter_rank
from ..errors import InvalidRequestError
from ..types import BlendSpec
from .names import blend_key

BLENDS_DIR = ".blends"


class BlendFolders:
    """The cached folder of each blend, built on first use."""

    def __init__(self, catalog: AdapterCatalog, base_folder: Path, max_lora_rank: int) -> None:
        self._catalog = catalog
        self._base_folder = base_folder
        self._max_lora_rank = max_lora_rank
        self._root = catalog.store.root / BLENDS_DIR
        self._locks: dict[str, asyncio.Lock] = {}

    def key(self, blend: BlendSpec) -> str:
        """The blend's name (blocking: checks its sources); a 400 when vLLM could not serve its rank."""
        entries = self._catalog.check_blend(blend)
        ranks = [adapter_rank(e) for e in entries]
        rank = blend_rank(blend.method, ranks)
        if rank > self._max_lora_rank:
            raise InvalidRequestError(
                f"blend {blend.label()} would have rank {rank} ('{blend.method}' of ranks "
                f"{', '.join(map(str, ranks))}), above vLLM's --max-lora-rank {self._max_lora_rank}: blend "
                "fewer adapters, use 'svd' (the largest source's rank), or start with a higher --max-lora-rank",
                param="model",
            )
        return blend_key(blend, [e.version for e in entries])

    async def folder(self, blend: BlendSpec, key: str) -> Path:
        """The blend's folder, built now if it is not there yet."""
        folder = self._root / key
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            if not folder.is_dir():
                await self._build(blend, folder)
        return folder

    async def _build(self, blend: BlendSpec, folder: Path) -> None:
        tmp = self._root / f".tmp-{folder.name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        spec = {
            "base": str(self._base_folder),
            "store": str(self._catalog.store.root),
            "components": [list(c) for c in blend.components],
            "method": blend.method,
            "density": blend.density,
            "out": str(tmp),
        }
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "hotlora_server.engine.blend_build",
            json.dumps(spec),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await process.communicate()
        try:
            if process.returncode != 0:
                last = err.decode(errors="replace").strip().splitlines()[-1:] or ["failed"]
                raise InvalidRequestError(
                    f"cannot blend {blend.label()} with '{blend.method}': {last[0]}", param="model"
                )
            os.replace(out.decode().strip().splitlines()[-1], folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
