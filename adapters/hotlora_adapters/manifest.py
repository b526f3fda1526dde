"""`hotlora.json`: what hotlora knows about an adapter beyond PEFT's files.

PEFT's config says how to load an adapter; the manifest says where it came from (trained here, imported,
a blend), what base it was made for, how it was made and how it scored, and whether it is disabled.
Unknown fields are kept (`extra="allow"`) so a manifest written by a newer hotlora still reads.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import InvalidAdapterError
from .names import validate_adapter_name
from .tensor_keys import parse_tensor_key

if TYPE_CHECKING:
    from .compat import BaseSpec
    from .peft_files import AdapterFiles

MANIFEST_FILENAME = "hotlora.json"
MANIFEST_VERSION = 1
UNKNOWN_BASE_MODEL = "unknown"

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
    blend_method: str | None = None
    density: float | None = None
    disabled: bool = False

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        return validate_adapter_name(value)

    @classmethod
    def for_adapter(
        cls,
        name: str,
        files: AdapterFiles,
        *,
        source: AdapterSource,
        base: BaseSpec | None = None,
        base_model: str | None = None,
        sources: Sequence[BlendSource | Mapping[str, Any]] = (),
        blend_method: str | None = None,
        density: float | None = None,
        recipe: dict[str, Any] | None = None,
        dataset_hash: str | None = None,
        eval_metrics: dict[str, Any] | None = None,
        created: int | None = None,
        disabled: bool = False,
    ) -> Manifest:
        """The manifest of a validated adapter folder, its LoRA facts taken from the files.

        `base_model` defaults to the config's `base_model_name_or_path`, else `base.architecture`, else
        "unknown"; `base_fingerprint` is `base.fingerprint()` when a base is given; `created` is now.
        """
        config = files.config
        resolved_base_model = base_model or config.base_model_name_or_path
        if not resolved_base_model:
            resolved_base_model = base.architecture if base is not None else UNKNOWN_BASE_MODEL
        return cls(
            name=name,
            base_model=resolved_base_model,
            base_fingerprint=base.fingerprint() if base is not None else None,
            r=config.r,
            lora_alpha=config.lora_alpha,
            target_modules=_target_modules(files),
            created=int(time.time()) if created is None else created,
            source=source,
            recipe=recipe,
            dataset_hash=dataset_hash,
            eval_metrics=eval_metrics,
            sources=[s if isinstance(s, BlendSource) else BlendSource.model_validate(s) for s in sources],
            blend_method=blend_method,
            density=density,
            disabled=disabled,
        )


def _target_modules(files: AdapterFiles) -> list[str]:
    """The config's target_modules as a list (a regex stays one entry); without any, the LoRA modules'
    last name components as found in the weights."""
    targets = files.config.target_modules
    if isinstance(targets, str):
        return [targets]
    if targets:
        return sorted(targets)
    found = set()
    for key in files.tensor_shapes:
        parsed = parse_tensor_key(key)
        if parsed is not None and parsed.role.is_lora:
            found.add(parsed.module.rsplit(".", 1)[-1])
    return sorted(found)


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
        problems = "; ".join(
            f"{'.'.join(map(str, err['loc'])) or '(root)'}: {err['msg']}" for err in e.errors()
        )
        raise InvalidAdapterError(
            f"{MANIFEST_FILENAME} is not a valid manifest: {problems}", path=adapter_dir
        ) from e


def manifest_json(manifest: Manifest) -> str:
    """The canonical text of a manifest file (what registration writes)."""
    return manifest.model_dump_json(indent=2) + "\n"
