"""`adapter_config.json`: the fields of a PEFT LoRA config that hotlora serves, read without PEFT.

Reading it ourselves lets the registry refuse an unusable or unsafe adapter before any process hands it
to PEFT. The rule is an allow-list: the fields the server serves (`SERVED_FIELDS`) and the ones that only
describe the adapter (`DESCRIPTIVE_FIELDS`) are read; any other field, known or not, is accepted only when
it is off (null, false, empty), because loading with it set does something the server cannot serve —
`layer_replication`, for one, makes PEFT rewrite the shared base's layer list. PEFT adds config fields
every release, and an adapter from a newer PEFT that leaves them off must still be listed.

The patterns a config holds (`target_modules` and `exclude_modules` as strings, the keys of
`rank_pattern` and `alpha_pattern`) are regular expressions to PEFT; they are compiled with `patterns`,
which refuses the ones that could backtrack without bound, and the server hands PEFT resolved module
names instead of them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import InvalidAdapterError
from .patterns import UnsafePattern, compile_pattern

CONFIG_FILENAME = "adapter_config.json"
LORA_PEFT_TYPE = "LORA"
# `auto_mapping.parent_library` is a module PEFT's AutoPeftModel imports; only these are trusted.
_TRUSTED_LIBRARIES = ("transformers", "peft")
# LoRA initialisations that only set the LoRA weights (which the saved weights then replace). Every other
# one (PiSSA, OLoRA, CorDA, LoftQ, LoRA-GA) also rewrites the base model's weights as PEFT loads the adapter.
_SERVABLE_INITS = ("gaussian", "eva", "orthogonal", "mica")
_MODEL_TYPE_FROM_LIBRARY = re.compile(r"transformers\.models\.(?P<model_type>[A-Za-z0-9_]+)\.modeling_\w+")
# Module names PEFT puts into regular expressions of its own (`modules_to_save`, `layers_pattern`) or matches
# by suffix: plain dotted names only.
_MODULE_NAME = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*")
SERVING_TASK_TYPES = (None, "CAUSAL_LM")

# What the server serves: handed to PEFT (patterns resolved first) or checked against the weights.
SERVED_FIELDS = frozenset(
    {
        "peft_type",
        "r",
        "lora_alpha",
        "target_modules",
        "exclude_modules",
        "layers_to_transform",
        "layers_pattern",
        "rank_pattern",
        "alpha_pattern",
        "modules_to_save",
        "use_rslora",
        "use_dora",
        "lora_bias",
        "fan_in_fan_out",
        "trainable_token_indices",
        "task_type",
        "init_lora_weights",
        "bias",
        "lora_dropout",
    }
)
# What describes the adapter or only matters while training; never handed to PEFT.
DESCRIPTIVE_FIELDS = frozenset(
    {
        "base_model_name_or_path",
        "revision",
        "peft_version",
        "auto_mapping",
        "inference_mode",
        "megatron_core",
        "qalora_group_size",
        "runtime_config",
    }
)
# Known fields accepted only when off, and why: what loading an adapter that sets them would do.
_OFF_ONLY: dict[str, str] = {
    "layer_replication": "makes PEFT rewrite the base model's layer list, which every request shares",
    "megatron_config": "makes PEFT import the module named by megatron_core; Megatron adapters are not supported",
    "target_parameters": "puts LoRA on raw parameters (mixture-of-experts weights), which hotlora does not serve",
    "use_qalora": "is QALoRA, which runs on GPTQ bases only",
    "alora_invocation_tokens": "is activated LoRA (applied from an invocation sequence on), which hotlora does "
    "not serve",
    "ensure_weight_tying": "ties the adapter's copies of tied base layers, which hotlora does not serve",
    **{
        name: "is a LoRA variant hotlora does not serve"
        for name in ("velora_config", "monteclora_config", "use_bdlora", "arrow_config", "kasa_config")
    },
    **{
        name: "holds initialisation data for the base model, which loading would rewrite"
        for name in ("loftq_config", "eva_config", "corda_config", "lora_ga_config")
    },
}


class AdapterConfig(BaseModel):
    """The parts of a PEFT `LoraConfig` the registry and the engine use; other fields pass through (read
    through `read_adapter_config`, only when they are off or descriptive)."""

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
    lora_bias: bool = False
    fan_in_fan_out: bool = False
    bias: str = "none"
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

    def alpha_for(self, module: str) -> float:
        """The alpha PEFT gives `module`: the first matching `alpha_pattern` key, else `lora_alpha`."""
        key = _pattern_key(self.alpha_pattern, module)
        return self.alpha_pattern[key] if key is not None else self.lora_alpha

    @property
    def max_rank(self) -> int:
        """The largest rank any module gets."""
        return max([self.r, *self.rank_pattern.values()])


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
            f'{CONFIG_FILENAME} has peft_type {peft_type!r}; only LoRA adapters (peft_type "LORA") are supported',
            path=adapter_dir,
        )
    _refuse_code_loading(raw, adapter_dir)
    _refuse_unserved_fields(raw, adapter_dir)
    try:
        config = AdapterConfig.model_validate(raw)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise InvalidAdapterError(
            f"{CONFIG_FILENAME} is not a valid LoRA config: {problems}", path=adapter_dir
        ) from e
    _refuse_unserved_values(config, adapter_dir)
    _refuse_unsafe_patterns(config, adapter_dir)
    return config


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


def _refuse_unserved_fields(raw: dict[str, Any], adapter_dir: Path) -> None:
    """The allow-list: a field neither served nor descriptive must be off."""
    for name, value in raw.items():
        if name in SERVED_FIELDS or name in DESCRIPTIVE_FIELDS or _is_off(value):
            continue
        why = _OFF_ONLY.get(name, "is not a LoRA field hotlora serves")
        raise InvalidAdapterError(
            f"{CONFIG_FILENAME} sets {name} = {_shown(value)}, which {why}; only plain LoRA adapters are served",
            path=adapter_dir,
        )


def _refuse_unserved_values(config: AdapterConfig, adapter_dir: Path) -> None:
    """Served fields with values the server cannot serve as PEFT would."""
    if config.bias != "none":
        raise InvalidAdapterError(
            f"{CONFIG_FILENAME} has bias {config.bias!r}: the adapter carries trained biases of the base "
            "model's own layers, which loading would write into the base every request shares",
            path=adapter_dir,
        )
    if config.task_type not in SERVING_TASK_TYPES:
        raise InvalidAdapterError(
            f"{CONFIG_FILENAME} has task_type {config.task_type!r}: hotlora serves adapters of causal language "
            'models (task_type "CAUSAL_LM" or none)',
            path=adapter_dir,
        )
    names = [*(config.modules_to_save or ()), *_layer_patterns(config)]
    if isinstance(config.trainable_token_indices, dict):
        names += list(config.trainable_token_indices)
    for name in names:
        if not _MODULE_NAME.fullmatch(name):
            raise InvalidAdapterError(
                f"{CONFIG_FILENAME} names the module {_shown(name)} in modules_to_save, layers_pattern or "
                "trainable_token_indices: only plain dotted module names are accepted there",
                path=adapter_dir,
            )


def _refuse_unsafe_patterns(config: AdapterConfig, adapter_dir: Path) -> None:
    """Every regular expression PEFT would evaluate must compile to a linear-time matcher."""
    places = [
        (f"{field}", value)
        for field in ("target_modules", "exclude_modules")
        if isinstance(value := getattr(config, field), str)
    ]
    places += [
        (f"{field} key", key) for field in ("rank_pattern", "alpha_pattern") for key in getattr(config, field)
    ]
    for where, pattern in places:
        try:
            compile_pattern(pattern)
        except UnsafePattern as e:
            raise InvalidAdapterError(
                f"{CONFIG_FILENAME}'s {where} {_shown(pattern)} is refused: {e}", path=adapter_dir
            ) from None


def _layer_patterns(config: AdapterConfig) -> list[str]:
    patterns = config.layers_pattern
    return [patterns] if isinstance(patterns, str) else list(patterns or ())


def _is_off(value: object) -> bool:
    return value is None or value is False or (isinstance(value, (str, list, dict)) and not value)


def _shown(value: object) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _missing_config_reason(adapter_dir: Path) -> str:
    if not adapter_dir.is_dir():
        return "no such adapter folder"
    # PEFT saves an adapter not named "default" in a sub-folder named after it; point the user there.
    nested = sorted(p.parent.name for p in adapter_dir.glob(f"*/{CONFIG_FILENAME}"))
    hint = f" (found one in sub-folder {', '.join(map(repr, nested))}; use that folder)" if nested else ""
    return f"{CONFIG_FILENAME} is missing: not a PEFT adapter folder{hint}"


def _pattern_key(patterns: dict[str, Any], module: str) -> str | None:
    """PEFT's `get_pattern_key`: the first key matching the module name or a dotted suffix of it."""
    for key in patterns:
        try:
            if compile_pattern(key).matches_name(module):
                return key
        except UnsafePattern:  # refused when the config was read
            continue
    return None
