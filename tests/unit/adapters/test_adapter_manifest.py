import json
from pathlib import Path

import pytest

from hotlora_adapters import InvalidAdapterError, Manifest, manifest_json, read_manifest


def _manifest(**changes) -> Manifest:
    fields = dict(
        name="piglatin",
        base_model="HuggingFaceTB/SmolLM2-135M-Instruct",
        base_fingerprint="0123456789abcdef",
        r=8,
        lora_alpha=16,
        target_modules=["q_proj", "v_proj"],
        created=1_700_000_000,
        source="trained",
        recipe={"epochs": 3, "lr": 2e-4},
        dataset_hash="sha256:abc",
        eval_metrics={"exact_match": 0.91},
    )
    return Manifest(**{**fields, **changes})


def test_round_trip(tmp_path: Path) -> None:
    original = _manifest()
    (tmp_path / "hotlora.json").write_text(manifest_json(original))
    assert read_manifest(tmp_path) == original
    assert original.disabled is False and original.sources == []


def test_blend_sources_round_trip(tmp_path: Path) -> None:
    blend = _manifest(
        name="mix",
        source="blend",
        sources=[{"name": "piglatin", "weight": 0.7}, {"name": "yoda", "weight": 0.3}],
    )
    (tmp_path / "hotlora.json").write_text(manifest_json(blend))
    back = read_manifest(tmp_path)
    assert back is not None and [(s.name, s.weight) for s in back.sources] == [
        ("piglatin", 0.7),
        ("yoda", 0.3),
    ]


def test_newer_fields_are_kept(tmp_path: Path) -> None:
    data = json.loads(manifest_json(_manifest()))
    data["manifest_version"] = 7
    data["future_field"] = {"x": 1}
    (tmp_path / "hotlora.json").write_text(json.dumps(data))
    back = read_manifest(tmp_path)
    assert back is not None and back.model_extra == {"future_field": {"x": 1}}
    assert json.loads(manifest_json(back))["future_field"] == {"x": 1}


def test_missing_is_none(tmp_path: Path) -> None:
    assert read_manifest(tmp_path) is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"name": "piglatin"}), "base_model"),
        (manifest_json(_manifest()).replace('"trained"', '"stolen"'), "source"),
        (manifest_json(_manifest()).replace('"piglatin"', '"../etc"'), "invalid adapter name"),
    ],
)
def test_bad_manifest_is_refused(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "hotlora.json").write_text(text)
    with pytest.raises(InvalidAdapterError, match="hotlora.json") as info:
        read_manifest(tmp_path)
    assert message in str(info.value)
