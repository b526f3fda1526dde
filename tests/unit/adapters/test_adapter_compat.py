import hashlib
import json
from pathlib import Path

import pytest

from hotlora_adapters import (
    BaseSpec,
    IncompatibleAdapterError,
    check_compatible,
    find_mismatches,
    inspect_adapter,
)

KINDS = ["all-linear", "embed-and-head", "dora", "rank-pattern", "lora-bias", "trainable-tokens"]


@pytest.mark.parametrize("kind", KINDS)
def test_real_peft_adapters_fit_their_base(make_adapter, tiny_base_spec: BaseSpec, kind: str) -> None:
    check_compatible(inspect_adapter(make_adapter(kind)), tiny_base_spec)


def test_base_name_in_config_is_not_judged(
    adapter_dir: Path, edit_adapter_config, tiny_base_spec: BaseSpec
) -> None:
    edit_adapter_config(adapter_dir, base_model_name_or_path="HuggingFaceTB/SmolLM2-135M-Instruct")
    check_compatible(inspect_adapter(adapter_dir), tiny_base_spec)
    edit_adapter_config(adapter_dir, base_model_name_or_path="/tmp/some/deleted/folder")
    check_compatible(inspect_adapter(adapter_dir), tiny_base_spec)


def test_other_hidden_size_lists_every_mismatch_in_one_error(adapter_dir: Path, tiny_spec_with) -> None:
    wider = tiny_spec_with(hidden_size=96)
    with pytest.raises(IncompatibleAdapterError) as info:
        check_compatible(inspect_adapter(adapter_dir), wider)
    error = info.value
    # per layer: q A+B, k A+B, v A+B, o A+B, gate A, up A, down B = 11; two layers
    assert len(error.mismatches) == 22
    assert (
        "model.layers.0.self_attn.q_proj: lora_A.weight has shape [4, 64], expected [4, 96] (in_features 96)"
        in error.mismatches
    )
    assert (
        "model.layers.1.mlp.down_proj: lora_B.weight has shape [64, 4], expected [96, 4] (out_features 96)"
        in error.mismatches
    )
    message = str(error)
    assert message.startswith(f"adapter at {adapter_dir} does not fit the base model (22 mismatches):")
    assert message.endswith("... and 2 more")
    assert len(message.splitlines()) == 1 + 20 + 1
    # layer 0 before layer 1, modules in natural order
    assert message.index("layers.0.") < message.index("layers.1.")


def test_fewer_layers_in_base(adapter_dir: Path, tiny_spec_with) -> None:
    shallow = tiny_spec_with(num_hidden_layers=1)
    mismatches = find_mismatches(inspect_adapter(adapter_dir), shallow)
    assert (
        "model.layers.1.self_attn.q_proj: the base model has no such linear or embedding module" in mismatches
    )
    assert len(mismatches) == 7


def test_more_layers_in_base_with_suffix_targets(make_adapter, tiny_spec_with) -> None:
    deeper = tiny_spec_with(num_hidden_layers=3)
    mismatches = find_mismatches(inspect_adapter(make_adapter("rank-pattern")), deeper)
    assert mismatches == [
        "model.layers.2.self_attn.q_proj: selected by target_modules but the adapter has no weights for it "
        "(made for a base with other modules or more/fewer layers?)",
        "model.layers.2.self_attn.v_proj: selected by target_modules but the adapter has no weights for it "
        "(made for a base with other modules or more/fewer layers?)",
    ]


def test_architecture_recorded_by_peft_is_checked(adapter_dir: Path, tiny_base_spec: BaseSpec) -> None:
    other = BaseSpec(architecture="mistral", module_shapes=tiny_base_spec.module_shapes)
    assert find_mismatches(inspect_adapter(adapter_dir), other) == [
        "the adapter was made for a 'llama' model (adapter_config.json auto_mapping), the base is 'mistral'"
    ]
    # PEFT records the module folder (`gemma3`), not the model type (`gemma3_text`): the base says both
    folder = BaseSpec(architecture="llama_text", module_shapes=tiny_base_spec.module_shapes, library="llama")
    assert find_mismatches(inspect_adapter(adapter_dir), folder) == []
    assert folder.fingerprint() == BaseSpec("llama_text", tiny_base_spec.module_shapes).fingerprint()


def test_untargeted_weights_and_wrong_rank(
    adapter_dir: Path, edit_adapter_config, tiny_base_spec: BaseSpec
) -> None:
    edit_adapter_config(adapter_dir, target_modules=["q_proj"], r=8)
    mismatches = find_mismatches(inspect_adapter(adapter_dir), tiny_base_spec)
    assert (
        "model.layers.0.mlp.up_proj: has LoRA weights but target_modules does not select it (PEFT would drop them)"
        in mismatches
    )
    assert (
        "model.layers.0.self_attn.q_proj: the weights have rank 4, adapter_config.json gives r=8"
        in mismatches
    )
    assert len(mismatches) == 2 * 6 + 2 * 7


def _hand_made(tmp_path: Path, writer, tensors: dict, **config) -> Path:
    tmp_path.joinpath("adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, **config}))
    writer(tmp_path / "adapter_model.safetensors", tensors)
    return tmp_path


SPEC = BaseSpec("llama", {"model.q": (8, 4), "model.embed": (10, 4), "lm_head": (10, 4)})


def test_hand_made_defects_are_all_reported(tmp_path: Path, safetensors_writer) -> None:
    p = "base_model.model."
    adapter = _hand_made(
        tmp_path,
        safetensors_writer,
        {
            p + "model.q.lora_A.weight": ("F32", [2, 4]),  # B missing
            p + "model.embed.lora_embedding_A": ("F32", [2, 10]),
            p + "model.embed.lora_embedding_B": ("F32", [4, 3]),  # rank 3 vs 2
            p + "model.gone.lora_A.weight": ("F32", [2, 4]),
            p + "model.gone.lora_B.weight": ("F32", [4, 2]),
            p + "lm_head.weight": ("F32", [11, 4]),  # modules_to_save with another vocab
            p + "model.norm.weight": ("F32", [4]),  # modules_to_save of a kind BaseSpec does not know: fine
            p + "model.q.lora_C.weight": ("F32", [1]),
            "mystery": ("F32", [1]),
        },
        target_modules=["q", "embed", "gone"],
        modules_to_save=["lm_head", "norm"],
    )
    assert find_mismatches(inspect_adapter(adapter), SPEC) == [
        "lm_head: weight has shape [11, 4], the base module's is [10, 4]",
        "model.embed: rank 2 in lora_embedding_A but 3 in lora_embedding_B",
        "model.gone: the base model has no such linear or embedding module",
        "model.q: lora_B.weight is missing",
        "model.q.lora_C: the base model has no such linear or embedding module",
        "mystery: not a tensor name PEFT writes for a LoRA adapter",
    ]


def test_hand_made_without_prefix_and_dora(tmp_path: Path, safetensors_writer) -> None:
    adapter = _hand_made(
        tmp_path,
        safetensors_writer,
        {
            "model.q.lora_A.weight": ("BF16", [2, 4]),
            "model.q.lora_B.weight": ("BF16", [8, 2]),
            "model.q.lora_magnitude_vector": ("BF16", [4]),
        },
        target_modules="model\\.q",
        use_dora=True,
    )
    assert find_mismatches(inspect_adapter(adapter), SPEC) == [
        "model.q: DoRA magnitude has shape [4], expected [8]"
    ]


def test_no_lora_weights(tmp_path: Path, safetensors_writer) -> None:
    adapter = _hand_made(
        tmp_path,
        safetensors_writer,
        {"base_model.model.lm_head.weight": ("F32", [10, 4])},
        modules_to_save=["lm_head"],
    )
    with pytest.raises(IncompatibleAdapterError, match="holds no LoRA weights"):
        check_compatible(inspect_adapter(adapter), SPEC)


def test_fingerprint() -> None:
    a = BaseSpec("llama", {"x": (1, 2), "y": (3, 4)})
    b = BaseSpec("llama", {"y": [3, 4], "x": (1, 2)})  # type: ignore[dict-item]
    assert a == b and a.fingerprint() == b.fingerprint() and hash(a) == hash(b)
    assert len(a.fingerprint()) == 16 and int(a.fingerprint(), 16) >= 0
    assert BaseSpec("llama", {"x": (1, 2), "y": (3, 5)}).fingerprint() != a.fingerprint()
    assert BaseSpec("mistral", {"x": (1, 2), "y": (3, 4)}).fingerprint() != a.fingerprint()


def test_fingerprint_is_stable_across_releases() -> None:
    # Manifests store it: changing the recipe orphans every registered adapter's fingerprint.
    assert BaseSpec("llama", {"x": (1, 2)}).fingerprint() == BaseSpec("llama", {"x": (1, 2)}).fingerprint()
    expected = hashlib.sha256(b'["llama",[["x",[1,2]]]]').hexdigest()[:16]
    assert BaseSpec("llama", {"x": (1, 2)}).fingerprint() == expected


def test_size_limits_are_reported_first(tmp_path: Path, safetensors_writer) -> None:
    """PEFT allocates every layer at the config's rank before reading a weight: rank and size are judged
    from the header, against the server's --max-lora-rank and the base's own size."""
    p = "base_model.model."
    tensors = {
        p + "model.q.lora_A.weight": ("F32", [16, 4]),
        p + "model.q.lora_B.weight": ("F32", [8, 16]),
        p + "lm_head.weight": ("F32", [10, 4]),
        p + "model.embed.weight": ("F32", [10, 4]),
    }  # 272 values; the base's modules hold 112
    adapter = _hand_made(
        tmp_path,
        safetensors_writer,
        tensors,
        r=16,
        target_modules=["q"],
        modules_to_save=["lm_head", "embed"],
    )
    assert find_mismatches(inspect_adapter(adapter), SPEC, max_rank=8)[:2] == [
        "rank 16 is above this server's limit of 8 (--max-lora-rank); retrain with a lower r, or start the "
        "server with a higher --max-lora-rank",
        "the weights hold 272 values, more than the base model's own 112: no adapter of this base needs that many",
    ]
    assert find_mismatches(inspect_adapter(adapter), SPEC, max_rank=16)[0].startswith(
        "the weights hold 272 values"
    )


def test_a_huge_rank_in_the_config_alone_is_refused(
    adapter_dir: Path, edit_adapter_config, tiny_base_spec: BaseSpec
) -> None:
    edit_adapter_config(
        adapter_dir, r=200000
    )  # the weights keep rank 4: a tiny file PEFT would allocate hugely for
    mismatches = find_mismatches(inspect_adapter(adapter_dir), tiny_base_spec, max_rank=64)
    assert mismatches[0].startswith("rank 200000 is above this server's limit of 64 (--max-lora-rank)")
