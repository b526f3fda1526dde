"""The prefill path of 4-bit layers on CPU: bf16 GEMMs in fixed tiles, batch-invariant, close to the kernel."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import bitsandbytes as bnb
import pytest
import torch
from transformers import AutoModelForCausalLM, DynamicCache

from hotlora_adapters.runtime.base_model import quantization_config
from hotlora_server.engine.attention import use_batch_invariant_attention
from hotlora_server.engine.cpu import prefill_gemm
from hotlora_server.engine.cpu.bnb import PackedDecode
from hotlora_server.engine.generate import prefill
from hotlora_server.engine.loader import load_model

from support.tiny_server import tiny_settings


def test_a_rows_tiled_result_does_not_depend_on_the_other_rows() -> None:
    """SmolLM2's shape, where one bf16 GEMM gives rows 0-39 other bits alone than among 640 rows (measured)."""
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(576, 576, generator=gen).to(torch.bfloat16)
    rows = torch.randn(640, 576, generator=gen).to(torch.bfloat16)
    together = prefill_gemm.tiled_linear(rows, weight)
    assert together.shape == (640, 576)
    for start, stop in ((0, 1), (0, 40), (3, 20), (64, 65), (100, 150), (600, 640)):
        assert torch.equal(prefill_gemm.tiled_linear(rows[start:stop], weight), together[start:stop])
    torch.testing.assert_close(together.float(), (rows.float() @ weight.float().T), rtol=2e-2, atol=2e-2)


def tiny_4bit(tiny_dir: Path, cache_bytes: int, kernels: Any) -> tuple[torch.nn.Module, int]:
    """A 4-bit tiny llama with the prefill path installed, and how many of its layers cache their weight."""
    model = AutoModelForCausalLM.from_pretrained(
        tiny_dir, quantization_config=quantization_config("nf4", torch.float32)
    )
    installed, cached = prefill_gemm.install(model.eval(), cache_bytes)
    if not installed:
        pytest.skip("this CPU has no AVX512-BF16: bitsandbytes runs its generic path, no prefill path")
    use_batch_invariant_attention(model, kernels)
    return model, cached


def run_prefill(model: torch.nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The last position's logits and the KV cache a prefill of `ids` leaves."""
    cache = DynamicCache(config=model.config)
    logits = prefill(model, ids, cache)
    return logits, [t for layer in cache.layers for t in (layer.keys, layer.values)]


@pytest.mark.parametrize("cache_bytes", [0, 2**30], ids=["dequantizing", "cached"])
@torch.inference_mode()
def test_prefill_is_batch_invariant_and_close_to_the_4bit_kernel(
    tiny_dir: Path, cache_bytes: int, cpu_kernels: Any
) -> None:
    model, _ = tiny_4bit(tiny_dir, cache_bytes, cpu_kernels)
    gen = torch.Generator().manual_seed(1)
    prompts = torch.randint(0, 1000, (5, 13), generator=gen)
    logits, kv = run_prefill(model, prompts)
    for row in range(5):  # the KV cache a prompt leaves is the same bits alone and beside others
        _, alone = run_prefill(model, prompts[row : row + 1])
        assert all(torch.equal(a[0], b[row]) for a, b in zip(alone, kv, strict=True)), row
    kernel = model(input_ids=prompts).logits[:, -1]  # outside a prefill: bitsandbytes' own kernel
    assert not torch.equal(kernel, logits)  # the prefill path really ran
    torch.testing.assert_close(logits, kernel, rtol=0.05, atol=0.05)


@torch.inference_mode()
def test_cached_weights_prefill_the_same_bits_and_only_within_the_budget(
    tiny_dir: Path, cpu_kernels: Any
) -> None:
    dequantizing, none = tiny_4bit(tiny_dir, 0, cpu_kernels)
    layers = [m for m in dequantizing.modules() if isinstance(m, bnb.nn.Linear4bit)]
    first_two = sum(m.in_features * m.out_features * 2 for m in layers[:2])
    cached, two = tiny_4bit(tiny_dir, first_two + 1, cpu_kernels)
    assert (none, two) == (0, 2)
    paths = [m.forward.__self__ for m in cached.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert [p.cached is not None for p in paths] == [True, True] + [False] * (len(paths) - 2)
    assert paths[0].data is None and paths[2].data is not None  # a cached layer keeps no second 4-bit copy
    everything, count = tiny_4bit(tiny_dir, 2**30, cpu_kernels)
    assert count == len(layers)
    ids = torch.randint(0, 1000, (3, 70), generator=torch.Generator().manual_seed(2))  # two tiles
    reference = run_prefill(dequantizing, ids)
    for model in (cached, everything):
        logits, kv = run_prefill(model, ids)
        assert torch.equal(logits, reference[0])
        assert all(torch.equal(a, b) for a, b in zip(kv, reference[1], strict=True))


def test_install_is_a_no_op_without_4bit_layers(tiny_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    assert prefill_gemm.install(model, 2**30) == (0, 0)


@pytest.mark.parametrize(("cpu_prefill", "expected"), [("bf16", True), ("4bit", False)])
def test_the_server_installs_the_prefill_path_unless_told_not_to(
    tiny_dir: Path, tmp_path: Path, cpu_prefill: str, expected: bool
) -> None:
    settings = tiny_settings(tiny_dir, tmp_path, tmp_path / "store", quantize="nf4", cpu_prefill=cpu_prefill)
    layers = [m for m in load_model(settings).model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    if not getattr(layers[0], "support_avx512bf16_for_cpu", False):
        pytest.skip("this CPU has no AVX512-BF16: bitsandbytes' own kernel serves, nothing to install")
    prefill_paths = [getattr(m.forward, "__self__", None) for m in layers]
    assert layers and all(isinstance(p, prefill_gemm._PrefillPath) == expected for p in prefill_paths)
    assert all(p.cached is not None for p in prefill_paths if expected)  # the default budget holds them all
    decodes = [p.decode if expected else m.forward for p, m in zip(prefill_paths, layers, strict=True)]
    assert all(
        isinstance(d, PackedDecode) for d in decodes
    )  # decode steps call the kernel directly either way


def test_warm_up_runs_the_prefill_path_and_leaves_the_weights_unpacked(
    tiny_dir: Path, monkeypatch: pytest.MonkeyPatch, cpu_kernels: Any
) -> None:
    model, _ = tiny_4bit(tiny_dir, 2**30, cpu_kernels)
    calls: list[int] = []
    tiled = prefill_gemm.tiled
    monkeypatch.setattr(
        prefill_gemm, "tiled", lambda x, multiply: (calls.append(x.shape[0]), tiled(x, multiply))[1]
    )
    prefill_gemm.warm_up(model)
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert calls == [4] * len(layers)  # every 4-bit layer once, through its prefill GEMM
    assert not any(getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in layers)
