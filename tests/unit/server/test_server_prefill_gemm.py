"""The prefill path of 4-bit layers on CPU: bf16 GEMMs in fixed tiles, batch-invariant, close to the kernel."""

from __future__ import annotations

from pathlib import Path

import bitsandbytes as bnb
import pytest
import torch
from conftest import tiny_settings
from transformers import AutoModelForCausalLM, DynamicCache

from hotlora_server.engine import prefill_gemm
from hotlora_server.engine.attention import use_batch_invariant_attention
from hotlora_server.engine.bnb_cpu import PackedDecode
from hotlora_server.engine.generate import prefill
from hotlora_server.engine.loader import load_model, quantization_config


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


@pytest.fixture
def tiny_4bit(tiny_dir: Path):  # noqa: ANN201 - a 4-bit tiny llama with the prefill path installed
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, quantization_config=quantization_config("nf4", torch.float32))
    installed = prefill_gemm.install(model.eval())
    if not installed:
        pytest.skip("this CPU has no AVX512-BF16: bitsandbytes runs its generic path, no prefill path")
    use_batch_invariant_attention(model)
    return model


@torch.inference_mode()
def test_prefill_is_batch_invariant_and_close_to_the_4bit_kernel(tiny_4bit) -> None:  # noqa: ANN001
    model = tiny_4bit
    gen = torch.Generator().manual_seed(1)
    prompts = torch.randint(0, 1000, (5, 13), generator=gen)

    def run(ids: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        cache = DynamicCache(config=model.config)
        logits = prefill(model, ids, cache)
        return logits, [t for layer in cache.layers for t in (layer.keys, layer.values)]

    logits, kv = run(prompts)
    for row in range(5):  # the KV cache a prompt leaves is the same bits alone and beside others
        _, alone = run(prompts[row : row + 1])
        assert all(torch.equal(a[0], b[row]) for a, b in zip(alone, kv, strict=True)), row
    kernel = model(input_ids=prompts).logits[:, -1]  # outside a prefill: bitsandbytes' own kernel
    assert not torch.equal(kernel, logits)  # the prefill path really ran
    torch.testing.assert_close(logits, kernel, rtol=0.05, atol=0.05)


def test_install_is_a_no_op_without_4bit_layers(tiny_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    assert prefill_gemm.install(model) == 0


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
    decodes = [p.decode if expected else m.forward for p, m in zip(prefill_paths, layers, strict=True)]
    assert all(isinstance(d, PackedDecode) for d in decodes)  # decode steps call the kernel directly either way
