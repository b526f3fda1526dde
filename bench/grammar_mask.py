"""The per-token cost of a JSON-schema grammar mask with xgrammar, llguidance and outlines-core.

    pip install xgrammar llguidance outlines-core   # llguidance is a hotlora dependency; the others are not
    python bench/grammar_mask.py [--home DIR] [--repeats 20] [--only xgrammar,llguidance,outlines-core]

With the real SmolLM2 tokenizer (vocabulary 49152), for each library and each schema below:

- setup: the library's view of the tokenizer, built once per model (a server does it once);
- compile: a schema to what a row's matcher starts from (xgrammar's `CompiledGrammar`, llguidance's
  grammar and first matcher, outlines-core's regex and `Index`), without the library's cache;
- per token, over a valid instance of the schema as the model's tokenizer splits it, what a decode step
  adds to one row: fill the row's bitmask, apply it to the row's float32 logits, accept the token.
  Apply is timed twice: with the library's own CPU function, and with hotlora's (`apply_bitmask` in
  `engine/grammar.py`); every library writes the same int32 bitmask. "per token" is fill + hotlora's
  apply + accept: the median, and the 99th percentile over every token of `--repeats` passes.

A second table times ways of applying one bitmask to 49152 float32 logits (torch's `masked_fill`, numpy's
`where`, hotlora's branch-free bit select) for three kinds of mask: few tokens allowed (a structural
position), nearly all (inside a string) and a random half.

The instances use `, ` and `: ` between items, the one-line form every library is configured to emit
(no free whitespace: a small model given free whitespace tends to emit it forever).

The markdown goes to stdout, bench/results/grammar_mask-<UTC time>.md and bench/results/grammar_mask-latest.md.
"""

from __future__ import annotations

import argparse
import json
import os
import timeit
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import REPO, machine_header, model_folder, percentile, publish

from hotlora_server.engine.grammar import apply_bitmask

SCHEMAS: dict[str, tuple[dict[str, Any] | None, Any]] = {
    "flat (3 fields, bounds)": (
        {
            "type": "object",
            "properties": {
                "name": {"type": "string", "maxLength": 40},
                "age": {"type": "integer", "minimum": 0, "maximum": 150},
                "member": {"type": "boolean"},
            },
            "required": ["name", "age", "member"],
            "additionalProperties": False,
        },
        {"name": "Ada Lovelace", "age": 36, "member": True},
    ),
    "nested (objects, arrays, enums)": (
        {
            "type": "object",
            "properties": {
                "customer": {
                    "type": "object",
                    "properties": {"id": {"type": "integer"}, "email": {"type": "string"}},
                    "required": ["id", "email"],
                    "additionalProperties": False,
                },
                "items": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": 5,
                    "items": {
                        "type": "object",
                        "properties": {
                            "sku": {"type": "string", "enum": ["apple", "pear", "plum"]},
                            "qty": {"type": "integer", "minimum": 1, "maximum": 99},
                            "price": {"type": "number", "minimum": 0, "maximum": 1000},
                        },
                        "required": ["sku", "qty", "price"],
                        "additionalProperties": False,
                    },
                },
                "status": {"enum": ["new", "paid", "shipped"]},
            },
            "required": ["customer", "items", "status"],
            "additionalProperties": False,
        },
        {
            "customer": {"id": 1042, "email": "ada@example.com"},
            "items": [{"sku": "pear", "qty": 3, "price": 2.5}, {"sku": "plum", "qty": 12, "price": 0.75}],
            "status": "paid",
        },
    ),
    "wide (16 string fields)": (
        {
            "type": "object",
            "properties": {f"field_{i}": {"type": "string"} for i in range(16)},
            "required": [f"field_{i}" for i in range(16)],
            "additionalProperties": False,
        },
        {f"field_{i}": f"value number {i}" for i in range(16)},
    ),
    "any JSON object (json_object)": (
        None,
        {"title": "Notes", "tags": ["a", "b"], "count": 3, "nested": {"ok": True, "ratio": 0.5}},
    ),
}

ANY_OBJECT = {"type": "object"}  # what outlines-core, which has no built-in JSON grammar, is given


@dataclass
class Cost:
    setup_s: float
    tokens: int
    compile_s: list[float] = field(default_factory=list)  # one per repeat
    fill_us: list[float] = field(default_factory=list)
    own_apply_us: list[float] = field(default_factory=list)
    apply_us: list[float] = field(default_factory=list)  # hotlora's
    accept_us: list[float] = field(default_factory=list)
    total_us: list[float] = field(default_factory=list)  # fill + hotlora's apply + accept


class Matcher:
    """One library's matcher behind the three calls a decode step makes per row."""

    def fill(self, bitmask: torch.Tensor) -> None:
        raise NotImplementedError

    def accept(self, token: int) -> bool:
        raise NotImplementedError

    def done(self) -> bool:
        raise NotImplementedError


Compile = Callable[[str | None], Callable[[], Matcher]]  # schema (None: any object) -> new matcher
Apply = Callable[[torch.Tensor, torch.Tensor], None]


def setup_xgrammar(tokenizer: Any, vocab_size: int) -> tuple[Compile, Apply]:
    import xgrammar as xgr

    info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size)

    class XgrMatcher(Matcher):
        def __init__(self, compiled: Any) -> None:
            self.m = xgr.GrammarMatcher(compiled)

        def fill(self, bitmask: torch.Tensor) -> None:
            self.m.fill_next_token_bitmask(bitmask, 0)

        def accept(self, token: int) -> bool:
            return bool(self.m.accept_token(token))

        def done(self) -> bool:
            return bool(self.m.is_terminated() or self.m.accept_token(tokenizer.eos_token_id))

    def compile_schema(schema: str | None) -> Callable[[], Matcher]:
        compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)
        compiled = (
            compiler.compile_builtin_json_grammar()
            if schema is None
            else compiler.compile_json_schema(schema, any_whitespace=False, strict_mode=True)
        )
        return lambda: XgrMatcher(compiled)

    return compile_schema, xgr.apply_token_bitmask_inplace


def setup_llguidance(tokenizer: Any, vocab_size: int) -> tuple[Compile, Apply]:
    import llguidance as llg
    import llguidance.hf
    import llguidance.torch

    from hotlora_server.engine.grammar import JSON_OPTIONS

    lltok = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size)

    class LlgMatcher(Matcher):
        def __init__(self, matcher: Any) -> None:
            self.m = matcher

        def fill(self, bitmask: torch.Tensor) -> None:
            llguidance.torch.fill_next_token_bitmask(self.m, bitmask, 0)

        def accept(self, token: int) -> bool:
            return bool(self.m.consume_token(token))

        def done(self) -> bool:
            return bool(self.m.is_accepting())

    def compile_schema(schema: str | None) -> Callable[[], Matcher]:
        grammar = llg.LLMatcher.grammar_from_json_schema(
            schema or json.dumps(ANY_OBJECT), defaults=JSON_OPTIONS
        )
        start = llg.LLMatcher(lltok, grammar)  # builds its lexer: the compile proper
        assert not start.is_error(), start.get_error()
        return lambda: LlgMatcher(start.deep_copy())  # as the server gives each row its copy

    return compile_schema, llguidance.torch.apply_token_bitmask_inplace


def setup_outlines_core(tokenizer: Any, vocab_size: int) -> tuple[Compile, Apply]:
    import outlines_core as oc
    from outlines_core.json_schema import build_regex_from_schema
    from outlines_core.kernels.torch import apply_token_bitmask_inplace

    from hotlora_server.engine.text import token_bytes

    pieces: dict[bytes, list[int]] = {}
    special = set(tokenizer.all_special_ids)
    for token_id in range(len(tokenizer)):
        if token_id not in special:
            pieces.setdefault(token_bytes(tokenizer, token_id), []).append(token_id)
    vocabulary = oc.Vocabulary(tokenizer.eos_token_id, pieces)

    class OutlinesMatcher(Matcher):
        def __init__(self, index: Any) -> None:
            self.g = oc.Guide(index)

        def fill(self, bitmask: torch.Tensor) -> None:
            self.g.write_mask_into(bitmask.data_ptr(), bitmask.numel(), bitmask.element_size())

        def accept(self, token: int) -> bool:
            self.g.advance(token)
            return True

        def done(self) -> bool:
            return bool(self.g.is_finished())

    def compile_schema(schema: str | None) -> Callable[[], Matcher]:
        regex = build_regex_from_schema(schema or json.dumps(ANY_OBJECT), r"[ ]?")
        index = oc.Index(regex, vocabulary)
        return lambda: OutlinesMatcher(index)

    return compile_schema, apply_token_bitmask_inplace


LIBRARY_SETUP = {
    "xgrammar": setup_xgrammar,
    "llguidance": setup_llguidance,
    "outlines-core": setup_outlines_core,
}


def measure(name: str, tokenizer: Any, vocab_size: int, repeats: int) -> dict[str, Cost]:
    started = timeit.default_timer()
    compile_schema, own_apply = LIBRARY_SETUP[name](tokenizer, vocab_size)
    setup = timeit.default_timer() - started
    bitmask = torch.full((1, (vocab_size + 31) // 32), -1, dtype=torch.int32)
    logits = torch.randn(1, vocab_size, generator=torch.Generator().manual_seed(0))
    keep = np.empty(vocab_size, dtype=np.int32)
    own_apply(logits.clone(), bitmask)  # a compiled kernel's first call is not a token's cost
    costs: dict[str, Cost] = {}
    for label, (schema, instance) in SCHEMAS.items():
        text = json.dumps(schema) if schema is not None else None
        tokens = tokenizer.encode(json.dumps(instance, separators=(", ", ": ")), add_special_tokens=False)
        cost = Cost(setup, len(tokens))
        for _ in range(repeats):
            started = timeit.default_timer()
            new_matcher = compile_schema(text)
            cost.compile_s.append(timeit.default_timer() - started)
            matcher = new_matcher()
            for token in tokens:
                t0 = timeit.default_timer()
                matcher.fill(bitmask)
                t1 = timeit.default_timer()
                masked = apply_bitmask(logits[0].numpy(), bitmask[0].numpy(), keep)
                t2 = timeit.default_timer()
                accepted = matcher.accept(token)
                t3 = timeit.default_timer()
                own = logits.clone()
                t4 = timeit.default_timer()
                own_apply(own, bitmask)
                t5 = timeit.default_timer()
                if (
                    not accepted
                    or not np.isfinite(masked[token])
                    or not torch.equal(own[0], torch.from_numpy(masked))
                ):
                    raise AssertionError(f"{name}: token {token} of the {label!r} instance")
                cost.fill_us.append((t1 - t0) * 1e6)
                cost.apply_us.append((t2 - t1) * 1e6)
                cost.accept_us.append((t3 - t2) * 1e6)
                cost.total_us.append((t3 - t0) * 1e6)
                cost.own_apply_us.append((t5 - t4) * 1e6)
            if not matcher.done():
                raise AssertionError(f"{name} does not see the {label!r} instance as complete")
        costs[label] = cost
    return costs


def apply_methods(vocab_size: int) -> list[tuple[str, str, float]]:
    """(mask kind, method, median µs) for applying one bitmask to one row of logits."""
    rng = np.random.default_rng(0)
    logits = torch.from_numpy(rng.standard_normal(vocab_size).astype(np.float32))
    words = (vocab_size + 31) // 32
    keep = np.empty(vocab_size, dtype=np.int32)
    kinds = {
        "10 tokens allowed": np.isin(np.arange(vocab_size), rng.choice(vocab_size, 10, replace=False)),
        "all but 1000 allowed": ~np.isin(np.arange(vocab_size), rng.choice(vocab_size, 1000, replace=False)),
        "a random half allowed": rng.random(vocab_size) < 0.5,
    }
    out: list[tuple[str, str, float]] = []
    for kind, allowed in kinds.items():
        padded = np.zeros(words * 32, dtype=bool)
        padded[:vocab_size] = allowed
        bitmask = np.packbits(padded, bitorder="little").view(np.int32)

        def unpacked(bitmask: np.ndarray = bitmask) -> np.ndarray:
            return np.unpackbits(bitmask.view(np.uint8), count=vocab_size, bitorder="little").view(bool)

        methods: dict[str, Callable[[], Any]] = {
            "torch masked_fill": lambda: logits.masked_fill(~torch.from_numpy(unpacked()), float("-inf")),
            "numpy where": lambda: np.where(unpacked(), logits.numpy(), np.float32(-np.inf)),
            "hotlora bit select": lambda bitmask=bitmask: apply_bitmask(logits.numpy(), bitmask, keep),
        }
        for method, run in methods.items():
            runs = timeit.repeat(run, number=200, repeat=7)
            out.append((kind, method, sorted(runs)[len(runs) // 2] / 200 * 1e6))
    return out


def report(
    results: dict[str, dict[str, Cost]], methods: list[tuple[str, str, float]], stamp: str, repeats: int
) -> str:
    lines = machine_header("grammar_mask", stamp)
    lines.append("- libraries: " + ", ".join(f"{name} {version(name)}" for name in results))
    lines.append(f"- repeats: {repeats}; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    lines.append(
        f"- load average (1, 5, 15 min) at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())}"
    )
    lines += [
        "",
        "| library | schema | setup (s) | compile p50 (ms) | tokens | fill p50 (µs) | accept p50 (µs) | "
        "own apply p50 (µs) | hotlora apply p50 (µs) | per token p50 (µs) | per token p99 (µs) |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for name, costs in results.items():
        for label, c in costs.items():
            lines.append(
                f"| {name} | {label} | {c.setup_s:.2f} | {percentile(c.compile_s, 50) * 1e3:.1f} | {c.tokens} | "
                f"{percentile(c.fill_us, 50):.0f} | {percentile(c.accept_us, 50):.0f} | "
                f"{percentile(c.own_apply_us, 50):.0f} | {percentile(c.apply_us, 50):.0f} | "
                f"{percentile(c.total_us, 50):.0f} | {percentile(c.total_us, 99):.0f} |"
            )
    lines += ["", "| mask | method | median (µs) |", "|---|---|--:|"]
    lines += [f"| {kind} | {method} | {us:.0f} |" for kind, method, us in methods]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--home", type=Path, default=REPO / ".pytest_cache" / "hotlora-home")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--only", default=",".join(LIBRARY_SETUP))
    args = parser.parse_args()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_folder(args.home))
    vocab_size = len(tokenizer)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    results = {name: measure(name, tokenizer, vocab_size, args.repeats) for name in args.only.split(",")}
    publish("grammar_mask", stamp, report(results, apply_methods(vocab_size), stamp, args.repeats))


if __name__ == "__main__":
    main()
