"""Which base modules a LoRA config selects, by PEFT's own matching rules.

Needed to catch the two silent failures of PEFT's loader: weights for a module the config does not
target are dropped ("unexpected keys"), and a targeted module without weights keeps a no-op LoRA —
both signs the adapter was made for another base.
"""

from __future__ import annotations

import re

from .peft_config import AdapterConfig

# Special values PEFT expands when it creates the adapter; a saved config holding one cannot be matched here.
_SPECIAL_TARGETS = frozenset({"all-linear"})


def is_targeted(config: AdapterConfig, module: str) -> bool | None:
    """Whether PEFT would put a LoRA layer on `module` (its name in the base model).

    Mirrors `peft.tuners.tuners_utils.check_target_module_exists`; returns None when the answer depends
    on things this check does not model (layer index filters, unexpanded special values).
    """
    if _excluded(config, module):
        return False
    targets = config.target_modules
    if targets is None:
        return None
    if isinstance(targets, str):
        if targets in _SPECIAL_TARGETS:
            return None
        return _fullmatch(targets, module)
    if module in targets:
        return True
    if not any(module.endswith("." + t) for t in targets):
        return False
    if config.layers_to_transform is not None and config.layers_to_transform != []:
        return None
    return True


def _excluded(config: AdapterConfig, module: str) -> bool:
    excluded = config.exclude_modules
    if excluded:
        if isinstance(excluded, str):
            if _fullmatch(excluded, module):
                return True
        elif module in excluded or any(module.endswith("." + e) for e in excluded):
            return True
    # PEFT never puts LoRA on a module it also fully trains (modules_to_save).
    return any(_safe_match(rf"(^|.*\.){m}($|\..*)", module) for m in config.modules_to_save or ())


def _fullmatch(pattern: str, text: str) -> bool:
    try:
        return re.fullmatch(pattern, text) is not None
    except re.error:
        return False


def _safe_match(pattern: str, text: str) -> bool:
    try:
        return re.match(pattern, text) is not None
    except re.error:
        return False
