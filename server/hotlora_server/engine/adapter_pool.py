"""Adapters resident in the model: found in the store, checked against the base, loaded on first use.

Adapters are served unmerged: PEFT's per-row `adapter_names` lets one forward pass mix the base and any
number of adapters, so requests for different adapters never disturb each other and the base weights
are never touched.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from peft import PeftModel

from hotlora_adapters import AdapterError, AdapterStore, StoredAdapter, check_compatible

from ..errors import InvalidRequestError, NotFoundError
from .bnb_cpu import unpack_cpu_weights
from .loader import LoadedModel

log = logging.getLogger(__name__)

BASE = "__base__"  # PEFT's name for "no adapter" in a mixed batch


class AdapterCatalog:
    """The store's adapters that fit the served base, re-read on demand and checked once per version."""

    def __init__(self, store: AdapterStore, loaded: LoadedModel) -> None:
        self._store = store
        self._loaded = loaded
        self._verdicts: dict[tuple[str, int, float], str | None] = {}  # (name, size, mtime) -> refusal

    def _refusal(self, entry: StoredAdapter) -> str | None:
        if entry.error is not None:
            return entry.error
        key = (entry.name, entry.size_bytes, entry.path.stat().st_mtime)
        if key not in self._verdicts:
            try:
                check_compatible(self._store.load_files(entry.name), self._loaded.spec)
                self._verdicts[key] = None
            except AdapterError as exc:
                self._verdicts[key] = str(exc)
                log.warning("adapter %s is not servable: %s", entry.name, exc)
        return self._verdicts[key]

    def servable(self) -> list[StoredAdapter]:
        """Enabled adapters of the store that fit the base, in name order."""
        return [a for a in self._store.list() if not a.disabled and self._refusal(a) is None]

    def get(self, name: str) -> StoredAdapter:
        """The adapter called `name`, or a 404 naming what exists / a 400 saying why it cannot be served."""
        try:
            entry = self._store.get(name)
        except AdapterError:
            entry = None
        if entry is None or entry.disabled:
            known = [self._loaded.name] + [a.name for a in self.servable()]
            raise NotFoundError(
                f"The model '{name}' does not exist. Available models: {', '.join(known)}", param="model"
            )
        refusal = self._refusal(entry)
        if refusal is not None:
            raise InvalidRequestError(f"adapter '{name}' cannot be served on this base: {refusal}", param="model")
        return entry


class AdapterPool:
    """Owns the served module: the base model, wrapped in a `PeftModel` once the first adapter loads."""

    def __init__(self, loaded: LoadedModel, catalog: AdapterCatalog) -> None:
        self._loaded = loaded
        self._catalog = catalog
        self.model: Any = loaded.model
        self._resident: set[str] = set()

    def activate(self, name: str) -> str:
        """Make `name` (the base id or an adapter) ready to run; return its PEFT adapter name."""
        if name == self._loaded.name:
            return BASE
        entry = self._catalog.get(name)
        if name not in self._resident:
            log.info("loading adapter %s from %s", name, entry.path)
            with torch.inference_mode():  # the model's tensors were made in inference mode; so are these
                unpack_cpu_weights(self.model)  # PEFT calls state_dict(): see bnb_cpu
                if isinstance(self.model, PeftModel):
                    self.model.load_adapter(str(entry.path), adapter_name=name)
                else:
                    self.model = PeftModel.from_pretrained(self._loaded.model, str(entry.path), adapter_name=name)
            self.model.eval()
            self._resident.add(name)
        return name

    def forward_kwargs(self, adapter_names: list[str]) -> dict[str, Any]:
        """Per-row adapter selection for one forward pass."""
        if not isinstance(self.model, PeftModel):
            return {}
        return {"adapter_names": adapter_names}
