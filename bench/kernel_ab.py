"""The CPU kernels of a git revision against the working tree's: the same bits, and which is faster.

    python bench/kernel_ab.py [--base HEAD] [--repeats 30] [--threads 1]

Builds `server/hotlora_server/engine/cpu/kernels.c` as it is at `--base` and as it is in the working tree
(each with the flags the server uses), then, at SmolLM2-135M's shapes, for one decoder layer's work:

- the 4-bit products (`gemm_q4`) of its seven 4-bit layers (q, k, v, o, gate, up, down; NF4, blocks of
  64), and its attention (`attention`: 9 heads over 3 KV heads of 64, 256 cached keys; 16 rows are
  left-padded, each row masked to its own length);
- checks that both libraries give the same bits, for a decode step of 1 and 16 rows and a 40-row prefill
  — a change meant to be faster, not different, must pass this (the report says which shapes differ);
- times both for 1 row and for 16 rows, the two libraries interleaved, each first in turn, so that other
  load on the machine weighs on both alike; the ratio is the figure to read.

The markdown goes to stdout, bench/results/kernel_ab-<UTC time>.md and bench/results/kernel_ab-latest.md.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from _common import REPO, machine_header, publish

SOURCE = "server/hotlora_server/engine/cpu/kernels.c"
# SmolLM2-135M: hidden 576, MLP 1536, 9 query heads and 3 key/value heads of 64 -> (out, in) per layer
LAYER = {"q": (576, 576), "k": (192, 576), "v": (192, 576), "o": (576, 576)}
LAYER |= {"gate": (1536, 576), "up": (1536, 576), "down": (576, 1536)}


def build_both(base: str, cache: Path) -> tuple[object, object]:
    from hotlora_server.engine.cpu import kernels_build

    old_source = cache / "base" / "kernels.c"
    old_source.parent.mkdir(parents=True)
    old_source.write_text(
        subprocess.run(
            ["git", "show", f"{base}:{SOURCE}"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout
    )
    old = kernels_build.build(cache / "old", old_source)
    new = kernels_build.build(cache / "new")
    if old is None or new is None:
        raise SystemExit("kernel_ab: the kernels did not compile (see the warnings above)")
    return old, new


def attention_inputs(rows: int, q_len: int, generator: object) -> tuple[object, ...]:
    """Query, key, value, mask and scale for one layer; rows after the first are left-padded."""
    import torch

    keys = 256 if q_len == 1 else q_len
    query = torch.randn(rows, 9, q_len, 64, generator=generator)  # type: ignore[arg-type]
    key, value = (torch.randn(rows, 3, keys, 64, generator=generator) for _ in range(2))  # type: ignore[arg-type]
    mask = torch.ones(rows, 1, q_len, keys, dtype=torch.bool).tril(keys - q_len)
    for r in range(1, rows):
        mask[r, :, :, : r * 7] = False  # padding
    return query, key, value, mask, 0.125


def interleaved(calls: list[object], repeats: int) -> list[float]:
    """Seconds each of the two calls took over `repeats` rounds of ten, either first in turn."""
    spent = [0.0, 0.0]
    for round_ in range(repeats):
        for which in (0, 1) if round_ % 2 else (1, 0):
            started = time.perf_counter()
            for _ in range(10):
                calls[which](which)  # type: ignore[operator]
            spent[which] += (time.perf_counter() - started) / 10
    return spent


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", default="HEAD", help="the git revision to compare against (default HEAD)")
    parser.add_argument("--repeats", type=int, default=30, help="interleaved rounds (default 30)")
    parser.add_argument("--threads", type=int, default=1, help="torch/OpenMP threads for both (default 1)")
    args = parser.parse_args()

    import bitsandbytes.functional as bnbf
    import torch

    torch.set_num_threads(args.threads)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    generator = torch.Generator().manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        old, new = build_both(args.base, Path(tmp))
        weights = {}
        for name, (n, k) in LAYER.items():
            packed, state = bnbf.quantize_4bit(torch.randn(n, k, generator=generator), blocksize=64)
            weights[name] = tuple(
                lib.q4_weight(packed, state.absmax, state.code, 64, n)  # type: ignore[attr-defined]
                for lib in (old, new)
            )
        differ = [
            f"{name} {rows} rows{' prefill' if prefill else ''}"
            for name, (n, k) in LAYER.items()
            for rows, prefill in ((1, False), (16, False), (40, True))
            for x in [torch.randn(rows, k, generator=generator)]
            if not torch.equal(
                old.gemm_q4(x, weights[name][0], prefill),  # type: ignore[attr-defined]
                new.gemm_q4(x, weights[name][1], prefill),  # type: ignore[attr-defined]
            )
        ]
        for rows, q_len in ((1, 1), (16, 1), (3, 40)):
            att = attention_inputs(rows, q_len, generator)
            if not torch.equal(old.attention(*att), new.attention(*att)):  # type: ignore[attr-defined]
                differ.append(f"attention {rows} rows of {q_len} queries")
        rows_out = []
        for rows in (1, 16):
            inputs = {name: torch.randn(rows, k, generator=generator) for name, (_, k) in LAYER.items()}
            att = attention_inputs(rows, 1, generator)
            products = [
                lambda w, lib=lib, inputs=inputs: [lib.gemm_q4(x, weights[n][w]) for n, x in inputs.items()]
                for lib in (old, new)
            ]
            attends = [lambda w, lib=lib, att=att: lib.attention(*att) for lib in (old, new)]
            for label, calls in (("4-bit products", products), ("attention", attends)):
                spent = interleaved(calls, args.repeats)
                per_layer = [s / args.repeats * 1e6 for s in spent]
                rows_out.append(
                    f"| {label} | {rows} | {per_layer[0]:.0f} | {per_layer[1]:.0f} | {spent[0] / spent[1]:.3f} |"
                )
    report = [
        *machine_header("kernel_ab", stamp),
        f"- base: `{args.base}`; threads: {args.threads}; rounds: {args.repeats}",
        "",
        "Bits: " + ("the same for every shape." if not differ else "DIFFERENT for " + ", ".join(differ)),
        "",
        "| kernel | rows | base µs / layer | working tree µs / layer | base / working tree |",
        "|---|--:|--:|--:|--:|",
        *rows_out,
        "",
    ]
    publish("kernel_ab", stamp, "\n".join(report))
    return 0 if not differ else 1


if __name__ == "__main__":
    raise SystemExit(main())
