"""Logits with the same bits for a row at any row count (through a transposed copy below 16 rows)."""

from __future__ import annotations

from copy import deepcopy
from pathlib import Path

import torch
from conftest import tiny_settings

from hotlora_server.engine import logits
from hotlora_server.engine.loader import load_model


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
def test_a_rows_logits_do_not_depend_on_how_many_rows_share_the_call() -> None:
    model = _Tied()
    weight = model.lm_head.weight
    hidden = torch.randn(20, 1, 576, generator=torch.Generator().manual_seed(1))
    plain = model.lm_head(hidden)
    assert not all(torch.equal(model.lm_head(hidden[:n]), plain[:n]) for n in (1, 2, 14))  # what it guards against

    assert logits.install(model)
    together = model.lm_head(hidden)
    for start, stop in ((0, 1), (5, 6), (0, 2), (3, 17), (0, 15), (0, 16), (2, 20)):
        assert torch.equal(model.lm_head(hidden[start:stop]), together[start:stop]), (start, stop)
    assert model.lm_head(hidden[0]).shape == (1, 49152)
    assert torch.equal(together, plain)  # from 16 rows on: the weight itself, as before
    assert model.lm_head.weight is weight and weight.is_contiguous() and model.embed.weight is weight


def test_the_bias_is_added_and_bf16_layers_are_left_alone() -> None:
    layer = torch.nn.Linear(8, 32)
    x = torch.randn(20, 8)
    expected = layer(x)
    model = torch.nn.Module()
    model.get_output_embeddings = lambda: layer  # type: ignore[method-assign]
    assert logits.install(model)
    torch.testing.assert_close(layer(x[:3]), expected[:3])
    torch.testing.assert_close(layer(x), expected)
    layer_bf16 = torch.nn.Linear(8, 32).to(torch.bfloat16)
    model.get_output_embeddings = lambda: layer_bf16  # type: ignore[method-assign]
    assert not logits.install(model)


def test_the_server_installs_row_invariant_logits(tiny_dir: Path, tmp_path: Path) -> None:
    head = load_model(tiny_settings(tiny_dir, tmp_path, tmp_path / "store")).model.get_output_embeddings()
    assert isinstance(head.forward, logits.RowInvariantLogits)
    assert torch.equal(head.forward.weight_t, head.weight.T)


@torch.inference_mode()
def test_a_copy_of_the_layer_computes_with_the_weight_loaded_into_it() -> None:
    """As PEFT does for an adapter that saves its own `lm_head`: deep-copy the layer, load other weights."""
    model = _Tied()
    assert logits.install(model)
    hidden = torch.randn(3, 576, generator=torch.Generator().manual_seed(2))
    before = model.lm_head(hidden)
    copied = deepcopy(model.lm_head)
    copied.load_state_dict({"weight": model.lm_head.weight * 2})
    torch.testing.assert_close(copied(hidden), before * 2)
    torch.testing.assert_close(copied(hidden[:1]), before[:1] * 2)
    assert torch.equal(model.lm_head(hidden), before)
