"""The store's adapters as the served base sees them: which exist, which fit, what a blend may be.

Every request looks its adapter up here, so a lookup costs a few `stat`s: a description is read again
only when its folder's version changed, and an adapter's weights are checked against the base once per
version.
"""

from __future__ import annotations

import logging
import threading
from typing import Protocol

from hotlora_adapters import (
    AdapterConfig,
    AdapterError,
    AdapterFiles,
    AdapterNotFoundError,
    AdapterStore,
    BaseSpec,
    InvalidAdapterNameError,
    StoredAdapter,
    check_compatible,
)

from ..blend_methods import EQUAL_RANK_METHODS, blend_rank
from ..errors import InvalidRequestError, NotFoundError
from ..types import BlendSpec

log = logging.getLogger(__name__)


class ServedBase(Protocol):
    """What the catalog judges adapters against: the served base's id and shape (the built-in engine's
    loaded model, or the vLLM engine's description of the folder it hands vLLM); no torch needed."""

    @property
    def name(self) -> str: ...

    @property
    def spec(self) -> BaseSpec: ...


class AdapterCatalog:
    """The store's adapters that fit the served base, re-read on demand and checked once per version.

    Owned by `Engine`, which builds it at load and lends it to the pool (engine thread) and to `AdapterAdmin`
    and the request checks (worker threads); never used on the event loop, as a first check reads an
    adapter's weights. `_checking` makes that check run once per version however many threads ask; the
    other state is whole dict entries, so a race at worst reads a description twice.
    """

    def __init__(self, store: AdapterStore, loaded: ServedBase, max_rank: int, max_blend_rank: int) -> None:
        self.store = store
        self.max_rank = max_rank  # --max-lora-rank
        self._loaded = loaded
        self._max_blend_rank = max_blend_rank
        self._verdicts: dict[str, tuple[str, str | None]] = {}  # name -> (version judged, refusal)
        self._entries: dict[
            str, StoredAdapter
        ] = {}  # name -> the store's description, while its version holds
        self._checking = threading.Lock()  # one reading of an adapter's weights, not one per waiting request

    def refusal(self, entry: StoredAdapter) -> str | None:
        """Why `entry` cannot be served on this base, or None."""
        if entry.error is not None:
            return entry.error
        judged = self._verdicts.get(entry.name)
        if judged is None or judged[0] != entry.version:
            with self._checking:
                judged = self._verdicts.get(entry.name)
                if judged is None or judged[0] != entry.version:
                    judged = self._verdicts[entry.name] = (entry.version, self._check(entry))
        return judged[1]

    def _check_fits(self, files: AdapterFiles) -> None:
        check_compatible(files, self._loaded.spec, max_rank=self.max_rank)

    def forget(self, name: str) -> None:
        """`name` left the store or was disabled: drop what was kept about it (read again if it comes back)."""
        self._verdicts.pop(name, None)
        self._entries.pop(name, None)

    def _check(self, entry: StoredAdapter) -> str | None:
        """Read `entry`'s header (sizes first) and weights against the base once."""
        try:
            self.store.load_files(entry.name, check=self._check_fits)
        except AdapterError as exc:
            log.warning("adapter %s is not servable: %s", entry.name, exc)
            return str(exc)
        return None

    def servable(self) -> list[StoredAdapter]:
        """Enabled adapters of the store that fit the base, in name order."""
        return [a for a in self.entries() if not a.disabled and self.refusal(a) is None]

    def entries(self) -> list[StoredAdapter]:
        """Every adapter of the store (disabled and unusable ones too), in name order.

        Listing costs a few `stat`s per adapter (`store.versions()`); an adapter is described again only
        when its version changed, since a description reads its config, weights' header and manifest.
        """
        versions = self.store.versions()
        listing: list[StoredAdapter] = []
        for name, version in versions.items():
            entry = self._entries.get(name)
            if entry is None or entry.version != version:
                try:
                    entry = self._entries[name] = self.store.get(name)
                except AdapterNotFoundError:  # removed since the versions were taken
                    continue
            listing.append(entry)
        for name in list(self._entries):
            if name not in versions:
                self._entries.pop(name, None)
        return listing

    def get(self, name: str) -> StoredAdapter:
        """The adapter called `name`, or a 404 naming what exists / a 400 saying why it cannot be served
        (a `model` that cannot even be an adapter's name gets the 400, with the naming rule)."""
        try:
            entry: StoredAdapter | None = self._describe(name)
        except InvalidAdapterNameError as exc:
            raise InvalidRequestError(
                f"`model` is neither the base model '{self._loaded.name}', a blend ('a*0.7+b*0.3') nor an "
                f"adapter: {exc}",
                param="model",
            ) from None
        except AdapterNotFoundError:
            self._entries.pop(name, None)
            entry = None
        if entry is not None and entry.disabled:
            raise NotFoundError(
                f'adapter \'{name}\' is disabled; enable it with POST /v1/adapters {{"name": "{name}"}}',
                param="model",
            )
        if entry is None:
            known = [self._loaded.name] + [a.name for a in self.servable()]
            raise NotFoundError(
                f"The model '{name}' does not exist. Available models: {', '.join(known)}", param="model"
            )
        refusal = self.refusal(entry)
        if refusal is not None:
            raise InvalidRequestError(
                f"adapter '{name}' cannot be served on this base: {refusal}", param="model"
            )
        return entry

    def _describe(self, name: str) -> StoredAdapter:
        """The store's description of `name`, read again only when its version changed: every request
        looks its adapter up (a blend each source, twice), and a version costs a few `stat`s where a
        description reads the config, the weights' header and the manifest (docs/performance.md)."""
        version = self.store.version_of(name)
        entry = self._entries.get(name)
        if entry is None or entry.version != version:
            entry = self._entries[name] = self.store.get(name)
        return entry

    def check_blend(self, blend: BlendSpec) -> list[StoredAdapter]:
        """The blend's sources, once it is known that they can be blended: refuses, naming the ranks, a
        method that needs equal ranks when they differ, and a blend whose rank passes `--max-blend-rank`
        (`cat` adds its sources' ranks, so blends of saved blends would grow without end)."""
        entries = [self.get(name) for name, _ in blend.components]
        ranks = {e.name: adapter_rank(e) for e in entries}
        listed = ", ".join(f"{n}: r={r}" for n, r in ranks.items())
        if blend.method in EQUAL_RANK_METHODS and len(set(ranks.values())) > 1:
            raise InvalidRequestError(
                f"blend method '{blend.method}' needs adapters of equal rank ({listed}); "
                "use 'cat' (exact, any ranks) or 'svd'",
                param="blend_method",
            )
        rank = blend_rank(blend.method, list(ranks.values()))
        if rank > self._max_blend_rank:
            raise InvalidRequestError(
                f"blend {blend.label()} would have rank {rank} ('{blend.method}' of {listed}), above this "
                f"server's --max-blend-rank {self._max_blend_rank}; blend fewer adapters, or use 'svd' "
                "(the rank of the largest source)",
                param="model",
            )
        return entries


def adapter_rank(entry: StoredAdapter) -> int:
    """The largest LoRA rank of a servable adapter."""
    assert entry.config is not None  # servable entries have a readable config
    return max_rank(entry.config)


def max_rank(config: AdapterConfig) -> int:
    """An adapter's largest rank: `r`, or a larger one `rank_pattern` gives some of its layers."""
    return max([config.r, *(config.rank_pattern or {}).values()])
