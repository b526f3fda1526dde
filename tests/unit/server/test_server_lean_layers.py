"""The lean decoder-layer forward gives every Llama-shaped family the bits of transformers' own forward
(prefill and decode steps, left padding, sliding windows, every attention the server uses), keeps PEFT's
per-row routing, and stays off where it does not apply or its probe differs."""

from __future__ import annotations

import asyncio
import logging
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import DynamicCache

from hotlora_server.engine import lean_layers
from hotlora_server.engine.attention import use_batch_invariant_attention
from hotlora_server.engine.device_path import PLAIN, DevicePath

from support.model_families import tiny_model
from support.tiny_server import ADAPTER_NAME, TINY_NAME, chat_request, running_engine, tiny_settings

LEAN = ("llama", "qwen2", "qwen3", "mistral")


@torch.inference_mode()
def _generate(model: Any, steps: int = 8, **forward: Any) -> list[torch.Tensor]:
    """Every logit of a left-padded two-row prompt of 12 tokens, then `steps` greedy decode steps (past
    Mistral's sliding window of 8), each row at its own positions as the engine gives them."""
    ids = torch.randint(0, 1000, (2, 12), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    cache = DynamicCache(config=model.config)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = [
        model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, **forward).logits
    ]
    for _ in range(steps):
        mask = torch.cat([mask, torch.ones(2, 1, dtype=mask.dtype)], dim=1)
        token = logits[-1][:, -1].argmax(-1, keepdim=True)
        positions = mask.sum(-1, keepdim=True) - 1
        logits.append(
            model(input_ids=token, attention_mask=mask, position_ids=positions, cache=cache, **forward).logits
        )
    return logits


def _attend(model: Any, attention: str, kernels: Any) -> Any:
    if attention == "batch-invariant":
        use_batch_invariant_attention(model, kernels)
    else:
        model.set_attn_implementation(attention)
    return model


def _counted_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the linear-layer calls the lean forward makes (it makes none when a layer runs its own)."""
    calls = [0]
    call = lean_layers._call

    def counted(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        calls[0] += 1
        return call(module, x)

    monkeypatch.setattr(lean_layers, "_call", counted)
    return calls


@pytest.mark.parametrize("row_kernels", [False, True], ids=["torch-rotary", "kernel-rotary"])
@pytest.mark.parametrize("attention", ["batch-invariant", "sdpa", "eager"])
@pytest.mark.parametrize("family", LEAN)
def test_the_lean_forward_gives_the_models_own_bits(
    family: str,
    attention: str,
    row_kernels: bool,
    real_tokenizer: Any,
    cpu_kernels: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    expected = _generate(_attend(tiny_model(family, real_tokenizer), attention, cpu_kernels))
    model = _attend(tiny_model(family, real_tokenizer), attention, cpu_kernels)
    assert lean_layers.install(model, DevicePath(kernels=cpu_kernels) if row_kernels else PLAIN) == 2
    calls, rotations = _counted_calls(monkeypatch), [0]
    rotary = type(cpu_kernels).rotary

    def counted_rotary(self: Any, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        rotations[0] += 1
        return rotary(self, x, cos, sin)

    monkeypatch.setattr(type(cpu_kernels), "rotary", counted_rotary)
    got = _generate(model)
    assert calls[0] == 9 * 2 * 7  # every forward, every layer, all seven linear layers
    assert rotations[0] == (9 * 2 * 2 if row_kernels else 0)  # q and k in every layer of every forward
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))


@pytest.mark.parametrize("family", ["gemma2", "gemma3_text", "phi3"])
def test_other_families_keep_their_own_forward(family: str, real_tokenizer: Any) -> None:
    model = tiny_model(family, real_tokenizer)
    assert lean_layers.install(model) == 0
    assert not any(isinstance(layer.forward, lean_layers.LeanLayer) for layer in model.model.layers)


def test_a_probe_that_differs_keeps_transformers_forward(
    real_tokenizer: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def rotated_the_other_way(x: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        return torch.cat((x[..., half:], -x[..., :half]), dim=-1)

    monkeypatch.setattr(lean_layers, "_rotate_half", rotated_the_other_way)
    model = tiny_model("llama", real_tokenizer)
    with caplog.at_level(logging.WARNING, logger=lean_layers.__name__):
        assert lean_layers.install(model) == 0
    assert "keep transformers' forward" in caplog.text
    assert not any(isinstance(layer.forward, lean_layers.LeanLayer) for layer in model.model.layers)


def test_peft_routing_per_row_goes_through_its_hooks(
    real_tokenizer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from peft import LoraConfig, get_peft_model

    def peft_model(lean: bool) -> Any:
        base = tiny_model("llama", real_tokenizer)
        if lean:
            assert lean_layers.install(base) == 2
        torch.manual_seed(3)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            config = LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)
            model = get_peft_model(base, config, adapter_name="one")
            model.add_adapter("two", config)
        return model.eval()

    routed = {"adapter_names": ["one", "two"]}
    expected = _generate(peft_model(lean=False), steps=3, **routed)
    model = peft_model(lean=True)
    calls = _counted_calls(monkeypatch)
    got = _generate(model, steps=3, **routed)
    assert calls[0] > 0
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))
    with model.disable_adapter():
        plain = _generate(model, steps=0)
    assert not torch.equal(plain[0], got[0])  # the adapters did change the output


def test_a_layer_in_training_mode_runs_its_own_forward(
    real_tokenizer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tiny_model("llama", real_tokenizer, attention_dropout=0.5)
    assert lean_layers.install(model) == 2
    calls = _counted_calls(monkeypatch)
    model.train()
    model(input_ids=torch.tensor([[1, 2, 3]])).logits.sum().backward()
    assert calls[0] == 0
    model.eval()
    model(input_ids=torch.tensor([[1, 2, 3]]))
    assert calls[0] == 2 * 7


@pytest.mark.parametrize("cpu_4bit", ["hotlora", "bitsandbytes"])
def test_served_tokens_and_logprobs_are_those_of_transformers_forward(
    tiny_dir: Path, adapter_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cpu_4bit: str
) -> None:
    """Served on either CPU 4-bit path with a stacked adapter: base and adapter rows in shared decode
    steps give the logprobs they get with transformers' own layer forward. On hotlora's kernel their
    q/k/v and gate/up products come from one kernel call each; bitsandbytes' layers (its fused kernel
    where the CPU has AVX512-BF16) are called one by one."""
    from hotlora_server.engine.cpu import linear4

    def served() -> list[Any]:
        async def run() -> list[Any]:
            requests = [
                chat_request(model, text, max_tokens=8, logprobs=True, top_logprobs=3)
                for model in (TINY_NAME, ADAPTER_NAME)
                for text in ("first question", "a second, longer question")
            ]
            return list(await asyncio.gather(*(_logprobs(engine, r) for r in requests)))

        with running_engine(
            tiny_settings(tiny_dir, tmp_path / "home", adapter_store, quantize="nf4", cpu_4bit=cpu_4bit)
        ) as engine:
            return asyncio.run(run())

    grouped = [0]
    many = linear4.many

    def counted(layers: Any, x: torch.Tensor) -> Any:
        out = many(layers, x)
        grouped[0] += out is not None
        return out

    monkeypatch.setattr(linear4, "many", counted)
    lean = served()
    assert (grouped[0] > 0) == (cpu_4bit == "hotlora")
    monkeypatch.setattr(lean_layers, "install", lambda model, path=None: 0)
    assert served() == lean


async def _logprobs(engine: Any, request: Any) -> list[Any]:
    from hotlora_server.types import ChoiceDelta

    return [event.logprobs async for event in engine.generate(request) if isinstance(event, ChoiceDelta)]
