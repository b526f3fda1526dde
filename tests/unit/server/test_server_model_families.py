"""Every decoder-only family the server claims, on tiny random configs with the real SmolLM2 tokenizer:
Llama, Qwen2, Qwen3, Mistral, Gemma 2, Gemma 3 and Phi-3 (fused `qkv_proj` / `gate_up_proj`).

For each: the batch-invariant attention matches transformers' eager attention (padding, sliding windows,
Gemma 2's softcapping); the trainer trains an adapter on it; the server serves the 4-bit base, that
adapter, a random one and their blend, with prefix caching on; and every request's output is the same
alone and among the others.
"""

from __future__ import annotations

import asyncio
import dataclasses
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

from hotlora_server.engine.attention import use_batch_invariant_attention
from hotlora_server.types import BlendSpec

from support.model_families import FAMILIES, tiny_model
from support.tiny_server import chat_request, collect, running_engine, tiny_settings

PROMPTS = (
    "a shared system turn that the prefix cache keeps, then the first question",
    "a shared system turn that the prefix cache keeps, then another question entirely",
    "x",
)


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request: pytest.FixtureRequest) -> str:
    return request.param


@torch.inference_mode()
def test_batch_invariant_attention_matches_eager(family: str, real_tokenizer: Any, cpu_kernels: Any) -> None:
    model = tiny_model(family, real_tokenizer)
    ids = torch.randint(0, 1000, (2, 20), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :5] = 0  # row 1 left-padded
    model.set_attn_implementation("eager")
    expected = model(input_ids=ids, attention_mask=mask).logits
    use_batch_invariant_attention(model, cpu_kernels)
    got = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(got[0], expected[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got[1, 5:], expected[1, 5:], rtol=1e-4, atol=1e-4)


BLEND = BlendSpec(components=(("trained", 0.5), ("random", 0.5)))


def _outputs(engine: Any, cases: list[tuple[str, str]], concurrently: bool) -> list[str]:
    async def run() -> list[tuple[dict[int, str], Any]]:
        requests = [
            dataclasses.replace(
                chat_request(model, text, max_tokens=10), blend=BLEND if model == BLEND.label() else None
            )
            for model, text in cases
        ]
        if concurrently:
            return list(await asyncio.gather(*(collect(engine, r) for r in requests)))
        return [await collect(engine, r) for r in requests]

    return [texts[0] for texts, _ in asyncio.run(run())]


def test_train_serve_blend_and_batch_invariance(family: str, real_tokenizer: Any, tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model

    from hotlora_adapters import AdapterStore
    from hotlora_trainer import TrainConfig, train

    base = tmp_path / family
    tiny_model(family, real_tokenizer).save_pretrained(base)
    real_tokenizer.save_pretrained(base)
    store = tmp_path / "store"
    rows = tmp_path / "data.jsonl"
    rows.write_text(
        "".join(
            f'{{"messages": [{{"role": "user", "content": "say {w}"}}, {{"role": "assistant", "content": "{w} {w}"}}]}}\n'
            for w in ("one", "two", "three", "four")
        )
    )
    config = TrainConfig(
        name="trained",
        data=rows,
        base=str(base),
        home=tmp_path / "home",
        adapters_dir=store,
        device="cpu",
        r=4,
        max_steps=2,
        per_device_train_batch_size=2,
        learning_rate=1e-2,
    )
    assert train(config, out=lambda _line: None, progress_bar=False, env={}).manifest is not None
    torch.manual_seed(3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lora = LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)
        get_peft_model(tiny_model(family, real_tokenizer), lora).save_pretrained(tmp_path / "random")
    AdapterStore(store).register("random", tmp_path / "random")

    settings = tiny_settings(base, tmp_path / "home", store, quantize="nf4")
    with running_engine(settings) as engine:
        assert engine._loaded.batch_invariant
        served = {m.id for m in asyncio.run(engine.list_models())}
        assert {"trained", "random"} <= served
        cases = [(model, text) for model in ("tiny", "trained", "random", BLEND.label()) for text in PROMPTS]
        alone = _outputs(engine, cases, concurrently=False)
        assert _outputs(engine, cases, concurrently=True) == alone
        assert _outputs(engine, cases, concurrently=False) == alone  # now from the prefix cache
        by_model = {
            model: alone[i * len(PROMPTS) : (i + 1) * len(PROMPTS)]
            for i, model in enumerate(("tiny", "trained", "random", "blend"))
        }
        assert by_model["random"] != by_model["tiny"] and by_model["blend"] != by_model["random"]
        assert engine.stats().prefix_cache_hit_tokens > 0
