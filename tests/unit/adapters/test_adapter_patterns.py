"""Patterns from adapter configs: the same answers as Python's `re`, in linear time, or refused with a reason.

PEFT evaluates `target_modules` / `exclude_modules` strings and the keys of `rank_pattern` / `alpha_pattern`
with `re` on every module name; patterns such as `(.*)*\\.zzz` take minutes per name there. The registry
matches them itself, by automaton, and resolves a config's targets to plain module names.
"""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import pytest

from hotlora_adapters import (
    UnsafePattern,
    compile_pattern,
    find_mismatches,
    inspect_adapter,
    is_targeted,
    peft_lora_kwargs,
    read_adapter_config,
)
from hotlora_adapters.targets import layer_index

NAMES = [
    "model.layers.0.self_attn.q_proj",
    "model.layers.10.mlp.down_proj",
    "model.layers.1.input_layernorm",
    "lm_head",
    "model.embed_tokens",
    "model.layers.0.self_attn",
    "xx",
    "xxx",
    "",
    "a.b",
]
PATTERNS = [
    r".*\.(q_proj|v_proj)",
    r"model\.layers\.\d+\.self_attn\.q_proj",
    "q_proj",
    r"^model.layers.0.self_attn.q_proj",
    r".*layers\.1\d?\..*",
    "lm_head",
    r"\bq_proj\b",
    r"model.layers.[0-5]+.(self_attn|mlp).\w+",
    r"x{2,3}",
    r"x{2,}",
    r"[^.]+_proj",
    r"(?:self_attn|mlp)\.[a-z]_proj$",
    r"\Alm_head\Z",
    r".*(?<!x)",
    r"(a|ab)*",
    r"(?s).*",
    "",
    r"[\w.]*?norm",
    r"embed_tokens|lm_head",
]
# Exponential for `re` on module-name-like text: minutes per name at this length.
CATASTROPHIC = [r"(.*)*\.zzz", r"([a-z_.0-9]+)*z", r"(m?o?d?e?l?.*)*z"]


@pytest.mark.parametrize("pattern", [p for p in PATTERNS if "(?<" not in p])
def test_answers_as_python_re_does(pattern: str) -> None:
    compiled = compile_pattern(pattern)
    for name in NAMES:
        assert compiled.fullmatch(name) == (re.fullmatch(pattern, name) is not None), name
        if not pattern.startswith("(?s)"):  # PEFT's rank/alpha key rule (global flags must lead a pattern)
            assert compiled.matches_name(name) == (re.match(rf"(.*\.)?({pattern})$", name) is not None), name


@pytest.mark.parametrize("pattern", CATASTROPHIC)
def test_catastrophic_patterns_run_in_linear_time(pattern: str) -> None:
    long_name = "model.layers.1.self_attn.q_proj" * 30  # ~900 characters
    started = time.perf_counter()
    for name in [*NAMES, long_name]:
        assert compile_pattern(pattern).fullmatch(name) is False
        assert compile_pattern(pattern).matches_name(name) is False
    assert time.perf_counter() - started < 5  # `re` needs minutes for one 31-character name


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        (r"(?=model).*q_proj", "lookahead"),
        (r".*(?<!v)_proj", "lookahead or lookbehind"),
        (r"(q)_\1", "backreference"),
        (r"(?(1)a|b)(x)", "conditional"),
        (r"(?>a|ab)c", "atomic group"),
        (r"a++", "possessive"),
        (r"(?i)q_proj", "case-insensitive"),
        (r"a{6000}", "more than 1000 states"),
        ("(" * 400 + "a" + ")" * 400, "nested more than 100 deep"),
        ("x" * 1001, "longer than 1000 characters"),
        ("[", "not a valid regular expression"),
    ],
)
def test_what_only_backtracking_can_do_is_refused(pattern: str, reason: str) -> None:
    with pytest.raises(UnsafePattern, match=re.escape(reason)):
        compile_pattern(pattern)


@pytest.mark.parametrize(
    ("module", "pattern", "index"),
    [
        ("model.layers.3.self_attn.q_proj", None, 3),
        ("model.layers.3.mlp.experts.7.down_proj", None, 3),  # the first index, as PEFT 0.21 reads it
        ("model.layers.3.mlp.experts.7.down_proj", "experts", 7),
        ("model.layers.3.self_attn.q_proj", ["h", "layers"], 3),
        ("model.layers.3.self_attn.q_proj", "h", None),
        ("layers.2.q_proj", "layers", 2),
        ("layers.2.q_proj", None, None),  # PEFT's pattern needs a part before the layer list
        ("model.layers.3", None, None),  # and one after the index
    ],
)
def test_layer_index_reads_names_as_peft_does(module: str, pattern: object, index: int | None) -> None:
    assert layer_index(module, pattern) == index  # type: ignore[arg-type]
    if pattern is None:  # PEFT 0.21's own expressions, safe with these plain names
        match = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", module)
    else:
        tries = (
            re.match(rf"(?:^|.*?\.){p}\.(?P<idx>\d+)\.", module)
            for p in ([pattern] if isinstance(pattern, str) else pattern)
        )
        match = next((m for m in tries if m), None)
    assert (int(match["idx"]) if match else None) == index


def test_layers_to_transform_is_resolved_exactly(
    adapter_dir: Path, edit_adapter_config, tiny_base_spec
) -> None:
    edit_adapter_config(
        adapter_dir, target_modules=["q_proj", "v_proj"], layers_to_transform=[1], layers_pattern="layers"
    )
    config = read_adapter_config(adapter_dir)
    assert is_targeted(config, "model.layers.1.self_attn.q_proj") is True
    assert is_targeted(config, "model.layers.0.self_attn.q_proj") is False
    kwargs = peft_lora_kwargs(inspect_adapter(adapter_dir), list(tiny_base_spec.module_shapes))
    assert kwargs["target_modules"] == ["model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj"]


def test_a_catastrophic_target_pattern_is_judged_and_resolved_quickly(
    adapter_dir: Path, edit_adapter_config, tiny_base_spec
) -> None:
    """`(.*)*\\.(q_proj|...)` selects exactly the adapter's modules, and `re` would take minutes on each
    module it does not select (the norms, the embedding): judged and resolved here in well under a second."""
    targets = "q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj"
    edit_adapter_config(adapter_dir, target_modules=rf"(.*)*\.({targets})", rank_pattern={r"(.*)*\.zzz": 2})
    result: dict[str, object] = {}

    def judge() -> None:
        files = inspect_adapter(adapter_dir)
        result["mismatches"] = find_mismatches(files, tiny_base_spec)
        result["kwargs"] = peft_lora_kwargs(files, list(tiny_base_spec.module_shapes))

    thread = threading.Thread(target=judge, daemon=True)
    thread.start()
    thread.join(30)  # generous: it takes milliseconds; `re` would take hours for the whole base
    assert not thread.is_alive(), "evaluating the config's patterns did not finish"
    assert result["mismatches"] == []
    kwargs = result["kwargs"]
    assert isinstance(kwargs, dict) and len(kwargs["target_modules"]) == 14 and kwargs["rank_pattern"] == {}
    assert all(isinstance(name, str) and "*" not in name for name in kwargs["target_modules"])
