"""Continuous batching with the real 4-bit SmolLM2: a request's output is the same alone and in a full batch.

The server gets five adapters of different ranks and strengths (one wide enough that the stacked LoRA
spreads them over three blocks, above the default rank cap, so the server raises `--max-lora-rank`); sixteen greedy requests over the base, the adapters and a blend run one
at a time, then all at once (joining the running batch at different steps, with prompts of different
lengths), and every text must be identical. Prefix caching is on (the default): one at a time, the first
request of each adapter prefills its whole prompt and later ones reuse cached blocks (the system turn, or
all but the tail of a prompt seen before), so the texts also show that a cached prefix gives what a full
prefill gives.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from support.live_server import BASE_ID, RunningServer, save_random_lora, serving

pytestmark = pytest.mark.integration

PROMPTS = [
    "Write a short story about a lighthouse keeper.",
    "Explain how rain forms.",
    "List five fruits.",
    "What is the capital of France, and why is it famous?",
]
MODELS = [BASE_ID, "r8", "r16", "gentle", "r4", "wide", "r8*0.5+r16*0.5", "r8"]


@pytest.fixture(scope="module")
def batching(
    tmp_path_factory: pytest.TempPathFactory, hotlora_home: Path, smollm2_dir: Path
) -> Iterator[RunningServer]:
    store = tmp_path_factory.mktemp("batch-store")
    for name, seed, rank, strength in (
        ("r8", 11, 8, 0.5),
        ("r16", 12, 16, 0.5),
        ("gentle", 13, 8, 0.25),
        ("r4", 14, 4, 1.0),
        ("wide", 15, 112, 0.25),
    ):
        save_random_lora(smollm2_dir, store / name, seed=seed, r=rank, strength=strength)
    log = tmp_path_factory.mktemp("batch-logs") / "server.log"
    with serving(
        ["--home", str(hotlora_home), "--adapters-dir", str(store), "--max-lora-rank", "128"], log
    ) as running:
        yield running


async def _complete(client: httpx.AsyncClient, model: str, prompt: str) -> str:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 24,
        "temperature": 0,
    }
    response = await client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    return str(response.json()["choices"][0]["message"]["content"])


def test_greedy_output_is_the_same_alone_and_in_a_full_mixed_batch(batching: RunningServer) -> None:
    requests = [(MODELS[i % len(MODELS)], PROMPTS[i % len(PROMPTS)]) for i in range(16)]

    async def run() -> tuple[list[str], list[str]]:
        async with httpx.AsyncClient(base_url=batching.base_url, timeout=300) as client:
            alone = [await _complete(client, model, prompt) for model, prompt in requests]
            together = await asyncio.gather(*(_complete(client, model, prompt) for model, prompt in requests))
        return alone, list(together)

    alone, together = asyncio.run(run())
    assert len(set(alone)) > 4  # the adapters and the blend really change the output
    for (model, prompt), a, b in zip(requests, alone, together, strict=True):
        assert a == b, f"{model} / {prompt!r}: alone {a!r} != in batch {b!r}"
