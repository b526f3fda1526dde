"""engine/sampling.py: greedy, seeds, nucleus, OpenAI penalties, logprobs, logits that cannot be sampled."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from hotlora_server.engine.sampling import GREEDY_BELOW, NonFiniteLogitsError, RowSampler, logprobs_of
from hotlora_server.types import SamplingParams


def _sampler(seed: int | None = None, row: int = 0, **params: float) -> RowSampler:
    return RowSampler.create(SamplingParams(seed=seed, **params), row)


def _draw(sampler: RowSampler, logits: torch.Tensor, k: int) -> list[int]:
    return [sampler.choose(logits) for _ in range(k)]


def _flat_logits(vocab: int = 1000) -> torch.Tensor:
    return torch.randn(vocab, generator=torch.Generator().manual_seed(3)) * 0.1


def test_temperature_zero_is_argmax() -> None:
    logits = torch.randn(500, generator=torch.Generator().manual_seed(0))
    sampler = _sampler(seed=1, temperature=0.0)
    assert _draw(sampler, logits, 5) == [int(torch.argmax(logits))] * 5


def test_temperature_zero_ignores_the_seed() -> None:
    logits = torch.randn(500, generator=torch.Generator().manual_seed(0))
    assert _sampler(seed=1, temperature=0.0).choose(logits) == _sampler(seed=2, temperature=0.0).choose(logits)


@pytest.mark.parametrize("temperature", [1e-45, 1e-40, 1e-37, 1e-20, GREEDY_BELOW / 2])
def test_a_temperature_below_the_threshold_is_greedy(temperature: float) -> None:
    """Logits of a real model's size divided by such a temperature overflow: it samples greedily, as vLLM."""
    logits = torch.randn(500, generator=torch.Generator().manual_seed(0)) * 30
    assert _draw(_sampler(seed=1, temperature=temperature), logits, 5) == [int(torch.argmax(logits))] * 5


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_logits_that_are_not_finite_raise_for_their_row(bad: float, temperature: float) -> None:
    """Greedy would pick the NaN's position and sampling would fail deep in torch: the row raises a clear
    error of its own instead, and its sampler stays usable (nothing was counted)."""
    logits = torch.randn(50, generator=torch.Generator().manual_seed(0))
    logits[7] = bad
    sampler = _sampler(seed=1, temperature=temperature)
    with pytest.raises(NonFiniteLogitsError, match="not finite"):
        sampler.choose(logits)
    assert sampler.counts == {}


def test_same_seed_same_tokens() -> None:
    logits = _flat_logits()
    first = _draw(_sampler(seed=42, temperature=1.0), logits, 30)
    second = _draw(_sampler(seed=42, temperature=1.0), logits, 30)
    assert first == second


def test_different_seeds_differ() -> None:
    logits = _flat_logits()
    assert _draw(_sampler(seed=1, temperature=1.0), logits, 30) != _draw(_sampler(seed=2, temperature=1.0), logits, 30)


def test_row_offsets_the_seed() -> None:
    """Choice `i` of a request with seed `s` samples like choice 0 of seed `s + i`: n choices differ."""
    logits = _flat_logits()
    row1 = _draw(_sampler(seed=10, row=1, temperature=1.0), logits, 20)
    assert row1 == _draw(_sampler(seed=11, row=0, temperature=1.0), logits, 20)
    assert row1 != _draw(_sampler(seed=10, row=0, temperature=1.0), logits, 20)


def test_unseeded_samplers_differ() -> None:
    logits = _flat_logits()
    assert _draw(_sampler(temperature=1.0), logits, 30) != _draw(_sampler(temperature=1.0), logits, 30)


def test_top_p_keeps_only_the_top_token_of_a_peaked_distribution() -> None:
    probs = torch.tensor([0.6, 0.1, 0.1, 0.1, 0.1])
    sampler = _sampler(seed=0, temperature=1.0, top_p=0.5)
    assert set(_draw(sampler, probs.log(), 300)) == {0}


def test_top_p_keeps_the_nucleus() -> None:
    # cumulative mass before each token: 0, .4, .7, .9 -> top_p .6 keeps tokens 0 and 1 only
    probs = torch.tensor([0.4, 0.3, 0.2, 0.1])
    drawn = Counter(_draw(_sampler(seed=0, temperature=1.0, top_p=0.6), probs.log(), 600))
    assert set(drawn) == {0, 1}
    assert drawn[0] > drawn[1]  # renormalised 4:3


def test_top_p_one_can_draw_anything() -> None:
    probs = torch.tensor([0.4, 0.3, 0.2, 0.1])
    assert set(_draw(_sampler(seed=0, temperature=1.0, top_p=1.0), probs.log(), 600)) == {0, 1, 2, 3}


@pytest.mark.parametrize(("presence", "frequency"), [(0.5, 0.25), (0.0, 1.0), (1.5, 0.0), (-1.0, -0.5)])
def test_penalties_follow_the_openai_formula(presence: float, frequency: float) -> None:
    logits = torch.randn(20, generator=torch.Generator().manual_seed(0))
    original = logits.clone()
    sampler = _sampler(presence_penalty=presence, frequency_penalty=frequency)
    sampler.counts = {3: 2, 7: 1}
    penalized = sampler.penalize(logits)
    expected = original.clone()
    expected[3] -= 2 * frequency + presence
    expected[7] -= 1 * frequency + presence
    torch.testing.assert_close(penalized, expected)
    torch.testing.assert_close(logits, original)  # the caller's logits are not modified


def test_presence_penalty_changes_greedy_choice_after_a_repeat() -> None:
    logits = torch.tensor([2.0, 1.5, 0.0])
    sampler = _sampler(temperature=0.0, presence_penalty=1.0)
    assert _draw(sampler, logits, 2) == [0, 1]
    assert sampler.counts == {0: 1, 1: 1}


def test_frequency_penalty_grows_with_the_count() -> None:
    logits = torch.tensor([2.0, 1.2, 0.0])
    sampler = _sampler(temperature=0.0, frequency_penalty=0.5)
    # 0 (2.0) -> 0 (1.5 vs 1.2) -> 1 (1.0 vs 1.2)
    assert _draw(sampler, logits, 3) == [0, 0, 1]


def test_no_penalty_without_history() -> None:
    logits = torch.randn(10)
    assert torch.equal(_sampler(presence_penalty=2.0, frequency_penalty=2.0).penalize(logits), logits)


def test_logprobs_of_returns_log_softmax_and_sorted_alternatives() -> None:
    logits = torch.randn(100, generator=torch.Generator().manual_seed(5)) * 3
    expected = torch.log_softmax(logits, dim=-1)
    token = 17
    value, top = logprobs_of(logits, token, 5)
    assert math.isclose(value, float(expected[token]), rel_tol=1e-5, abs_tol=1e-6)
    assert len(top) == 5
    values = [lp for _, lp in top]
    assert values == sorted(values, reverse=True)
    assert [i for i, _ in top] == [int(i) for i in torch.argsort(expected, descending=True)[:5]]
    for i, lp in top:
        assert math.isclose(lp, float(expected[i]), rel_tol=1e-5, abs_tol=1e-6)
    assert math.isclose(sum(math.exp(v) for v in expected.tolist()), 1.0, rel_tol=1e-4)


def test_logprobs_of_without_alternatives() -> None:
    logits = torch.randn(10)
    value, top = logprobs_of(logits, 0, 0)
    assert top == []
    assert value <= 0.0


def test_logprobs_of_accepts_half_precision_logits() -> None:
    logits = torch.randn(50, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    value, top = logprobs_of(logits, 3, 2)
    assert math.isclose(value, float(torch.log_softmax(logits.float(), -1)[3]), rel_tol=1e-4)
    assert len(top) == 2
