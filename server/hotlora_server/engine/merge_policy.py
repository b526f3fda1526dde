"""When the pool merges one adapter into the base for speed (`--merge-policy`), and whether it may.

A merged adapter runs at the base's speed but changes what the base computes, so only an adapter that
has the whole batch to itself is merged (`auto`: after `AUTO_MERGE_AFTER` such forwards in a row), and
only if the merged model predicts what the unmerged one does on a probe; an adapter that fails the probe
is served unmerged from then on. The merge itself is `merging`'s.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import torch

from ..settings import AUTO_MERGE_AFTER, MergePolicy
from .loader import LoadedModel
from .merging import MergedAdapter, NotMergeable, merge, mergeable_layers
from .peft_load import BASE

log = logging.getLogger(__name__)

MERGE_PROBE = "Verify the merge: the quick brown fox jumps over the lazy dog."


class MergeCounters(Protocol):
    """The counters a merge adds to (the pool's `PoolStats`)."""

    merges: int
    unmerges: int
    merge_refusals: int


class Merger:
    """The merged adapter, if any, and what the next forward's batch wants merged.

    Used only from the engine thread, by the pool, which owns the model it merges into.
    """

    def __init__(self, policy: MergePolicy, loaded: LoadedModel, stats: MergeCounters) -> None:
        self._policy = policy
        self._loaded = loaded
        self._stats = stats
        self.merged: MergedAdapter | None = None
        self._kernel_error: float | None = None  # max |logit| difference of the dense vs the quantized base
        self._streak_key: str | None = None
        self._streak = 0
        self._unmergeable: set[str] = set()

    @property
    def never(self) -> bool:
        """Whether this policy never merges: what the base computes never changes."""
        return self._policy == "never"

    @property
    def key(self) -> str | None:
        """The merged adapter's key, or None."""
        return self.merged.key if self.merged is not None else None

    def wanted(self, distinct: set[str]) -> str | None:
        """Count a forward over adapters `distinct`; the adapter to have merged for it, or None."""
        alone = next(iter(distinct)) if len(distinct) == 1 else None
        self._streak = self._streak + 1 if alone is not None and alone == self._streak_key else 1
        self._streak_key = alone
        wanted = None
        if alone not in (None, BASE) and alone not in self._unmergeable:
            if self._policy == "always" or (self._policy == "auto" and self._streak >= AUTO_MERGE_AFTER):
                wanted = alone
        return wanted

    def merge(self, model: Any, key: str, label: str) -> None:
        """Merge `key` (called `label`) if the merged model predicts what the unmerged one does, up to the
        rounding the quantized kernel itself makes (the dense base vs the quantized base on the same probe).
        `model` must route rows by `adapter_names` meanwhile."""
        probe = self._loaded.tokenizer(MERGE_PROBE, return_tensors="pt").input_ids.to(self._loaded.device)

        def logits(adapter: str) -> torch.Tensor:
            return model(input_ids=probe, adapter_names=[adapter]).logits.float()

        try:
            mergeable_layers(model, key)
        except NotMergeable as exc:
            self._refuse(key, label, exc)
            return
        expected, base = logits(key), logits(BASE)
        try:
            if self._kernel_error is None:
                dense_base = merge(model, key, self._loaded.dtype, self._loaded.device_path, delta_scale=0.0)
                self._kernel_error = float((logits(BASE) - base).abs().max())
                dense_base.unmerge()
            merged = merge(model, key, self._loaded.dtype, self._loaded.device_path)
        except NotMergeable as exc:
            self._refuse(key, label, exc)
            return
        diff = float((logits(BASE) - expected).abs().max())
        tolerance = 3 * self._kernel_error + 1e-3 * float(expected.abs().max())
        if diff > tolerance:
            merged.unmerge()
            self._refuse(key, label, NotMergeable(f"merged logits differ by {diff:.3g} (> {tolerance:.3g})"))
            return
        self.merged = merged
        self._stats.merges += 1
        log.info("merged %s for speed (merges so far: %d)", label, self._stats.merges)

    def unmerge(self) -> bool:
        """Put the base's own layers back; whether an adapter was merged."""
        if self.merged is None:
            return False
        self.merged.unmerge()
        self.merged = None
        self._stats.unmerges += 1
        return True

    def forget(self, key: str) -> None:
        """`key` left the model: its refusal goes too (keys are never used again)."""
        self._unmergeable.discard(key)

    def _refuse(self, key: str, label: str, reason: NotMergeable) -> None:
        log.info("serving %s unmerged: %s", label, reason)
        self._unmergeable.add(key)
        self._stats.merge_refusals += 1
