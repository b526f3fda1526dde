"""The CPU path chosen at load: which kernel runs a 4-bit base on this CPU, what the server says about it
(log, /v1/models, /metrics), and the batch invariance the fixed-order 4-bit path gives a real model."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import bitsandbytes as bnb
import pytest
import torch
from transformers import DynamicCache

from hotlora_server.engine import attention
from hotlora_server.engine.attention import use_batch_invariant_attention
from hotlora_server.engine.cpu import bnb as bnb_cpu
from hotlora_server.engine.cpu.linear import FixedOrderLinear
from hotlora_server.engine.cpu.linear4 import FixedOrder4bit
from hotlora_server.engine.generate import decode_one_token, prefill
from hotlora_server.engine.loader import ModelLoadError, batch_invariance, load_model

from support.tiny_server import needs_compiler, tiny_settings


def _fused_here(model: torch.nn.Module) -> bool:
    """Whether bitsandbytes has its fused 4-bit kernel on this CPU (AVX512-BF16)."""
    return any(bnb_cpu.packs_on_cpu(m) for m in model.modules())


def _load(tiny_dir: Path, tmp_path: Path, **extra: Any) -> Any:
    return load_model(tiny_settings(tiny_dir, tmp_path, tmp_path / "store", quantize="nf4", **extra))


def _layers(model: torch.nn.Module) -> list[Any]:
    return [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]


def test_auto_takes_the_fused_kernel_where_bitsandbytes_has_one_else_the_fixed_order_kernel(
    tiny_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    needs_compiler()
    with caplog.at_level(logging.INFO):
        loaded = _load(tiny_dir, tmp_path)
    layers = _layers(loaded.model)
    fused = any(getattr(m, "support_avx512bf16_for_cpu", False) for m in layers)
    assert layers and all(isinstance(m.forward, FixedOrder4bit) != fused for m in layers)
    assert ("fused AVX512-BF16" if fused else "hotlora fixed-order 4-bit kernel") in loaded.device_path.kernel
    assert loaded.batch_invariant and loaded.device_path.kernels is not None
    assert isinstance(loaded.model.get_output_embeddings().forward, FixedOrderLinear)
    assert loaded.device_path.kernel in caplog.text and "batch invariance: on" in caplog.text
    assert loaded.model.config._attn_implementation == attention.NAME


def test_the_fixed_order_kernel_can_be_forced_and_bitsandbytes_too(tiny_dir: Path, tmp_path: Path) -> None:
    needs_compiler()
    forced = _load(tiny_dir, tmp_path, cpu_4bit="hotlora")
    assert (
        all(isinstance(m.forward, FixedOrder4bit) for m in _layers(forced.model)) and forced.batch_invariant
    )
    own = _load(tiny_dir, tmp_path, cpu_4bit="bitsandbytes")
    assert not any(isinstance(m.forward, FixedOrder4bit) for m in _layers(own.model))
    if not _fused_here(own.model):  # bitsandbytes' fallback dequantizes at every forward: no guarantee
        assert not own.batch_invariant and "dequantized at every forward" in own.device_path.kernel


def test_without_the_kernels_batch_invariance_is_off_and_said_so(
    tiny_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        loaded = _load(tiny_dir, tmp_path, cpu_kernels=False)
    assert loaded.device_path.kernels is None and "bitsandbytes" in loaded.device_path.kernel
    assert not loaded.batch_invariant and "batch invariance is off" in caplog.text
    with pytest.raises(ModelLoadError, match="needs the compiled CPU kernels"):
        _load(tiny_dir, tmp_path, cpu_kernels=False, cpu_4bit="hotlora")


def test_no_batch_invariant_serves_the_devices_own_attention(tiny_dir: Path, tmp_path: Path) -> None:
    """`--no-batch-invariant`: the kernels stay (they are the fast path) but attention is transformers' own,
    and the server says the guarantee is off."""
    needs_compiler()
    loaded = _load(tiny_dir, tmp_path, batch_invariant=False)
    assert loaded.device_path.kernels is not None and not loaded.batch_invariant
    assert loaded.model.config._attn_implementation != attention.NAME


def test_batch_invariant_asked_where_it_cannot_hold_is_refused(tiny_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(
        ModelLoadError, match="--batch-invariant cannot hold here: it needs the compiled CPU kernels"
    ):
        _load(tiny_dir, tmp_path, cpu_kernels=False, batch_invariant=True)


@pytest.mark.parametrize(
    ("requested", "capable", "served"),
    [
        (None, True, True),
        (None, False, False),
        (True, True, True),
        (False, True, False),
        (False, False, False),
    ],
)
def test_batch_invariance_follows_the_flag_and_the_device(
    requested: bool | None, capable: bool, served: bool
) -> None:
    """The decision the loader makes for every device (on CUDA `capable` is False: its GEMMs' order follows
    the batch), so the CUDA branch's logic is tested here too."""
    assert batch_invariance(requested, capable, "why") is served


def test_batch_invariant_on_a_device_that_cannot_hold_it_names_why() -> None:
    with pytest.raises(ModelLoadError, match="cannot hold here: on cuda the matrix"):
        batch_invariance(True, False, "on cuda the matrix products' summation order follows the batch")


@torch.inference_mode()
def test_the_fixed_order_4bit_path_is_close_to_bitsandbytes_and_batch_invariant(
    tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the whole tiny model (4-bit layers, fixed-order logits and attention): prompts prefilled
    together leave each row the logits and KV cache it gets alone, decode steps likewise; and the
    numbers are bitsandbytes' own float32 dequantization within float32 rounding. The reference takes
    that path on every CPU: its fused AVX512-BF16 kernel rounds the inputs to bf16, which is not what is
    compared here."""
    needs_compiler()
    with monkeypatch.context() as m:
        m.setattr(bnb.nn.modules, "has_avx512bf16", lambda: False)
        reference = _load(tiny_dir, tmp_path, cpu_4bit="bitsandbytes", cpu_kernels=False).model
    assert not any(bnb_cpu.packs_on_cpu(layer) for layer in _layers(reference))
    loaded = _load(tiny_dir, tmp_path, cpu_4bit="hotlora")
    model = loaded.model
    for m in (reference, model):
        use_batch_invariant_attention(m, loaded.device_path.kernels)
    prompts = torch.randint(0, 1000, (9, 13), generator=torch.Generator().manual_seed(1))
    cache = DynamicCache(config=model.config)
    logits = prefill(model, prompts, cache)
    torch.testing.assert_close(
        logits, prefill(reference, prompts, DynamicCache(config=model.config)), rtol=1e-3, atol=1e-3
    )
    kv = [t for layer in cache.layers for t in (layer.keys, layer.values)]
    tokens = logits.argmax(-1)
    step = decode_one_token(model, tokens, cache)
    for row in range(prompts.shape[0]):
        alone_cache = DynamicCache(config=model.config)
        alone = prefill(model, prompts[row : row + 1], alone_cache)
        assert torch.equal(alone[0], logits[row]), row
        alone_kv = [t for layer in alone_cache.layers for t in (layer.keys, layer.values)]
        assert all(torch.equal(a[0], b[row]) for a, b in zip(alone_kv, kv, strict=True)), row
        assert torch.equal(decode_one_token(model, tokens[row : row + 1], alone_cache)[0], step[row]), row


def test_models_and_metrics_say_how_the_base_runs(client: Any, tiny_engine: Any) -> None:
    base = client.get("/v1/models").json()["data"][0]
    loaded = tiny_engine._loaded
    assert base["kernel"] == loaded.device_path.kernel and base["batch_invariant"] is loaded.batch_invariant
    metrics = client.get("/metrics").text
    line = next(line for line in metrics.splitlines() if line.startswith("hotlora_model_info{"))
    assert (
        f'kernel="{loaded.device_path.kernel}"' in line
        and f'batch_invariant="{str(loaded.batch_invariant).lower()}"' in line
    )
