"""float32 linear layers through the fixed-order kernel: the output layer (logits) and, with
`--quantize none`, every layer; a row's output has the same bits at any row count."""

from __future__ import annotations

from copy import deepcopy
from pathlib import Path

import torch

from hotlora_server.engine.cpu import linear
from hotlora_server.engine.cpu.kernels import CpuKernels
from hotlora_server.engine.loader import load_model

from support.gguf_weights import q8_0
from support.tiny_server import tiny_settings


class _Tied(torch.nn.Module):
    """SmolLM2's output layer shape, tied to the input embedding as in SmolLM2."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lm_head = torch.nn.Linear(576, 49152, bias=False)
        self.embed = torch.nn.Embedding(49152, 576)
        self.embed.weight = self.lm_head.weight

    def get_output_embeddings(self) -> torch.nn.Module:
        return self.lm_head


@torch.inference_mode()
def test_a_rows_logits_do_not_depend_on_how_many_rows_share_the_call(cpu_kernels: CpuKernels) -> None:
    model = _Tied()
    weight = model.lm_head.weight
    hidden = torch.randn(20, 1, 576, generator=torch.Generator().manual_seed(1))
    plain = model.lm_head(hidden)
    assert linear.install_output(model, cpu_kernels) == "float32"  # random weights: no int8 form
    together = model.lm_head(hidden)
    for start, stop in ((0, 1), (5, 6), (0, 2), (3, 17), (0, 15), (0, 16), (2, 20)):
        assert torch.equal(model.lm_head(hidden[start:stop]), together[start:stop]), (start, stop)
    assert model.lm_head(hidden[0]).shape == (1, 49152)
    torch.testing.assert_close(together, plain, rtol=1e-4, atol=1e-4)
    assert model.lm_head.weight is weight and model.embed.weight is weight  # no copy: still tied


@torch.inference_mode()
def test_an_output_layer_dequantized_from_q8_0_is_read_as_int8_with_the_same_bits(
    cpu_kernels: CpuKernels,
) -> None:
    model = _Tied()
    model.lm_head.weight.copy_(q8_0(49152, 576, seed=0))  # what the embedded GGUF's output layer holds
    hidden = torch.randn(20, 1, 576, generator=torch.Generator().manual_seed(1))
    read_as = linear.install_output(model, cpu_kernels)
    assert read_as is not None and read_as.startswith("int8")
    expected = cpu_kernels.gemm_nt(hidden.reshape(20, 576), model.lm_head.weight).view(20, 1, -1)
    assert torch.equal(model.lm_head(hidden), expected)
    assert model.embed.weight is model.lm_head.weight  # the float32 weight stays, tied to the embedding


@torch.inference_mode()
def test_the_bias_is_added_and_bf16_layers_are_left_alone(cpu_kernels: CpuKernels) -> None:
    layer = torch.nn.Linear(8, 32)
    x = torch.randn(20, 8)
    expected = layer(x)
    model = torch.nn.Module()
    model.get_output_embeddings = lambda: layer  # type: ignore[method-assign]
    assert linear.install_output(model, cpu_kernels)
    torch.testing.assert_close(layer(x[:3]), expected[:3])
    torch.testing.assert_close(layer(x), expected)
    layer_bf16 = torch.nn.Linear(8, 32).to(torch.bfloat16)
    model.get_output_embeddings = lambda: layer_bf16  # type: ignore[method-assign]
    assert not linear.install_output(model, cpu_kernels)


def test_inputs_that_need_gradients_get_torchs_own_forward(cpu_kernels: CpuKernels) -> None:
    layer = torch.nn.Linear(8, 4)
    model = torch.nn.Module()
    model.get_output_embeddings = lambda: layer  # type: ignore[method-assign]
    assert linear.install_output(model, cpu_kernels)
    x = torch.randn(3, 8, requires_grad=True)
    layer(x).sum().backward()
    assert x.grad is not None and layer.weight.grad is not None


@torch.inference_mode()
def test_a_copy_of_the_layer_computes_with_the_weight_loaded_into_it(cpu_kernels: CpuKernels) -> None:
    """As PEFT does for an adapter that saves its own `lm_head`: deep-copy the layer, load other weights."""
    model = _Tied()
    assert linear.install_output(model, cpu_kernels)
    hidden = torch.randn(3, 576, generator=torch.Generator().manual_seed(2))
    before = model.lm_head(hidden)
    copied = deepcopy(model.lm_head)
    copied.load_state_dict({"weight": model.lm_head.weight * 2})
    torch.testing.assert_close(copied(hidden), before * 2)
    torch.testing.assert_close(copied(hidden[:1]), before[:1] * 2)
    assert torch.equal(model.lm_head(hidden), before)


def test_unquantized_the_server_runs_every_linear_layer_through_the_kernel(
    tiny_dir: Path, tmp_path: Path, cpu_kernels: CpuKernels
) -> None:
    loaded = load_model(tiny_settings(tiny_dir, tmp_path, tmp_path / "store"))
    layers = [m for m in loaded.model.modules() if isinstance(m, torch.nn.Linear)]
    assert layers and all(isinstance(m.forward, linear.FixedOrderLinear) for m in layers)
    assert loaded.batch_invariant and "fixed-order" in loaded.device_path.kernel
