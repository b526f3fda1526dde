"""Adapters resident in the model: loaded on demand from what the catalog (`catalog`) found servable.

Adapters are served unmerged by default: one forward pass mixes the base and any number of adapters row by
row (`lora_stack`, or PEFT's per-row `adapter_names` for adapters the stack cannot express), so requests
for different adapters never disturb each other and the base weights are never touched. The pool keeps at
most `max_resident` adapters and blends (LRU), never evicts one a request is using, loads a re-registered
adapter's new weights under a new key (requests in flight finish on the old ones), and may merge one
adapter for speed (see `merge_policy`). A cold adapter or blend is prepared beside the running batch
(`preparing`) and attached between two steps; the engine thread loads it itself only when it cannot be.
"""

from __future__ import annotations

import itertools
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from peft.tuners.tuners_utils import BaseTuner

from hotlora_adapters import AdapterError, StoredAdapter, inspect_adapter

from ..blend_methods import combination_type
from ..errors import HotloraError, InvalidRequestError, ServiceUnavailableError
from ..settings import MergePolicy
from ..types import BlendSpec
from .catalog import AdapterCatalog
from .loader import LoadedModel
from .lora_stack import LoraStack
from .merge_policy import Merger
from .peft_load import BASE, load_adapter
from .pool_entries import PoolStats, Resident, blend_key, release_memory
from .preparing import Preparations, Start
from .staging import Skeleton, attach

log = logging.getLogger(__name__)

_MIXED = "__mixed__"  # rows of several targets: PEFT routes each row by `adapter_names`


class AdapterPool:
    """Owns the served module: the base model, wrapped in a `PeftModel` once the first adapter loads.

    Used only from the engine thread.
    """

    def __init__(
        self, loaded: LoadedModel, catalog: AdapterCatalog, max_resident: int, merge_policy: MergePolicy
    ) -> None:
        self._loaded = loaded
        self._catalog = catalog
        self._max_resident = max_resident
        self.model: Any = loaded.model
        self._resident: OrderedDict[tuple[Any, ...], Resident] = OrderedDict()  # LRU order
        self._keys = (f"a{i}" for i in itertools.count())  # PEFT names: adapter names may contain "."
        self.stats = PoolStats()
        self._merge = Merger(merge_policy, loaded, self.stats)
        self.resident: frozenset[str] = frozenset()
        self._active: str | None = None  # what PEFT runs now; None: unknown (PEFT changed it)
        self._stack = LoraStack(loaded.dtype, group=self._stack_group, kernels=loaded.device_path.kernels)
        self._drop_listeners: list[Callable[[str], None]] = []
        skeleton = Skeleton(loaded.model, loaded.spec)
        self._preparing = Preparations(skeleton, catalog, self._keys, kept=max_resident)
        self.on_prepared = self._preparing.on_done
        self.turns = self._preparing.turns  # the engine's steps and the preparations take turns

    # -- what requests use --------------------------------------------------------------------------

    @torch.inference_mode()  # PEFT's bookkeeping touches tensors made in inference mode
    def acquire(self, model: str, blend: BlendSpec | None) -> str:
        """Make the request's target resident and pin it; return its PEFT adapter name (or BASE)."""
        if blend is not None:
            resident = self._blend(blend)
        elif model == self._loaded.name:
            return BASE
        else:
            resident = self._adapter(model)
        resident.refs += 1
        self._evict()
        return resident.key

    def ready_for(self, model: str, blend: BlendSpec | None, load: bool = True) -> bool:
        """Whether `acquire` may run now without waiting: the target is in memory, or `load` (it may be
        attached) and its preparation has ended. Starts preparing a cold target beside the batch."""
        try:
            preparation = self.preparation(model, blend)
        except HotloraError:
            return True  # `acquire` fails at once, loading nothing
        return preparation is None or (preparation.done() and load)

    def preparation(self, model: str, blend: BlendSpec | None = None) -> Future[Any] | None:
        """The preparation of a target not in memory, started beside the batch if it has not begun; None
        if it is in memory (or the base)."""
        if blend is not None:
            entries = self._catalog.check_blend(blend)
            cache_key = blend_key(blend, (entry.version for entry in entries))
            start: Start = self._preparing.blend(blend, entries)
        elif model == self._loaded.name:
            return None
        else:
            entry = self._catalog.get(model)
            cache_key, start = ("adapter", model, entry.version), self._preparing.adapter(entry)
        return None if cache_key in self._resident else self._preparing.start(cache_key, start)

    @torch.inference_mode()  # PEFT's bookkeeping touches tensors made in inference mode
    def release(self, key: str) -> None:
        if key == BASE:
            return
        resident = self._by_key(key)
        resident.refs -= 1
        if resident.stale and resident.refs == 0:
            self._drop(resident)
            release_memory()

    @contextmanager
    def routing(self, keys: list[str], decode: bool) -> Iterator[dict[str, Any]]:
        """One forward pass in which row `i` runs `keys[i]` (adapter keys or BASE); yields its kwargs.

        `decode`: a decode step (one token per row), else a prefill.

        Stackable adapters (plain LoRA, the normal case) are applied by `LoraStack` with PEFT's layers
        passing the base through; a batch holding any other kind goes through PEFT's per-row routing.
        """
        self._apply_merge_policy(set(keys))
        routed = [self._routed(key) for key in keys]
        if not isinstance(self.model, PeftModel):
            yield {}
            return
        distinct = set(routed)
        if self._stack.covers(self.model, distinct - {BASE}):
            self._activate(BASE)
            with self._stack.rows(routed, BASE, decode):
                yield {}
            return
        self._activate(next(iter(distinct)) if len(distinct) == 1 else _MIXED)
        yield {"adapter_names": routed} if self._active == _MIXED else {}

    def interleaves(self, keys: set[str]) -> bool:
        """Whether a decode step may run in the middle of another forward while the two route rows of
        `keys` (`prefill_slices`): neither may change what the model computes for the other, so no merges
        (`--merge-policy never`) and every adapter on the stack, which routes each forward by itself."""
        if not self._merge.never:
            return False
        return not isinstance(self.model, PeftModel) or self._stack.covers(self.model, keys - {BASE})

    @property
    def merged(self) -> bool:
        """Whether an adapter is merged into the base weights now (what the base computes differs)."""
        return self._merge.merged is not None

    def _routed(self, key: str) -> str:
        return BASE if self._merge.key is not None and key == self._merge.key else key

    @torch.inference_mode()  # PEFT's bookkeeping touches tensors made in inference mode
    def _apply_merge_policy(self, distinct: set[str]) -> None:
        """Merge the adapter that has the whole batch to itself (per `--merge-policy`), else unmerge."""
        wanted = self._merge.wanted(distinct)
        if self._merge.key != wanted:
            self._unmerge()
            if wanted is not None:
                label = self._by_key(wanted).label
                self._activate(_MIXED)  # the merge's probes route rows by `adapter_names`
                self._merge.merge(self.model, wanted, label)

    @torch.inference_mode()  # enabling adapter layers sets requires_grad, on tensors made in inference mode
    def _activate(self, target: str) -> None:
        """Make `target` (an adapter key, BASE, or _MIXED for per-row routing) what PEFT runs."""
        if not isinstance(self.model, PeftModel) or target == self._active:
            return
        tuner = self.model.base_model
        assert isinstance(tuner, BaseTuner)  # a LoRA PeftModel's base_model is its tuner
        if target == BASE:
            tuner.disable_adapter_layers()
        else:
            tuner.enable_adapter_layers()
            if target is not _MIXED:
                tuner.set_adapter(target, inference_mode=True)
        self._active = target

    # -- management ---------------------------------------------------------------------------------

    @torch.inference_mode()  # PEFT's bookkeeping touches tensors made in inference mode
    def load(self, name: str) -> None:
        """Load `name` now (or confirm it is resident), so its first request pays nothing."""
        self._adapter(name)
        self._evict()

    @torch.inference_mode()  # PEFT's bookkeeping touches tensors made in inference mode
    def invalidate(self, name: str, current: str | None = None) -> None:
        """`name` changed to version `current` (None: removed or disabled): drop whatever was built from
        another version, at once if idle, else when its last request finishes."""
        if current is None:
            self._catalog.forget(name)
        self._preparing.forget(name, current)
        dropped = False
        for resident in list(self._resident.values()):
            if name in resident.sources and resident.sources[name] != current:
                resident.stale = True
                if resident.refs == 0:
                    self._drop(resident)
                    dropped = True
        self._update_resident()
        if dropped:
            release_memory()

    def on_drop(self, listener: Callable[[str], None]) -> None:
        """Call `listener(key)` whenever an adapter or blend leaves the model, so that whatever is kept
        under its key elsewhere (the prefix cache's blocks) goes with it: keys are never used again."""
        self._drop_listeners.append(listener)

    def _update_resident(self) -> None:
        """Publish which store adapters are loaded, as one immutable value other threads may read."""
        self.resident = frozenset(
            r.label for r in self._resident.values() if r.kind == "adapter" and not r.stale
        )

    @torch.inference_mode()  # PEFT's bookkeeping touches tensors made in inference mode
    def save_blend(self, blend: BlendSpec, target: Path) -> Path:
        """Write `blend` as a PEFT folder under `target`; return the folder."""
        resident = self._blend(blend)
        resident.refs += 1
        try:
            with self._loaded.device_path.weights_held(self.model):  # save_pretrained calls state_dict()
                self.model.save_pretrained(str(target), selected_adapters=[resident.key])
        finally:
            self.release(resident.key)
        folder = target / resident.key
        return folder if folder.is_dir() else target

    # -- internals ----------------------------------------------------------------------------------

    def _delete(self, key: str) -> None:
        """Delete a PEFT adapter and leave a model that runs: PEFT keeps a deleted name active when none
        or several remain, and its forward then fails on it; with none left, the base is unwrapped."""
        self.model.delete_adapter(key)
        if not self.model.peft_config:
            self.model = self.model.unload()  # the LoRA layers go; the next load wraps the base again
        elif self.model.active_adapter not in self.model.peft_config:
            self.model.active_adapter = next(iter(self.model.peft_config))
        self._active = None
        self._stack.update(self.model)  # now: nothing of the deleted adapter may wait for the next forward

    def _model_changed(self) -> None:
        """PEFT added an adapter: what it runs and the stacked weights are set up again before the next
        forward that needs them (a delete is followed at once, in `_delete`)."""
        self._active = None
        self._stack.invalidate()

    def _stack_group(self, key: str) -> int:
        """Blends after plain adapters in the stacked blocks: a blend is served in place of its sources, so
        a batch of blends reads their blocks only, not the sources' too: one block per decode step
        instead of two (docs/performance.md)."""
        return int(any(r.key == key and r.kind == "blend" for r in self._resident.values()))

    def _by_key(self, key: str) -> Resident:
        return next(r for r in self._resident.values() if r.key == key)

    def _touch(self, cache_key: tuple[Any, ...]) -> Resident | None:
        resident = self._resident.get(cache_key)
        if resident is not None:
            self._resident.move_to_end(cache_key)
        return resident

    def _adapter(self, name: str, touch: bool = True) -> Resident:
        """`name` in memory, loaded if needed; `touch`: this counts as a use (least recently used order)."""
        entry = self._catalog.get(name)
        cache_key = ("adapter", name, entry.version)
        resident = self._touch(cache_key) if touch else self._resident.get(cache_key)
        if resident is not None:
            return resident
        prepared = self._preparing.take(cache_key)
        if prepared is not None and attach(self.model, prepared):
            key = prepared.key
            self._stack.invalidate()  # what PEFT runs is as it was: only the stacks change
        else:
            key, entry = self._load_consistent(entry)
        self.invalidate(name, entry.version)  # older versions: requests in flight finish on them
        self.stats.loads += 1
        resident = Resident(key=key, label=name, kind="adapter", sources={name: entry.version})
        self._resident[("adapter", name, entry.version)] = resident
        self._update_resident()
        return resident

    def _load_consistent(self, entry: StoredAdapter) -> tuple[str, StoredAdapter]:
        """Load `entry` under a new key; if it was re-registered while PEFT read it, read it again."""
        for _ in range(3):
            key = next(self._keys)
            log.info("loading adapter %s from %s", entry.name, entry.path)
            try:
                files = inspect_adapter(entry.path)
            except AdapterError:  # changed since it was judged: judge it again (a refusal says why)
                entry = self._catalog.get(entry.name)
                continue
            try:
                self.model = load_adapter(
                    self.model, self._loaded.model, files, self._loaded.spec, key, self._loaded.device_path
                )
            finally:  # loaded, or put back as it was: either way not what PEFT ran before
                self._model_changed()
            if self._catalog.store.versions().get(entry.name) == entry.version:
                return key, entry
            self._delete(key)  # a mix of two versions may have been read
            entry = self._catalog.get(entry.name)
        raise ServiceUnavailableError(f"adapter '{entry.name}' keeps changing on disk; retry", retry_after=1)

    def _blend(self, blend: BlendSpec) -> Resident:
        """The blend in memory, built if needed. Found by its sources' store versions, so a built blend is
        served without its sources in memory: they are only needed to build it."""
        entries = self._catalog.check_blend(blend)
        cache_key = blend_key(blend, (entry.version for entry in entries))
        resident = self._touch(cache_key)
        if resident is not None:
            return resident
        prepared = self._preparing.take(cache_key)
        if prepared is None or not attach(self.model, prepared):
            return self._build_blend(blend)
        self._stack.invalidate()  # what PEFT runs is as it was: only the stacks change
        versions = {entry.name: entry.version for entry in entries}
        return self._add_blend(blend, prepared.key, versions)

    def _build_blend(self, blend: BlendSpec) -> Resident:
        """Build `blend` from its sources. Sources loaded only for this build are made the least recently
        used entries: the first evicted when the slots are full, instead of the blends being served."""
        held = set(self._resident)
        sources = [self._adapter(name, touch=False) for name, _ in blend.components]
        versions = {
            name: source.sources[name] for (name, _), source in zip(blend.components, sources, strict=True)
        }
        for source in sources:  # pinned while the blend is built from them
            source.refs += 1
        key = next(self._keys)
        try:
            torch.manual_seed(0)  # DARE prunes at random: build the same blend the same way every time
            with self._loaded.device_path.weights_held(self.model):  # as above
                self.model.add_weighted_adapter(
                    adapters=[s.key for s in sources],
                    weights=[weight for _, weight in blend.components],
                    adapter_name=key,
                    combination_type=combination_type(blend.method),
                    density=blend.density,
                )
        except (ValueError, TypeError, RuntimeError) as exc:
            if key in self.model.peft_config:
                self._delete(key)
            raise InvalidRequestError(
                f"cannot blend {blend.label()} with '{blend.method}': {exc}", param="model"
            ) from exc
        finally:
            for source in sources:
                self.release(source.key)
            for cache_key in set(self._resident) - held:
                self._resident.move_to_end(cache_key, last=False)
        self._model_changed()
        return self._add_blend(blend, key, versions)

    def _add_blend(self, blend: BlendSpec, key: str, versions: dict[str, str]) -> Resident:
        self.stats.blends += 1
        log.info("built blend %s (%s) as %s", blend.label(), blend.method, key)
        resident = Resident(key=key, label=blend.label(), kind="blend", sources=versions)
        self._resident[blend_key(blend, versions.values())] = resident
        return resident

    def _evict(self) -> None:
        """Drop least recently used idle entries beyond the limit (pinned ones may exceed it briefly)."""
        idle = [r for r in self._resident.values() if r.refs == 0]
        evicted = idle[: max(0, len(self._resident) - self._max_resident)]
        for resident in evicted:
            log.info("evicting %s (least recently used)", resident.label)
            self.stats.evictions += 1
            self._drop(resident)
        if evicted:
            release_memory()  # once for them all: a full garbage collection is not cheap

    def _drop(self, resident: Resident) -> None:
        if self._merge.key == resident.key:
            self._unmerge()
        for cache_key, entry in list(self._resident.items()):
            if entry is resident:
                del self._resident[cache_key]
        self._delete(resident.key)
        self._merge.forget(resident.key)
        for listener in self._drop_listeners:
            listener(resident.key)
        self.stats.unloads += 1
        self._update_resident()

    def _unmerge(self) -> None:
        if self._merge.unmerge():
            release_memory()
