"""Stacked LoRA (Punica/S-LoRA) against PEFT on the tiny llama, and its batch invariance.

PEFT is the reference: the stacked deltas, through torch or the CPU's fixed-order kernels, must give
what PEFT's own per-row routing gives; through the kernels a row's delta must also be the same bits
alone and in any batch.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import torch
from peft import LoraConfig, PeftModel

from hotlora_server.engine import lora_stack
from hotlora_server.engine.cpu.kernels import CpuKernels
from hotlora_server.engine.lora_stack import LoraStack

BASE = "__base__"


def _peft_logits(model: PeftModel, ids: torch.Tensor, keys: list[str]) -> torch.Tensor:
    model.base_model.enable_adapter_layers()
    with torch.inference_mode():
        return model(input_ids=ids, adapter_names=keys).logits


def _stacked_logits(model: PeftModel, stack: LoraStack, ids: torch.Tensor, keys: list[str]) -> torch.Tensor:
    assert stack.covers(model, set(keys) - {BASE})
    model.base_model.disable_adapter_layers()  # PEFT passes the base through; the stack adds the deltas
    try:
        with torch.inference_mode(), stack.rows(keys, BASE, decode=ids.shape[1] == 1):
            return model(input_ids=ids).logits
    finally:
        model.base_model.enable_adapter_layers()


@pytest.fixture(
    params=[(lora_stack.BLOCK, False), (6, False), (lora_stack.BLOCK, True), (6, True)],
    ids=["one-block", "blocks", "one-block-kernel", "blocks-kernel"],
)
def stack(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> LoraStack:
    """A fresh stack, through torch or the compiled kernels; with 6-column blocks the fixture's adapters
    spread over three blocks."""
    block, kernel = request.param
    monkeypatch.setattr(lora_stack, "BLOCK", block)
    return LoraStack(torch.float32, kernels=request.getfixturevalue("cpu_kernels") if kernel else None)


@pytest.fixture(params=[lora_stack.BLOCK, 6], ids=["one-block", "blocks"])
def kernel_stack(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, cpu_kernels: CpuKernels
) -> LoraStack:
    """A fresh stack through the compiled kernels: the batch-invariant one."""
    monkeypatch.setattr(lora_stack, "BLOCK", request.param)
    return LoraStack(torch.float32, kernels=cpu_kernels)


@pytest.mark.parametrize(
    "keys",
    [["a", "b", BASE, "c", "ab", "a"], ["b", "b"], ["ab"], [BASE, BASE], ["c", BASE]],
    ids=["mixed", "one-adapter", "blend", "base-only", "partial-targets"],
)
@pytest.mark.parametrize("tokens", [7, 1], ids=["prefill", "decode"])
def test_stacked_lora_matches_peft(
    peft_model: PeftModel, stack: LoraStack, keys: list[str], tokens: int
) -> None:
    ids = torch.randint(0, 1000, (len(keys), tokens), generator=torch.Generator().manual_seed(0))
    expected = _peft_logits(peft_model, ids, keys)
    got = _stacked_logits(peft_model, stack, ids, keys)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_a_prefill_runs_each_adapter_once_per_run_of_its_rows(peft_model: PeftModel) -> None:
    stack = LoraStack(torch.float32)
    assert stack.covers(peft_model, {"a", "b"})
    with stack.rows(["a", "a", "b", BASE, "b"], BASE, decode=False):
        assert stack.route is not None
        assert [(start, stop) for _, start, stop in stack.route.runs] == [(0, 2), (2, 3), (4, 5)]


def test_a_batch_computes_only_the_blocks_its_adapters_use(
    peft_model: PeftModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Blocks fill in load order (a: r2 and b: r4 share one, c: r8 exceeds 6 and gets its own, then ab)."""
    monkeypatch.setattr(lora_stack, "BLOCK", 6)
    stack = LoraStack(torch.float32)
    assert stack.covers(peft_model, {"a", "b", "c", "ab"})
    for keys, blocks in ((["a", "b", BASE], [0]), (["c", BASE], [1]), (["ab", "a"], [0, 2]), ([BASE], [])):
        with stack.rows(keys, BASE, decode=True):
            used = [block for block, _ in stack.route.step or []] if stack.route else []
        assert used == blocks, keys


def test_a_lower_group_fills_the_blocks_first(peft_model: PeftModel, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the blend `ab` grouped before the rest: ab (r6) fills block 0, then a: r2 and b: r4, then c."""
    monkeypatch.setattr(lora_stack, "BLOCK", 6)
    stack = LoraStack(torch.float32, group=lambda key: 0 if key == "ab" else 1)
    assert stack.covers(peft_model, {"a", "b", "c", "ab"})
    for keys, blocks in ((["ab", BASE], [0]), (["a", "b"], [1]), (["c", "ab"], [0, 2])):
        with stack.rows(keys, BASE, decode=True):
            assert [block for block, _ in stack.route.step or []] == blocks, keys


def test_stack_follows_adapter_changes_and_skips_dora(peft_model: PeftModel) -> None:
    stack = LoraStack(torch.float32)
    assert stack.covers(peft_model, {"a", "b", "c", "ab"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model.add_adapter(
            "d", LoraConfig(r=2, target_modules=["q_proj"], use_dora=True, init_lora_weights=False)
        )
    try:
        stack.invalidate()
        assert stack.covers(peft_model, {"a"}) and not stack.covers(peft_model, {"a", "d"})
        ids = torch.randint(0, 1000, (2, 5), generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(
            _stacked_logits(peft_model, stack, ids, ["a", BASE]), _peft_logits(peft_model, ids, ["a", BASE])
        )
    finally:
        peft_model.delete_adapter("d")
        stack.invalidate()


def test_adapters_coming_and_going_write_only_their_own_columns(
    peft_model: PeftModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A load writes its adapter's columns and an unload zeroes them (a later adapter takes them): the other
    blocks are neither copied nor rewritten, so a change costs what that adapter weighs. Outputs still
    match PEFT, and an emptied last block is given back."""
    monkeypatch.setattr(lora_stack, "BLOCK", 6)
    stack = LoraStack(torch.float32)
    assert stack.covers(peft_model, {"a", "b", "c", "ab"})  # blocks 0: a, b; 1: c; 2: ab
    layer = peft_model.base_model.model.model.layers[0].self_attn.q_proj
    blocks = stack._layers[id(layer)].blocks

    def snapshot(count: int) -> list[tuple[int, torch.Tensor]]:
        return [(a.data_ptr(), a.clone()) for a, _ in blocks[:count]]

    def same(before: list[tuple[int, torch.Tensor]]) -> bool:
        return all(
            ptr == a.data_ptr() and torch.equal(old, a)
            for (ptr, old), (a, _) in zip(before, blocks, strict=False)
        )

    untouched = snapshot(3)
    torch.manual_seed(7)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for name, r in (("e", 4), ("f", 2)):
                peft_model.add_adapter(
                    name, LoraConfig(r=r, target_modules="all-linear", init_lora_weights=False)
                )
        stack.invalidate()
        assert stack.covers(peft_model, {"e", "f"})
        assert (stack._slots["e"], stack._slots["f"]) == (
            lora_stack._Slot(3, 0, 4),
            lora_stack._Slot(3, 4, 6),
        )
        assert same(untouched)
        with_f = snapshot(4)[3:]
        peft_model.delete_adapter("e")
        stack.invalidate()
        assert stack.covers(peft_model, {"f"}) and not stack.covers(peft_model, {"e"})
        assert torch.count_nonzero(blocks[3][0][:, :4]) == 0 and torch.equal(
            blocks[3][0][:, 4:], with_f[0][1][:, 4:]
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            peft_model.add_adapter("g", LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False))
        stack.invalidate()
        assert stack.covers(peft_model, {"g"}) and stack._slots["g"] == lora_stack._Slot(3, 0, 4)
        assert same(untouched) and blocks[3][0].data_ptr() == with_f[0][0]
        keys = ["a", "g", "f", "c", "ab", BASE]
        ids = torch.randint(0, 1000, (len(keys), 5), generator=torch.Generator().manual_seed(3))
        torch.testing.assert_close(
            _stacked_logits(peft_model, stack, ids, keys), _peft_logits(peft_model, ids, keys)
        )
    finally:
        for name in ("e", "f", "g"):
            if name in peft_model.peft_config:
                peft_model.delete_adapter(name)
        stack.invalidate()
    assert stack.covers(peft_model, {"a", "b", "c", "ab"}) and stack._widths == [6, 8, 6] and same(untouched)


@contextmanager
def _adding(peft_model: PeftModel, seed: int) -> Iterator[Callable[[str, LoraConfig], None]]:
    """`add(name, config)` puts a seeded adapter into the shared model; every one is deleted afterwards."""
    torch.manual_seed(seed)
    names: list[str] = []

    def add(name: str, config: LoraConfig) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            peft_model.add_adapter(name, config)
        names.append(name)

    try:
        yield add
    finally:
        for name in names:
            if name in peft_model.peft_config:
                peft_model.delete_adapter(name)


def test_a_block_given_back_and_made_again_in_one_update(
    peft_model: PeftModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One adapter deleted and another added before the stack follows them (a new version is loaded, then
    the old one deleted): the emptied last block is given back and a narrower one made in its place."""
    monkeypatch.setattr(lora_stack, "BLOCK", 6)
    stack = LoraStack(torch.float32)
    with _adding(peft_model, seed=11) as add:
        add("e", LoraConfig(r=6, target_modules="all-linear", init_lora_weights=False))
        assert stack.covers(peft_model, {"a", "e"}) and stack._slots["e"] == lora_stack._Slot(3, 0, 6)
        add("f", LoraConfig(r=2, target_modules="all-linear", init_lora_weights=False))
        peft_model.delete_adapter("e")
        stack.invalidate()
        assert stack.covers(peft_model, {"f"}) and stack._slots["f"] == lora_stack._Slot(3, 0, 2)
        keys = ["a", "f", "c", BASE]
        ids = torch.randint(0, 1000, (len(keys), 5), generator=torch.Generator().manual_seed(5))
        torch.testing.assert_close(
            _stacked_logits(peft_model, stack, ids, keys), _peft_logits(peft_model, ids, keys)
        )


@pytest.mark.parametrize("made_in_inference_mode", [True, False], ids=["made-in-inference", "made-outside"])
def test_a_delete_is_followed_in_or_outside_inference_mode(
    peft_model: PeftModel, made_in_inference_mode: bool
) -> None:
    """Blocks made during a forward (inference mode) are zeroed when an adapter leaves, which the pool may
    do outside that mode (an eviction, a purge), and the other way round."""
    stack = LoraStack(torch.float32)
    with _adding(peft_model, seed=13) as add:
        add("e", LoraConfig(r=2, target_modules="all-linear", init_lora_weights=False))
        with torch.inference_mode(made_in_inference_mode):
            assert stack.covers(peft_model, {"a", "e"})
        slot = stack._slots["e"]
        peft_model.delete_adapter("e")
        with torch.inference_mode(not made_in_inference_mode):
            stack.update(peft_model)
        assert "e" not in stack._slots
        for layer_stack in stack._layers.values():
            if slot.block < len(layer_stack.blocks):
                assert not layer_stack.blocks[slot.block][0][:, slot.start : slot.stop].any()


def test_outside_a_routed_forward_the_layers_run_peft_s_own(peft_model: PeftModel) -> None:
    """The stack takes over its layers' forwards; outside `rows` they are PEFT's, adapters and all."""
    stack = LoraStack(torch.float32)
    assert stack.covers(peft_model, {"a", "b"})
    ids = torch.randint(0, 1000, (1, 5), generator=torch.Generator().manual_seed(3))
    expected = _peft_logits(peft_model, ids, ["b"])  # PEFT's per-row routing: `adapter_names`
    peft_model.set_adapter("b")
    try:
        with torch.inference_mode():
            torch.testing.assert_close(peft_model(input_ids=ids).logits, expected)
            with peft_model.disable_adapter():
                assert not torch.allclose(peft_model(input_ids=ids).logits, expected)  # "b" changes it
    finally:
        peft_model.set_adapter("a")


def test_the_stack_adds_nothing_outside_a_routed_forward(peft_model: PeftModel) -> None:
    stack = LoraStack(torch.float32)
    assert stack.covers(peft_model, {"a"})
    ids = torch.randint(0, 1000, (1, 5), generator=torch.Generator().manual_seed(2))
    peft_model.base_model.disable_adapter_layers()
    try:
        with torch.inference_mode(), peft_model.disable_adapter():
            base = peft_model(input_ids=ids).logits
        with torch.inference_mode():
            torch.testing.assert_close(peft_model(input_ids=ids).logits, base)
    finally:
        peft_model.base_model.enable_adapter_layers()


class _Zeros(torch.nn.Module):
    def __init__(self, features: int) -> None:
        super().__init__()
        self.features = features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(*x.shape[:-1], self.features)


@torch.inference_mode()
def test_decode_rows_are_bit_identical_alone_and_in_a_mixed_batch(
    peft_model: PeftModel, kernel_stack: LoraStack, cpu_kernels: CpuKernels
) -> None:
    """What batch invariance rests on: the stacked deltas (also when other rows bring other blocks) and
    the attention give a row the same bits."""
    stack = kernel_stack
    from hotlora_server.engine.attention import batch_invariant_attention

    keys = ["a", BASE, "ab", "c", "a"]
    x = torch.randn(len(keys), 1, 64, generator=torch.Generator().manual_seed(4))
    assert stack.covers(peft_model, set(keys) - {BASE})
    layer = peft_model.base_model.model.model.layers[0].self_attn.q_proj
    dense_base = layer.base_layer  # BLAS's float32 GEMMs differ by row count; the served kernels do not
    layer.base_layer = _Zeros(dense_base.out_features)
    peft_model.base_model.disable_adapter_layers()
    try:
        with stack.rows(keys, BASE, decode=True):
            together = layer(x)  # the deltas alone
        assert together.abs().sum() > 0 and torch.equal(together[1], torch.zeros_like(together[1]))
        for row, key in enumerate(keys):
            with stack.rows([key], BASE, decode=True):
                assert torch.equal(layer(x[row : row + 1]), together[row : row + 1]), key
    finally:
        layer.base_layer = dense_base
        peft_model.base_model.enable_adapter_layers()

    gen = torch.Generator().manual_seed(5)
    module = peft_model.get_base_model().model.layers[0].self_attn
    query = torch.randn(3, 4, 1, 16, generator=gen)
    keys_, values = torch.randn(3, 2, 9, 16, generator=gen), torch.randn(3, 2, 9, 16, generator=gen)
    mask = torch.ones(3, 1, 1, 9, dtype=torch.bool)
    mask[1, ..., :4] = False  # row 1 is left-padded by 4
    out, _ = batch_invariant_attention(module, query, keys_, values, mask, scaling=0.25, kernels=cpu_kernels)
    alone, _ = batch_invariant_attention(
        module, query[1:2], keys_[1:2, :, 4:], values[1:2, :, 4:], None, scaling=0.25, kernels=cpu_kernels
    )
    assert torch.equal(out[1:2], alone)


class _Rowwise(torch.nn.Module):
    """A base layer whose output rows depend on their own input row only, bit for bit (and are not zero)."""

    def __init__(self, features: int, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.weights = torch.linspace(-1, 1, features)
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x[..., :1] * self.weights).to(self.dtype)


@pytest.mark.parametrize("tokens", [1, 3], ids=["decode", "prefill"])
@torch.inference_mode()
def test_each_row_gets_the_bits_it_gets_alone(
    peft_model: PeftModel, kernel_stack: LoraStack, tokens: int
) -> None:
    """Through the kernels, in long and short runs of one adapter (a prefill's GEMMs then have 51, 6 and 3
    rows: across the kernel's row tiles), a row's output equals its output alone."""
    stack = kernel_stack
    keys = ["a"] * 17 + ["ab", "ab", BASE, "c"]
    x = torch.randn(len(keys), tokens, 64, generator=torch.Generator().manual_seed(6))
    assert stack.covers(peft_model, set(keys) - {BASE})
    layer = peft_model.base_model.model.model.layers[0].self_attn.q_proj
    dense_base = layer.base_layer
    layer.base_layer = _Rowwise(dense_base.out_features)
    peft_model.base_model.disable_adapter_layers()
    try:
        with stack.rows(keys, BASE, decode=tokens == 1):
            together = layer(x)
        for row, key in enumerate(keys):
            with stack.rows([key], BASE, decode=tokens == 1):
                assert torch.equal(layer(x[row : row + 1]), together[row : row + 1]), (row, key)
    finally:
        layer.base_layer = dense_base
        peft_model.base_model.enable_adapter_layers()


@torch.inference_mode()
@pytest.mark.parametrize("tokens", [1, 3], ids=["decode", "prefill"])
def test_the_kernels_add_into_base_outputs_of_another_dtype(
    peft_model: PeftModel, cpu_kernels: CpuKernels, tokens: int
) -> None:
    """A base layer that returns bf16 gets the kernels' float32 delta rounded once, as the torch path does."""
    keys = ["a", BASE, "ab"]
    x = torch.randn(len(keys), tokens, 64, generator=torch.Generator().manual_seed(7))
    stacks = {kernels is None: LoraStack(torch.float32, kernels=kernels) for kernels in (None, cpu_kernels)}
    assert all(stack.covers(peft_model, {"a", "ab"}) for stack in stacks.values())
    layer = peft_model.base_model.model.model.layers[0].self_attn.q_proj
    dense_base = layer.base_layer
    layer.base_layer = _Rowwise(dense_base.out_features, torch.bfloat16)
    peft_model.base_model.disable_adapter_layers()
    try:
        got = {}
        for torch_path, stack in stacks.items():
            with stack.rows(keys, BASE, decode=tokens == 1):
                got[torch_path] = layer(x)
        base = layer.base_layer(x)
    finally:
        layer.base_layer = dense_base
        peft_model.base_model.enable_adapter_layers()
    assert got[False].dtype == torch.bfloat16
    torch.testing.assert_close(got[False], got[True])
    assert torch.equal(got[False][1], base[1]) and not torch.equal(got[False][0], base[0])
