"""Which base modules a LoRA config selects, by PEFT's own matching rules, and the LoRA config that
serves an adapter with those modules named one by one.

Needed twice. To catch the two silent failures of PEFT's loader: weights for a module the config does not
target are dropped ("unexpected keys"), and a targeted module without weights keeps a no-op LoRA — both
signs the adapter was made for another base. And to load an adapter without PEFT ever evaluating a
pattern from its file: the server hands PEFT the modules resolved here (`peft_lora_kwargs`), and
`patterns` matches in linear time what PEFT would have matched with `re`.
"""

from __future__ import annotations

import re
from typing import Any

from .patterns import compile_pattern
from .peft_config import AdapterConfig
from .peft_files import AdapterFiles
from .tensor_keys import lora_modules

# Special values PEFT expands when it creates the adapter; a saved config holding one cannot be matched here.
_SPECIAL_TARGETS = frozenset({"all-linear"})


def is_targeted(config: AdapterConfig, module: str) -> bool | None:
    """Whether PEFT would put a LoRA layer on `module` (its name in the base model).

    Mirrors `peft.tuners.tuners_utils.check_target_module_exists` (PEFT 0.21); returns None when the config
    leaves the choice to PEFT's defaults (no `target_modules`, or an unexpanded "all-linear").
    """
    if _excluded(config, module):
        return False
    targets = config.target_modules
    if targets is None or (isinstance(targets, str) and targets in _SPECIAL_TARGETS):
        return None
    if isinstance(targets, str):
        return compile_pattern(targets).fullmatch(module)
    if module in targets:
        return True
    if not any(module.endswith("." + t) for t in targets):
        return False
    wanted = config.layers_to_transform
    if wanted is None or wanted == []:
        return True
    index = layer_index(module, config.layers_pattern)
    if index is None:
        return False
    return index == wanted if isinstance(wanted, int) else index in wanted


def targeted_modules(files: AdapterFiles, modules: list[str]) -> list[str]:
    """The names in `modules` (the base's) that get a LoRA layer: what the config selects, or, where it
    leaves that to PEFT's defaults, the modules the adapter has LoRA weights for."""
    with_weights = lora_modules(files.tensor_shapes)
    selected = []
    for module in modules:
        targeted = is_targeted(files.config, module)
        if targeted or (targeted is None and module in with_weights):
            selected.append(module)
    return selected


def peft_lora_kwargs(files: AdapterFiles, modules: list[str]) -> dict[str, Any]:
    """The `peft.LoraConfig` arguments that serve `files` on a base with `modules`: the served fields of
    its config, with every pattern resolved to the exact names it selects (PEFT's rank and alpha patterns
    become escaped full names). The initialisation is PEFT's default, which touches only the LoRA weights
    that loading then replaces."""
    config = files.config
    selected = targeted_modules(files, modules)
    return {
        "r": config.r,
        "lora_alpha": config.lora_alpha,
        "target_modules": selected,
        "rank_pattern": {re.escape(m): rank for m in selected if (rank := config.rank_for(m)) != config.r},
        "alpha_pattern": {
            re.escape(m): alpha for m in selected if (alpha := config.alpha_for(m)) != config.lora_alpha
        },
        "use_rslora": config.use_rslora,
        "use_dora": config.use_dora,
        "lora_bias": config.lora_bias,
        "fan_in_fan_out": config.fan_in_fan_out,
        "modules_to_save": config.modules_to_save,
        "trainable_token_indices": config.trainable_token_indices,
        "task_type": config.task_type,
    }


def layer_index(module: str, layers_pattern: list[str] | str | None) -> int | None:
    """The layer index PEFT reads from a module name for `layers_to_transform`: the first all-digit part
    after `<layers_pattern>.` (any part when no pattern is given) that another part follows."""
    parts = module.split(".")
    patterns = [layers_pattern] if isinstance(layers_pattern, str) else list(layers_pattern or ())
    if not patterns:  # PEFT: r".*?\.[^.]*\.(?P<idx>\d+)\."
        return next((int(parts[i]) for i in range(2, len(parts) - 1) if _is_index(parts[i])), None)
    for pattern in patterns:  # PEFT: rf"(?:^|.*?\.){pattern}\.(?P<idx>\d+)\."
        names = pattern.split(".")
        for i in range(len(parts) - len(names) - 1):
            j = i + len(names)
            if parts[i:j] == names and _is_index(parts[j]):
                return int(parts[j])
    return None


def _is_index(part: str) -> bool:
    return part.isascii() and part.isdigit()


def _excluded(config: AdapterConfig, module: str) -> bool:
    excluded = config.exclude_modules
    if excluded:
        if isinstance(excluded, str):
            if compile_pattern(excluded).fullmatch(module):
                return True
        elif module in excluded or any(module.endswith("." + e) for e in excluded):
            return True
    # PEFT never puts LoRA on a module it also fully trains (modules_to_save), matched as whole name parts.
    return any(_has_parts(module, m) for m in config.modules_to_save or ())


def _has_parts(module: str, name: str) -> bool:
    """`name` (one or more dotted parts) appears in `module` as whole parts: PEFT's (^|.*\\.)name($|\\..*)."""
    parts, names = module.split("."), name.split(".")
    return any(parts[i : i + len(names)] == names for i in range(len(parts) - len(names) + 1))
