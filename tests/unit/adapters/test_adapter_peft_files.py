import json
import re
from pathlib import Path

import pytest

from hotlora_adapters import InvalidAdapterError, inspect_adapter, read_adapter_config, read_tensor_shapes


def test_real_peft_adapter_is_read(adapter_dir: Path) -> None:
    files = inspect_adapter(adapter_dir)
    assert files.config.peft_type == "LORA" and files.config.r == 4
    assert files.config.architecture == "llama"  # from PEFT's auto_mapping
    # PEFT strips the adapter name from keys and prefixes "base_model.model."
    assert files.tensor_shapes["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"] == [4, 64]
    assert files.tensor_shapes["base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight"] == [32, 4]
    assert len(files.tensor_shapes) == 2 * 7 * 2  # 2 layers x 7 linear modules x (A, B)
    assert files.metadata == {"format": "pt"}
    assert read_tensor_shapes(adapter_dir) == files.tensor_shapes


def test_all_linear_is_saved_expanded(adapter_dir: Path) -> None:
    targets = read_adapter_config(adapter_dir).target_modules
    assert isinstance(targets, list) and "model.layers.0.self_attn.q_proj" in targets


@pytest.mark.parametrize("suffix", ["bin", "pt", "pth", "pkl"])
def test_pickle_only_is_refused(adapter_dir: Path, suffix: str) -> None:
    (adapter_dir / "adapter_model.safetensors").rename(adapter_dir / f"adapter_model.{suffix}")
    with pytest.raises(
        InvalidAdapterError,
        match="pickle weights are refused: loading them runs code; convert with safetensors",
    ):
        inspect_adapter(adapter_dir)


def test_pickle_beside_safetensors_is_ignored(adapter_dir: Path) -> None:
    (adapter_dir / "adapter_model.bin").write_bytes(b"\x80\x04 never unpickled")
    inspect_adapter(adapter_dir)


def test_missing_weights(adapter_dir: Path) -> None:
    (adapter_dir / "adapter_model.safetensors").unlink()
    with pytest.raises(InvalidAdapterError, match="adapter_model.safetensors is missing"):
        inspect_adapter(adapter_dir)


def test_missing_config_points_to_peft_subfolder(tmp_path: Path, make_adapter) -> None:
    # save_pretrained of an adapter not named "default" writes into <dir>/<adapter name>/
    make_adapter(name="myname", parent=tmp_path / "outer")
    with pytest.raises(InvalidAdapterError, match="adapter_config.json is missing.*sub-folder 'myname'"):
        inspect_adapter(tmp_path / "outer")


def test_non_lora_refused(adapter_dir: Path, edit_adapter_config) -> None:
    edit_adapter_config(adapter_dir, peft_type="PROMPT_TUNING")
    with pytest.raises(InvalidAdapterError, match="peft_type 'PROMPT_TUNING'; only LoRA adapters"):
        inspect_adapter(adapter_dir)


def test_broken_json_refused(adapter_dir: Path) -> None:
    (adapter_dir / "adapter_config.json").write_text('{"peft_type": "LORA", ')
    with pytest.raises(InvalidAdapterError, match="adapter_config.json is not valid JSON"):
        inspect_adapter(adapter_dir)


def test_bad_field_type_refused(adapter_dir: Path, edit_adapter_config) -> None:
    edit_adapter_config(adapter_dir, r="four")
    with pytest.raises(InvalidAdapterError, match="not a valid LoRA config: r:"):
        inspect_adapter(adapter_dir)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {
                "auto_mapping": {
                    "base_model_class": "Evil",
                    "parent_library": "transformers_modules.evil.modeling",
                }
            },
            "custom code",
        ),
        ({"auto_mapping": {"base_model_class": "Evil", "parent_library": "evil"}}, "custom code"),
        ({"auto_mapping": "nonsense"}, "custom code"),
        ({"trust_remote_code": True}, "trust_remote_code"),
        ({"megatron_config": {"x": 1}, "megatron_core": "evil.module"}, "megatron"),
        ({"init_lora_weights": "pissa"}, "rewrite the base model's weights"),
        ({"init_lora_weights": "pissa_niter_4"}, "rewrite the base model's weights"),
        ({"init_lora_weights": "olora"}, "rewrite the base model's weights"),
        (
            {"init_lora_weights": "loftq", "loftq_config": {"loftq_bits": 4}},
            "rewrite the base model's weights",
        ),
        ({"init_lora_weights": "some-future-init"}, "init_lora_weights 'some-future-init'"),
    ],
)
def test_code_loading_configs_refused(
    adapter_dir: Path, edit_adapter_config, changes: dict, message: str
) -> None:
    edit_adapter_config(adapter_dir, **changes)
    with pytest.raises(InvalidAdapterError, match=message):
        inspect_adapter(adapter_dir)


@pytest.mark.parametrize("init", [True, False, "gaussian", "eva", "orthogonal"])
def test_inits_that_touch_only_the_lora_weights_are_fine(
    adapter_dir: Path, edit_adapter_config, init: object
) -> None:
    edit_adapter_config(adapter_dir, init_lora_weights=init)
    assert inspect_adapter(adapter_dir).config.model_extra["init_lora_weights"] == init  # type: ignore[index]


def test_fields_left_off_pass_through(adapter_dir: Path, edit_adapter_config) -> None:
    """A newer PEFT writes fields this one does not know; off (null, false, empty) they change nothing."""
    edit_adapter_config(
        adapter_dir,
        some_future_peft_option=None,
        another_one=False,
        rank_pattern=None,
        layer_replication=None,
        loftq_config={},
        use_qalora=False,
        qalora_group_size=16,
        megatron_core="megatron.core",
    )
    config = read_adapter_config(adapter_dir)
    assert config.model_extra is not None and config.model_extra["some_future_peft_option"] is None
    assert config.rank_pattern == {}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"layer_replication": [[0, 2], [1, 2]]}, "rewrite the base model's layer list"),
        ({"some_future_peft_option": [1, 2]}, "some_future_peft_option = [1, 2], which is not a LoRA field"),
        ({"use_qalora": True}, "QALoRA"),
        ({"target_parameters": ["mlp.experts.down_proj"]}, "raw parameters"),
        ({"alora_invocation_tokens": [1, 2]}, "activated LoRA"),
        ({"arrow_config": {"top_k": 2}}, "LoRA variant"),
        ({"eva_config": {"rho": 2.0}}, "initialisation data"),
        ({"bias": "all"}, "trained biases of the base model's own layers"),
        ({"bias": "lora_only"}, "trained biases of the base model's own layers"),
        ({"task_type": "SEQ_CLS"}, "causal language models"),
        ({"modules_to_save": ["lm_head|.*"]}, "plain dotted module names"),
        ({"layers_to_transform": [0], "layers_pattern": "(layers)+"}, "plain dotted module names"),
        ({"trainable_token_indices": {"embed.*": [1]}}, "plain dotted module names"),
    ],
)
def test_fields_the_server_cannot_serve_are_refused(
    adapter_dir: Path, edit_adapter_config, changes: dict, message: str
) -> None:
    edit_adapter_config(adapter_dir, **changes)
    with pytest.raises(InvalidAdapterError, match=re.escape(message)):
        inspect_adapter(adapter_dir)


@pytest.mark.parametrize(
    ("changes", "where"),
    [
        ({"target_modules": "(?=model).*q_proj"}, "target_modules"),
        ({"exclude_modules": r"(a)\1"}, "exclude_modules"),
        ({"rank_pattern": {"(?i)Q_PROJ": 2}}, "rank_pattern key"),
        ({"alpha_pattern": {"a{9000}": 2}}, "alpha_pattern key"),
    ],
)
def test_patterns_only_a_backtracking_matcher_could_run_are_refused(
    adapter_dir: Path, edit_adapter_config, changes: dict, where: str
) -> None:
    edit_adapter_config(adapter_dir, **changes)
    with pytest.raises(InvalidAdapterError, match=f"adapter_config.json's {where} .* is refused: "):
        inspect_adapter(adapter_dir)


def test_truncated_safetensors_refused(adapter_dir: Path) -> None:
    weights = adapter_dir / "adapter_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidAdapterError, match="not a valid safetensors file.*truncated"):
        inspect_adapter(adapter_dir)


def test_header_only_truncation_refused(adapter_dir: Path) -> None:
    weights = adapter_dir / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(InvalidAdapterError, match="runs past the end"):
        inspect_adapter(adapter_dir)


def test_rank_pattern_config(make_adapter) -> None:
    config = read_adapter_config(make_adapter("rank-pattern"))
    assert config.rank_for("model.layers.1.self_attn.v_proj") == 2
    assert config.rank_for("model.layers.1.self_attn.q_proj") == 4
    assert config.architecture is None  # task_type set: PEFT writes no auto_mapping


def test_config_json_not_object(adapter_dir: Path) -> None:
    (adapter_dir / "adapter_config.json").write_text(json.dumps(["LORA"]))
    with pytest.raises(InvalidAdapterError, match="not a JSON object"):
        inspect_adapter(adapter_dir)
