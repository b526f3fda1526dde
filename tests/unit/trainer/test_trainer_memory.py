"""The memory estimate against hand-computed values, and the shape it reads from a model."""

from __future__ import annotations

from typing import Any

import pytest

from hotlora_trainer.memory import ModelShape, estimate

from support.tiny_llama import TINY_LLAMA

# SmolLM2-135M's numbers: 30 layers, h = 576, 9 heads, 134,515,008 parameters (tied embeddings)
SMOL = ModelShape(
    n_params=134_515_008,
    n_layers=30,
    hidden_size=576,
    n_heads=9,
    vocab_size=49152,
    quantizable_params=106_168_320,
)
LORA_R16 = 4_884_480  # 30 layers x r=16 x sum(in+out) over q,k,v,o,gate,up,down


def test_full_precision_sdpa() -> None:
    est = estimate(SMOL, trainable_params=LORA_R16, batch_size=8, seq_len=128, compute_dtype="float32")
    assert est.weights == 134_515_008 * 4
    assert est.trainable == LORA_R16 * 4
    assert est.gradients == LORA_R16 * 4
    assert est.optimizer == LORA_R16 * 8  # Adam: 2 fp32 states
    # L * 34*h*b*s bytes (16-bit activations), x2 for float32
    assert est.activations == 30 * 34 * 576 * 8 * 128 * 2
    assert est.total == est.weights + est.trainable + est.gradients + est.optimizer + est.activations


def test_eager_adds_the_attention_matrix() -> None:
    sdpa = estimate(SMOL, trainable_params=0, batch_size=4, seq_len=256, compute_dtype="bfloat16")
    eager = estimate(
        SMOL, trainable_params=0, batch_size=4, seq_len=256, compute_dtype="bfloat16", attention="eager"
    )
    assert sdpa.activations == 30 * 34 * 576 * 4 * 256  # bfloat16: the formula as is
    assert eager.activations == 30 * (34 * 576 * 4 * 256 + 5 * 9 * 4 * 256 * 256)
    assert "5·n_heads·b·s²" in eager.activation_formula and "s²" not in sdpa.activation_formula


def test_qlora_and_8bit_adam() -> None:
    est = estimate(
        SMOL,
        trainable_params=LORA_R16,
        batch_size=1,
        seq_len=64,
        compute_dtype="bfloat16",
        qlora=True,
        optim="adamw_8bit",
    )
    quantized = 106_168_320
    # 4-bit weights + a float32 absmax per 64-weight block; the rest (embeddings, norms) in float32
    assert est.weights == round(quantized * (0.5 + 4 / 64)) + (134_515_008 - quantized) * 4
    assert est.trainable == LORA_R16 * 2 and est.gradients == LORA_R16 * 2  # the adapter in bfloat16
    assert est.optimizer == LORA_R16 * 2  # two 1-byte states


def test_gradient_checkpointing_keeps_layer_inputs_and_one_layer() -> None:
    est = estimate(
        SMOL,
        trainable_params=0,
        batch_size=2,
        seq_len=100,
        compute_dtype="bfloat16",
        gradient_checkpointing=True,
    )
    assert est.activations == 30 * 2 * 576 * 2 * 100 + 34 * 576 * 2 * 100
    full = estimate(SMOL, trainable_params=0, batch_size=2, seq_len=100, compute_dtype="bfloat16")
    assert est.activations < full.activations / 5


def test_describe_lists_every_term() -> None:
    text = estimate(SMOL, trainable_params=LORA_R16, batch_size=8, seq_len=128).describe()
    for term in (
        "model weights",
        "trainable params",
        "gradients",
        "optimizer states",
        "activations",
        "total",
    ):
        assert term in text
    assert "L·34·h·b·s ×2" in text


def test_shape_and_trainable_count_of_a_real_model(tiny_base: Any) -> None:
    from hotlora_trainer.base_model import meta_model, model_shape
    from hotlora_trainer.config import TrainConfig
    from hotlora_trainer.preflight import count_trainable

    meta = meta_model(tiny_base)
    shape = model_shape(meta)
    h, inter, layers, heads = (
        TINY_LLAMA[k]
        for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    )
    vocab, kv = shape.vocab_size, TINY_LLAMA["num_key_value_heads"] * h // heads  # kv heads x head_dim
    per_layer_linear = h * h * 2 + h * kv * 2 + h * inter * 3  # q,o + k,v + gate,up,down
    assert (shape.n_layers, shape.hidden_size, shape.n_heads) == (layers, h, heads)
    assert shape.quantizable_params == layers * per_layer_linear  # lm_head (tied) is not quantized
    assert shape.n_params == vocab * h + layers * (per_layer_linear + 2 * h) + h  # embeddings, norms
    # LoRA: r * (in + out) per targeted linear layer
    r = 4
    per_layer_lora = r * ((h + h) * 2 + (h + kv) * 2 + (h + inter) * 3)
    config = TrainConfig(name="x", task="piglatin", r=r)
    assert count_trainable(meta_model(tiny_base), config) == layers * per_layer_lora
    only_q = TrainConfig(name="x", task="piglatin", r=r, target_modules=["q_proj"])
    assert count_trainable(meta_model(tiny_base), only_q) == layers * r * (h + h)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_activations_scale_with_batch_and_length(dtype: str) -> None:
    one = estimate(SMOL, trainable_params=0, batch_size=1, seq_len=64, compute_dtype=dtype).activations
    assert (
        estimate(SMOL, trainable_params=0, batch_size=4, seq_len=64, compute_dtype=dtype).activations
        == 4 * one
    )
    assert (
        estimate(SMOL, trainable_params=0, batch_size=1, seq_len=128, compute_dtype=dtype).activations
        == 2 * one
    )
