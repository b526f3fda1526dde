"""engine/sampling.py: greedy, seeds, nucleus, OpenAI penalties, logprobs, logits that cannot be sampled."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import pytest
import torch

from hotlora_server.engine.sampling import (
    GREEDY_BELOW,
    NonFiniteLogitsError,
    RowSampler,
    choose_tokens,
    logprobs_of,
)
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
    assert _sampler(seed=1, temperature=0.0).choose(logits) == _sampler(seed=2, temperature=0.0).choose(
        logits
    )


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
    assert _draw(_sampler(seed=1, temperature=1.0), logits, 30) != _draw(
        _sampler(seed=2, temperature=1.0), logits, 30
    )


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


@pytest.mark.parametrize("top_p", [1.7e-242, 1e-45, 1e-9])
def test_a_top_p_too_small_for_float32_keeps_the_top_token(top_p: float) -> None:
    """A `top_p` that rounds to 0 in float32 (schema-valid: greater than 0) keeps the top token, not none."""
    probs = torch.tensor([0.4, 0.3, 0.2, 0.1])
    assert set(_draw(_sampler(seed=0, temperature=1.0, top_p=top_p), probs.log(), 50)) == {0}


def test_top_p_one_can_draw_anything() -> None:
    probs = torch.tensor([0.4, 0.3, 0.2, 0.1])
    assert set(_draw(_sampler(seed=0, temperature=1.0, top_p=1.0), probs.log(), 600)) == {0, 1, 2, 3}


@pytest.mark.parametrize(("presence", "frequency"), [(0.5, 0.25), (0.0, 1.0), (1.5, 0.0), (-1.0, -0.5)])
def test_penalties_follow_the_openai_formula(presence: float, frequency: float) -> None:
    logits = torch.randn(20, generator=torch.Generator().manual_seed(0))
    original = logits.clone()
    sampler = _sampler(presence_penalty=presence, frequency_penalty=frequency)
    sampler.counts = {3: 2, 7: 1}
    penalized = sampler.process(logits)
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
    assert torch.equal(_sampler(presence_penalty=2.0, frequency_penalty=2.0).process(logits), logits)


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


# -- logit_bias, min_tokens and vLLM's extras (top_k, min_p, repetition_penalty) ------------------------


def _extras(
    seed: int | None = 1,
    row: int = 0,
    prompt: tuple[int, ...] = (),
    stops: frozenset[int] = frozenset(),
    **params: Any,
) -> RowSampler:
    return RowSampler.create(SamplingParams(seed=seed, **params), row, prompt, stops)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_bias_of_100_forces_its_token(temperature: float) -> None:
    logits = torch.randn(500, generator=torch.Generator().manual_seed(0)) * 3
    forced = int(torch.argmin(logits))
    sampler = _extras(temperature=temperature, logit_bias=((forced, 100.0),))
    assert _draw(sampler, logits, 20) == [forced] * 20


def test_a_bias_of_minus_100_bans_its_token_and_adds_exactly() -> None:
    logits = torch.randn(50, generator=torch.Generator().manual_seed(1))
    top = int(torch.argmax(logits))
    sampler = _extras(temperature=0.0, logit_bias=((top, -100.0), (3, 0.5)))
    processed = sampler.process(logits)
    assert processed[top] == logits[top] - 100.0 and processed[3] == logits[3] + 0.5
    others = [i for i in range(50) if i not in (top, 3)]
    assert torch.equal(processed[others], logits[others])
    assert sampler.choose(logits) != top


def test_top_k_one_is_greedy_whatever_the_seed_and_temperature() -> None:
    logits = _flat_logits()
    best = int(torch.argmax(logits))
    for seed in range(5):
        assert _draw(_extras(seed=seed, temperature=2.0, top_k=1), logits, 20) == [best] * 20


def test_top_k_draws_from_the_k_most_likely_only() -> None:
    logits = _flat_logits(200)
    top5 = set(torch.topk(logits, 5).indices.tolist())
    drawn = set(_draw(_extras(temperature=2.0, top_k=5), logits, 400))
    assert drawn == top5


@pytest.mark.parametrize("off", [0, -1, 1000, 5000])
def test_top_k_off_or_beyond_the_vocabulary_changes_nothing(off: int) -> None:
    logits = _flat_logits()
    assert _draw(_extras(seed=3, temperature=1.0, top_k=off), logits, 30) == _draw(
        _extras(seed=3, temperature=1.0), logits, 30
    )


def test_min_p_drops_tokens_below_its_share_of_the_top_token() -> None:
    probs = torch.tensor([0.5, 0.3, 0.12, 0.08])  # min_p 0.2: the threshold is 0.1
    drawn = Counter(_draw(_extras(temperature=1.0, min_p=0.2), probs.log(), 600))
    assert set(drawn) == {0, 1, 2}
    assert set(_draw(_extras(temperature=1.0, min_p=1.0), probs.log(), 50)) == {0}  # only the top token


@pytest.mark.parametrize("penalty", [1.3, 0.7, 2.0])
def test_repetition_penalty_is_hf_s_over_the_prompt_and_the_output(penalty: float) -> None:
    """The processed logits are those of transformers' `RepetitionPenaltyLogitsProcessor` over the prompt and
    the tokens generated so far, bit for bit, at every step."""
    from transformers import RepetitionPenaltyLogitsProcessor

    hf = RepetitionPenaltyLogitsProcessor(penalty)
    gen = torch.Generator().manual_seed(4)
    prompt = (5, 9, 9, 17, 40)
    sampler = _extras(temperature=0.0, prompt=prompt, repetition_penalty=penalty)
    history = list(prompt)
    for _ in range(6):
        logits = torch.randn(64, generator=gen) * 4
        expected = hf(torch.tensor([history]), logits.clone()[None, :])[0]
        assert torch.equal(sampler.process(logits), expected)
        token = sampler.choose(logits)
        assert token == int(torch.argmax(expected))
        history.append(token)


def test_repetition_penalty_one_changes_nothing() -> None:
    logits = _flat_logits()
    assert torch.equal(_extras(prompt=(1, 2, 3), repetition_penalty=1.0).process(logits), logits)


@pytest.mark.parametrize("penalty", [1e-45, 1e-30, 1e30, 1e300])
@pytest.mark.parametrize("temperature", [0.0, 1e-5, 1.0])
def test_extreme_repetition_penalties_still_sample(penalty: float, temperature: float) -> None:
    """A penalty that overflows a logit (a tiny one divides a positive logit to infinity) gives that token,
    never NaN or a failed draw."""
    logits = torch.tensor([3.0, 0.0, -2.0, 20.0, 0.5])
    sampler = _extras(temperature=temperature, prompt=(0, 1, 2), repetition_penalty=penalty)
    token = sampler.choose(logits)
    processed = sampler.process(logits)
    assert not bool(torch.isnan(processed).any())
    if penalty < 1:
        assert token == 0  # 3.0 / penalty is the largest (or infinite)
    else:
        assert token == 3  # the seen tokens are pushed down: 20.0 is far ahead of them all


def test_min_tokens_masks_the_stop_ids_until_that_many_tokens() -> None:
    logits = torch.zeros(10)
    logits[2] = 50.0  # the stop token would win every time
    sampler = _extras(temperature=0.0, stops=frozenset({2, 7}), min_tokens=3)
    drawn = _draw(sampler, logits, 4)
    assert 2 not in drawn[:3] and 7 not in drawn[:3]
    assert drawn[3] == 2
    assert _draw(_extras(temperature=1.0, stops=frozenset({2}), min_tokens=0), logits, 1) == [2]


def _mixed_batch() -> list[RowSampler]:
    """Rows of every kind: plain greedy, greedy with something to apply, and seeded draws."""
    return [
        _sampler(temperature=0.0),
        _sampler(temperature=0.0, presence_penalty=1.5),
        RowSampler.create(SamplingParams(temperature=0.0, logit_bias=((7, 100.0),)), 0),
        RowSampler.create(SamplingParams(temperature=0.0, min_tokens=3), 0, stop_ids=(3,)),
        _sampler(seed=5, temperature=0.8, top_p=0.9),
        _sampler(seed=6, temperature=1.0, repetition_penalty=1.3),
        _sampler(temperature=0.0),
    ]


def test_a_batch_chooses_the_tokens_row_by_row_choosing_does() -> None:
    """The shared argmax of the plain greedy rows and the rows chosen on their own give, step after step,
    what each row's own `choose` gives."""
    generator = torch.Generator().manual_seed(11)
    batched, alone = _mixed_batch(), _mixed_batch()
    assert [s.greedy_as_is for s in batched] == [True, True, False, False, False, False, True]
    for _ in range(6):
        logits = torch.randn(len(batched), 300, generator=generator) * 3
        logits[:, 3] += 4  # the stop id is likely, so min_tokens has something to mask
        expected = [sampler.choose(logits[i]) for i, sampler in enumerate(alone)]
        assert choose_tokens(batched, logits) == expected
    assert not batched[1].greedy_as_is  # once it has counts, its presence penalty applies


def test_a_batch_row_that_cannot_be_sampled_fails_alone() -> None:
    samplers = [_sampler(temperature=0.0), _sampler(temperature=0.0), _sampler(seed=1, temperature=1.0)]
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(2))
    logits[1, 4] = float("nan")
    first, second, third = choose_tokens(samplers, logits)
    assert first == int(torch.argmax(logits[0])) and isinstance(third, int)
    assert isinstance(second, NonFiniteLogitsError)
    assert samplers[1].generated == 0 and samplers[0].generated == 1
