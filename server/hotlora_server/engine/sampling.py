"""Per-row sampling: logit bias, min_tokens, penalties, grammar masks, temperature, min-p, top-k, top-p, seeds
and logprobs.

Every row carries its own `SamplingParams`, its own `torch.Generator` and its own history (the prompt's
tokens and what it generated), so a row's tokens depend only on its own options, seed and logits — never on
which other rows share the batch — and a row that cannot be sampled raises for itself alone (the scheduler
ends that request and the others carry on).

The order is vLLM's: logit bias and the min_tokens mask, then the penalties (repetition, frequency, presence),
then the row's grammar mask (structured outputs: every token its grammar forbids next is dropped), then
either the greedy choice, or temperature, min-p, top-k, top-p and a draw; the grammar then advances with
the token chosen.

`choose_tokens` takes a whole batch's logits where they are (on a GPU, on the GPU): the greedy rows with
nothing to apply share one argmax, so an accelerator sends back token ids rather than every row's logits.
"""

from __future__ import annotations

import secrets
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

import torch

from ..errors import HotloraError
from ..types import SamplingParams
from .grammar import RowGrammar

GREEDY_BELOW = 1e-5  # vLLM's `_SAMPLING_EPS`: dividing logits by a smaller temperature overflows float32


class NonFiniteLogitsError(HotloraError):
    """A row's logits hold NaN or infinity (e.g. an adapter whose weights overflow): nothing to sample from."""


@dataclass
class RowSampler:
    """Sampling state of one generated row."""

    params: SamplingParams
    generator: torch.Generator  # on the CPU
    seed: int
    counts: dict[int, int]  # generated token -> occurrences, for presence/frequency penalties
    prompt_ids: Sequence[int] = ()  # for the repetition penalty, which counts the prompt's tokens too
    stop_ids: Collection[int] = ()  # EOS tokens, masked until `min_tokens` tokens were generated
    grammar: RowGrammar | None = None  # structured output: the row's own grammar state
    generated: int = 0
    _seen: torch.Tensor | None = field(default=None, repr=False)  # prompt and output tokens, for repetition
    _device_generator: torch.Generator | None = field(default=None, repr=False)  # for logits off the CPU

    @classmethod
    def create(
        cls,
        params: SamplingParams,
        row: int,
        prompt_ids: Sequence[int] = (),
        stop_ids: Collection[int] = (),
        grammar: RowGrammar | None = None,
    ) -> RowSampler:
        """Row `row` of a request with seed `s` samples from seed `s + row`: same seed, same choices."""
        seed = params.seed + row if params.seed is not None else secrets.randbits(63)
        generator = torch.Generator(device="cpu")
        generator.manual_seed(seed % (2**63))
        return cls(
            params=params,
            generator=generator,
            seed=seed % (2**63),
            counts={},
            prompt_ids=prompt_ids,
            stop_ids=stop_ids,
            grammar=grammar,
        )

    @property
    def greedy_as_is(self) -> bool:
        """Whether the next token is the argmax of the logits as they come: greedy, nothing to apply first."""
        p = self.params
        greedy = p.temperature is not None and p.temperature < GREEDY_BELOW
        return (
            greedy
            and self.grammar is None
            and not (
                p.logit_bias
                or (self.generated < p.min_tokens and self.stop_ids)
                or (p.repetition_penalty is not None and p.repetition_penalty != 1.0)
                or (self.counts and (p.presence_penalty != 0 or p.frequency_penalty != 0))
            )
        )

    def process(self, logits: torch.Tensor) -> torch.Tensor:
        """One row's logits after its logit bias, min_tokens mask and penalties (a copy when any applies)."""
        p = self.params
        out = logits
        if p.logit_bias:
            out = out.clone()
            ids = torch.tensor([token for token, _ in p.logit_bias], dtype=torch.long, device=out.device)
            out[ids] += torch.tensor([bias for _, bias in p.logit_bias], dtype=out.dtype, device=out.device)
        if self.generated < p.min_tokens and self.stop_ids:
            out = out.clone() if out is logits else out
            out[[i for i in self.stop_ids if i < out.shape[-1]]] = float("-inf")
        if p.repetition_penalty is not None and p.repetition_penalty != 1.0:
            out = self._repetition(out.clone() if out is logits else out, p.repetition_penalty)
        if self.counts and (p.presence_penalty != 0 or p.frequency_penalty != 0):
            out = out.clone() if out is logits else out
            ids = torch.tensor(list(self.counts), dtype=torch.long, device=out.device)
            counts = torch.tensor(list(self.counts.values()), dtype=out.dtype, device=out.device)
            out[ids] -= counts * p.frequency_penalty + p.presence_penalty  # OpenAI's definition
        return out

    def _repetition(self, logits: torch.Tensor, penalty: float) -> torch.Tensor:
        """HF's `RepetitionPenaltyLogitsProcessor` (vLLM's too) over every token of the prompt and the output:
        a positive logit divided by `penalty`, a negative one multiplied."""
        if self._seen is None:
            self._seen = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
            prompt = [i for i in set(self.prompt_ids) if 0 <= i < logits.shape[-1]]
            self._seen[prompt] = True
            self._seen[list(self.counts)] = True
        # within the dtype's range, so that no product is 0 x inf or 0 / 0 (a NaN); the same value otherwise
        info = torch.finfo(logits.dtype)
        penalty = min(max(penalty, info.tiny), info.max)
        seen = logits[self._seen]
        logits[self._seen] = torch.where(seen < 0, seen * penalty, seen / penalty)
        return logits

    def choose(self, logits: torch.Tensor) -> int:
        """Pick the next token from one row's float32 logits (on any device; a grammar's row on the CPU);
        raises `NonFiniteLogitsError` if they hold NaN or infinity, where argmax would pick garbage and
        sampling would fail."""
        if not bool(torch.isfinite(logits).all()):
            raise NonFiniteLogitsError(
                "the model's scores for this request's next token are not finite (NaN or infinity): its "
                "adapter or blend makes the computation overflow"
            )
        logits = self.process(logits)
        if self.grammar is not None:
            logits = self.grammar.mask(logits)
        p = self.params
        temperature = 1.0 if p.temperature is None else p.temperature
        if temperature < GREEDY_BELOW:  # 0, or so close that the division would overflow: greedy
            token = int(torch.argmax(logits))
        else:
            probs = torch.softmax(_overflow_kept(logits / temperature), dim=-1)
            if p.min_p:
                probs = _min_p(probs, p.min_p)
            if p.top_k is not None and 0 < p.top_k < probs.shape[-1]:
                probs = _top_k(probs, p.top_k)
            if p.top_p is not None and p.top_p < 1.0:
                probs = _top_p(probs, p.top_p)
            token = int(torch.multinomial(probs, 1, generator=self._generator(probs.device)))
        self.accept(token)
        return token

    def accept(self, token: int) -> None:
        """Count the token chosen for this row, and move its grammar past it."""
        if self.grammar is not None:
            self.grammar.advance(token)
        self.counts[token] = self.counts.get(token, 0) + 1
        self.generated += 1
        if self._seen is not None:
            self._seen[token] = True

    def _generator(self, device: torch.device) -> torch.Generator:
        """The row's generator on `device`: a draw on a GPU needs one there (seeded alike; its draws are
        its own: a seed repeats its answers on the same kind of device)."""
        if device.type == "cpu":
            return self.generator
        if self._device_generator is None or self._device_generator.device != device:
            self._device_generator = torch.Generator(device=device)
            self._device_generator.manual_seed(self.seed)
        return self._device_generator


def choose_tokens(samplers: Sequence[RowSampler], logits: torch.Tensor) -> list[int | Exception]:
    """Each row's next token from the batch's logits `[rows, vocabulary]`, or the error that row raised.

    One finiteness check and one argmax serve every greedy row with nothing to apply; the other rows are
    chosen one by one (a grammar's row on the CPU). The tokens are those of choosing row by row.
    """
    scores = logits.float()
    finite = torch.isfinite(scores).all(dim=-1).tolist()
    plain = [i for i, sampler in enumerate(samplers) if finite[i] and sampler.greedy_as_is]
    tokens: list[int | Exception] = [0] * len(samplers)
    if plain:
        picked = torch.argmax(scores[plain], dim=-1).tolist()
        for i, token in zip(plain, picked, strict=True):
            samplers[i].accept(token)
            tokens[i] = token
    for i in sorted(set(range(len(samplers))) - set(plain)):
        sampler = samplers[i]
        try:
            tokens[i] = sampler.choose(scores[i] if sampler.grammar is None else scores[i].cpu())
        except Exception as exc:  # this row's failure is its own
            tokens[i] = exc
    return tokens


def _overflow_kept(scaled: torch.Tensor) -> torch.Tensor:
    """Logits whose scaling overflowed to +inf (a tiny repetition penalty or temperature on a large logit)
    win outright, evenly: softmax would turn them into NaN."""
    overflow = torch.isposinf(scaled)
    if bool(overflow.any()):
        return torch.where(overflow, 0.0, float("-inf"))
    return scaled


def _min_p(probs: torch.Tensor, min_p: float) -> torch.Tensor:
    """vLLM's min-p: drop tokens less likely than `min_p` times the most likely one."""
    kept = torch.where(probs < probs.max() * min_p, 0.0, probs)
    return kept / kept.sum()


def _top_k(probs: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the `k` most likely tokens (and any tied with the k-th, as vLLM does)."""
    kth = torch.topk(probs, k).values[-1]
    kept = torch.where(probs < kth, 0.0, probs)
    return kept / kept.sum()


def _top_p(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of tokens whose mass reaches `top_p` (always at least the top token)."""
    sorted_probs, order = torch.sort(probs, descending=True)
    dropped = torch.cumsum(sorted_probs, dim=-1) - sorted_probs >= top_p
    dropped[0] = False  # the top token stays even when `top_p` rounds to 0 in the logits' dtype
    sorted_probs[dropped] = 0.0
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
