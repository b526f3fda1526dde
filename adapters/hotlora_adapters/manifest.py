"""`hotlora.json`: what hotlora knows about an adapter beyond PEFT's files.

PEFT's config says how to load an adapter; the manifest says where it came from (trained here, imported,
a blend), what base it was made for, how it was made and how it scored, and whether it is disabled.
Unknown fields are kept (`extra="allow"`) so a manifest written by a newer hotlora still reads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import InvalidAdapterError
from .names import validate_adapter_name

MANIFEST_FILENAME = "hotlora.json"
MANIFEST_VERSION = 1

AdapterSource = Literal["trained", "imported", "blend"]


class BlendSource(BaseModel):
    """One ingredient of a blend: an adapter name and its weight."""

    model_config = ConfigDict(extra="allow")

    name: str
    weight: float = 1.0

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        return validate_adapter_name(value)


class Manifest(BaseModel):
    """The contents of `<store>/<name>/hotlora.json`.

    `name` records the name at registration; the folder name is authoritative (copying a folder under a
    new name is a supported way to register it).
    """

    model_config = ConfigDict(extra="allow")

    manifest_version: int = MANIFEST_VERSION
    name: str
    base_model: str
    base_fingerprint: str | None = None
    r: int = Field(gt=0)
    lora_alpha: float
    target_modules: list[str]
    created: int
    source: AdapterSource
    recipe: dict[str, Any] | None = None
    dataset_hash: str | None = None
    eval_metrics: dict[str, Any] | None = None
    sources: list[BlendSource] = Field(default_factory=list)
    disabled: bool = False

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        return validate_adapter_name(value)


def read_manifest(adapter_dir: Path) -> Manifest | None:
    """Read `<adapter_dir>/hotlora.json`; None when there is none, `InvalidAdapterError` when it is unreadable."""
    adapter_dir = Path(adapter_dir)
    path = adapter_dir / MANIFEST_FILENAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidAdapterError(f"cannot read {MANIFEST_FILENAME}: {e}", path=adapter_dir) from e
    try:
        return Manifest.model_validate(json.loads(text))
    except json.JSONDecodeError as e:
        raise InvalidAdapterError(f"{MANIFEST_FILENAME} is not valid JSON: {e}", path=adapter_dir) from e
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or '(root)'}: {err['msg']}" for err in e.errors())
        raise InvalidAdapterError(f"{MANIFEST_FILENAME} is not a valid manifest: {problems}", path=adapter_dir) from e


def manifest_json(manifest: Manifest) -> str:
    """The canonical text of a manifest file (what registration writes)."""
    return manifest.model_dump_json(indent=2) + "\n"
