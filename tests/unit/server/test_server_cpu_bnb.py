"""The 4-bit CPU packing on a tiny llama in nf4: PEFT operations leave the base exact; the direct kernel
call gives bitsandbytes' own bits."""

from __future__ import annotations

from pathlib import Path

import bitsandbytes as bnb
import pytest
import torch
from peft import PeftModel

from hotlora_adapters.runtime.base_model import quantization_config
from hotlora_server.engine.cpu.bnb import (
    PackedDecode,
    _packed_states,
    install_packed_decode,
    packing_held,
    unpack_cpu_weights,
)


@pytest.fixture
def packed_tiny(tiny_dir: Path):  # noqa: ANN201 - a 4-bit LlamaForCausalLM whose weights bitsandbytes packed
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        tiny_dir, quantization_config=quantization_config("nf4", torch.float32)
    )
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.inference_mode():
        reference = model(ids).logits
    if not list(_packed_states(model)):
        pytest.skip("this CPU has no AVX512-BF16: bitsandbytes does not pack, nothing to keep exact")
    return model, ids, reference


def test_state_dict_inside_packing_held_changes_nothing(packed_tiny) -> None:  # noqa: ANN001
    model, ids, reference = packed_tiny
    with torch.inference_mode():
        with packing_held(model):
            model.state_dict()
        assert list(_packed_states(model))  # still packed: no conversion happened
        assert torch.equal(model(ids).logits, reference)


def test_unpack_is_an_exact_inverse(packed_tiny) -> None:  # noqa: ANN001
    model, ids, reference = packed_tiny
    with torch.inference_mode():
        assert unpack_cpu_weights(model) > 0
        assert not list(_packed_states(model))
        model.state_dict()  # standard layout now: bitsandbytes has nothing to unpack
        assert torch.equal(model(ids).logits, reference)  # packs again, identically


def test_adapter_load_keeps_the_base_exact(packed_tiny, adapter_store: Path) -> None:  # noqa: ANN001
    model, ids, reference = packed_tiny
    (adapter,) = [p for p in adapter_store.iterdir() if not p.name.startswith(".")]
    with torch.inference_mode():
        with packing_held(model):
            peft_model = PeftModel.from_pretrained(model, str(adapter), adapter_name="x")
        base = peft_model(input_ids=ids, adapter_names=["__base__"]).logits
        adapted = peft_model(input_ids=ids, adapter_names=["x"]).logits
        assert torch.equal(base, reference)
        assert not torch.equal(adapted, reference)
        assert unpack_cpu_weights(peft_model) > 0  # through the LoRA wrappers, each weight once
        assert torch.equal(peft_model(input_ids=ids, adapter_names=["__base__"]).logits, reference)


def test_packed_decode_gives_the_bits_of_bitsandbytes_own_forward(packed_tiny, cpu_kernels) -> None:  # noqa: ANN001
    model, ids, reference = packed_tiny
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert install_packed_decode(model, cpu_kernels) == len(layers) > 0
    assert all(isinstance(m.forward, PackedDecode) for m in layers)
    generator = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        assert torch.equal(model(ids).logits, reference)
        for layer in layers:
            for shape in ((1, 1), (3, 1), (2, 9)):  # decode rows, and a prefill-shaped input
                x = torch.randn(*shape, layer.in_features, generator=generator)
                assert torch.equal(layer(x), bnb.nn.Linear4bit.forward(layer, x))
        unpack_cpu_weights(model)  # standard layout: bitsandbytes' forward packs again, then the direct call
        assert torch.equal(model(ids).logits, reference)
        assert torch.equal(model(ids).logits, reference)


def test_the_packed_kernel_operator_refuses_what_it_cannot_read(packed_tiny, cpu_kernels) -> None:  # noqa: ANN001
    model, _, _ = packed_tiny
    layer = next(m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit))
    state = layer.weight.quant_state
    x = torch.randn(2, layer.in_features)
    call = cpu_kernels.bnb_gemv_4bit
    args = (layer.weight.data, state.absmax, 0, state.blocksize, layer.out_features)
    assert call(x, *args).shape == (2, layer.out_features)
    for bad, message in (
        (lambda: call(x.double(), *args), "float32 or bfloat16"),
        (lambda: call(x[:, :-2], *args), "packed 4-bit values"),
        (lambda: call(x, args[0], state.absmax.float(), *args[2:]), "absmax"),
        (lambda: call(x, *args[:2], 2, *args[3:]), "quant_type"),
    ):
        with pytest.raises(ValueError, match=message):
            bad()
