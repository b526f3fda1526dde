"""`adapter_config.json`: the fields of a PEFT LoRA config that hotlora relies on, read without PEFT.

Reading it ourselves lets the registry refuse an unusable or unsafe adapter (wrong PEFT type, a config
that would make PEFT import custom code) before any process hands it to PEFT. Unknown fields are kept:
PEFT adds config fields every release, and an adapter from a newer PEFT must still be listed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import InvalidAdapterError

CONFIG_FILENAME = "adapter_config.json"
LORA_PEFT_TYPE = "LORA"
# `auto_mapping.parent_library` is a module PEFT's AutoPeftModel imports; only these are trusted.
_TRUSTED_LIBRARIES = ("transformers", "peft")
# LoRA initialisations that only set the LoRA weights (which the saved weights then replace). Every other
# one (PiSSA, OLoRA, CorDA, LoftQ, LoRA-GA) also rewrites the base model's weights as PEFT loads the adapter.
_SERVABLE_INITS = ("gaussian", "eva", "orthogonal", "mica")
_MODEL_TYPE_FROM_LIBRARY = re.compile(r"transformers\.models\.(?P<model_type>[A-Za-z0-9_]+)\.modeling_\w+")


class AdapterConfig(BaseModel):
    """The parts of a PEFT `LoraConfig` the registry and the engine use; other fields pass through."""

    model_config = ConfigDict(extra="allow", frozen=True)

    peft_type: str
    r: int = Field(default=8, gt=0)
    lora_alpha: float = 8
    target_modules: list[str] | str | None = None
    exclude_modules: list[str] | str | None = None
    layers_to_transform: list[int] | int | None = None
    layers_pattern: list[str] | str | None = None
    base_model_name_or_path: str | None = None
    modules_to_save: list[str] | None = None
    rank_pattern: dict[str, int] = Field(default_factory=dict)
    alpha_pattern: dict[str, float] = Field(default_factory=dict)
    use_dora: bool = False
    use_rslora: bool = False
    task_type: str | None = None
    trainable_token_indices: list[int] | dict[str, list[int]] | None = None
    auto_mapping: dict[str, Any] | None = None

    @field_validator("rank_pattern", "alpha_pattern", mode="before")
    @classmethod
    def _null_is_empty(cls, value: object) -> object:
        return {} if value is None else value

    @property
    def architecture(self) -> str | None:
        """The base's transformers `model_type` when the config records it (PEFT writes `auto_mapping`
        when `task_type` is unset), else None. Used only as a consistency check, never as a name match."""
        library = (self.auto_mapping or {}).get("parent_library")
        match = _MODEL_TYPE_FROM_LIBRARY.fullmatch(library) if isinstance(library, str) else None
        return match["model_type"] if match else None

    def rank_for(self, module: str) -> int:
        """The rank PEFT gives `module`: the first matching `rank_pattern` key (PEFT's rule), else `r`."""
        key = _pattern_key(self.rank_pattern, module)
        return self.rank_pattern[key] if key is not None else self.r


def read_adapter_config(adapter_dir: Path) -> AdapterConfig:
    """Read and validate `<adapter_dir>/adapter_config.json`; raise `InvalidAdapterError` with the reason."""
    adapter_dir = Path(adapter_dir)
    path = adapter_dir / CONFIG_FILENAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidAdapterError(_missing_config_reason(adapter_dir), path=adapter_dir) from None
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidAdapterError(f"cannot read {CONFIG_FILENAME}: {e}", path=adapter_dir) from e
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise InvalidAdapterError(f"{CONFIG_FILENAME} is not valid JSON: {e}", path=adapter_dir) from e
    if not isinstance(raw, dict):
        raise InvalidAdapterError(f"{CONFIG_FILENAME} is not a JSON object", path=adapter_dir)

    peft_type = raw.get("peft_type")
    if not isinstance(peft_type, str) or peft_type.upper() != LORA_PEFT_TYPE:
        raise InvalidAdapterError(
            f"{CONFIG_FILENAME} has peft_type {peft_type!r}; only LoRA adapters (peft_type \"LORA\") are supported",
            path=adapter_dir,
        )
    _refuse_code_loading(raw, adapter_dir)
    try:
        return AdapterConfig.model_validate(raw)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise InvalidAdapterError(f"{CONFIG_FILENAME} is not a valid LoRA config: {problems}", path=adapter_dir) from e


def _refuse_code_loading(raw: dict[str, Any], adapter_dir: Path) -> None:
    """Refuse configs that would make PEFT or transformers import or run code named by the file, or
    make loading rewrite the base model that every other request shares."""
    if raw.get("trust_remote_code"):
        raise InvalidAdapterError(
            f"{CONFIG_FILENAME} asks for trust_remote_code; remote code is refused", path=adapter_dir
        )
    mapping = raw.get("auto_mapping")
    if mapping is not None:
        library = mapping.get("parent_library") if isinstance(mapping, dict) else None
        trusted = isinstance(library, str) and any(
            library == lib or library.startswith(lib + ".") for lib in _TRUSTED_LIBRARIES
        )
        if not trusted:
            raise InvalidAdapterError(
                f"{CONFIG_FILENAME}'s auto_mapping names custom code (parent_library {library!r}); "
                "only transformers/peft model classes are allowed",
                path=adapter_dir,
            )
    init = raw.get("init_lora_weights", True)
    if not isinstance(init, bool) and init not in _SERVABLE_INITS:
        raise InvalidAdapterError(
            f"{CONFIG_FILENAME} has init_lora_weights {init!r}: loading it would make PEFT rewrite the base "
            "model's weights; save the adapter converted to plain LoRA (PEFT's save_pretrained with "
            "path_initial_model_for_weight_conversion)",
            path=adapter_dir,
        )
    if raw.get("megatron_config"):
        raise InvalidAdapterError(
            f"{CONFIG_FILENAME} sets megatron_config (PEFT would import the module named by megatron_core); "
            "Megatron adapters are not supported",
            path=adapter_dir,
        )


def _missing_config_reason(adapter_dir: Path) -> str:
    if not adapter_dir.is_dir():
        return "no such adapter folder"
    # PEFT saves an adapter not named "default" in a sub-folder named after it; point the user there.
    nested = sorted(p.parent.name for p in adapter_dir.glob(f"*/{CONFIG_FILENAME}"))
    hint = f" (found one in sub-folder {', '.join(map(repr, nested))}; use that folder)" if nested else ""
    return f"{CONFIG_FILENAME} is missing: not a PEFT adapter folder{hint}"


def _pattern_key(patterns: dict[str, Any], module: str) -> str | None:
    """PEFT's `get_pattern_key`: a key matches when it equals a dotted suffix of the module name."""
    for key in patterns:
        try:
            if re.match(rf"(.*\.)?({key})$", module):
                return key
        except re.error:
            continue
    return None
