"""Per-row sampling: penalties, temperature, nucleus sampling, seeds and logprobs for a batch of rows.

Every row carries its own `SamplingParams` and its own `torch.Generator`, so a row's tokens depend only
on its own seed and logits — never on which other rows share the batch — and a row that cannot be
sampled raises for itself alone (the scheduler ends that request and the others carry on).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import torch

from ..errors import HotloraError
from ..types import SamplingParams

GREEDY_BELOW = 1e-5  # vLLM's `_SAMPLING_EPS`: dividing logits by a smaller temperature overflows float32


class NonFiniteLogitsError(HotloraError):
    """A row's logits hold NaN or infinity (e.g. an adapter whose weights overflow): nothing to sample from."""


@dataclass
class RowSampler:
    """Sampling state of one generated row."""

    params: SamplingParams
    generator: torch.Generator
    counts: dict[int, int]  # generated token -> occurrences, for presence/frequency penalties

    @classmethod
    def create(cls, params: SamplingParams, row: int) -> RowSampler:
        """Row `row` of a request with seed `s` samples from seed `s + row`: same seed, same choices."""
        seed = params.seed + row if params.seed is not None else secrets.randbits(63)
        generator = torch.Generator(device="cpu")
        generator.manual_seed(seed % (2**63))
        return cls(params=params, generator=generator, counts={})

    def penalize(self, logits: torch.Tensor) -> torch.Tensor:
        """OpenAI's penalties: `logit -= count * frequency_penalty + (count > 0) * presence_penalty`."""
        p = self.params
        if not self.counts or (p.presence_penalty == 0 and p.frequency_penalty == 0):
            return logits
        ids = torch.tensor(list(self.counts), dtype=torch.long)
        counts = torch.tensor(list(self.counts.values()), dtype=logits.dtype)
        logits = logits.clone()
        logits[ids] -= counts * p.frequency_penalty + p.presence_penalty
        return logits

    def choose(self, logits: torch.Tensor) -> int:
        """Pick the next token from one row's float32 logits; raises `NonFiniteLogitsError` if they hold NaN
        or infinity, where argmax would pick garbage and sampling would fail."""
        if not bool(torch.isfinite(logits).all()):
            raise NonFiniteLogitsError(
                "the model's scores for this request's next token are not finite (NaN or infinity): its "
                "adapter or blend makes the computation overflow"
            )
        logits = self.penalize(logits)
        p = self.params
        if p.temperature < GREEDY_BELOW:  # 0, or so close that the division would overflow: greedy
            token = int(torch.argmax(logits))
        else:
            probs = torch.softmax(logits / p.temperature, dim=-1)
            if p.top_p < 1.0:
                probs = _top_p(probs, p.top_p)
            token = int(torch.multinomial(probs, 1, generator=self.generator))
        self.counts[token] = self.counts.get(token, 0) + 1
        return token


def _top_p(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of tokens whose mass reaches `top_p` (always at least the top token)."""
    sorted_probs, order = torch.sort(probs, descending=True)
    before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
    sorted_probs[before >= top_p] = 0.0
    kept = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return kept / kept.sum()


def logprobs_of(logits: torch.Tensor, token: int, top: int) -> tuple[float, list[tuple[int, float]]]:
    """The model's log-probability of `token` and its `top` most likely alternatives (before penalties)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    alternatives: list[tuple[int, float]] = []
    if top > 0:
        values, ids = torch.topk(logp, top)
        alternatives = [(int(i), float(v)) for i, v in zip(ids, values, strict=True)]
    return float(logp[token]), alternatives
