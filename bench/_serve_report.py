"""serve_bench's tables: every workload's figures, the c=1 time per output token, and the targets."""

from __future__ import annotations

from _load_gaps import LoadGap
from _workloads import CONCURRENCY, SYSTEMS, Skipped, Summary

Row = Summary | LoadGap | Skipped


def results_table(rows: list[Row]) -> list[str]:
    lines = [
        "| system | workload | c | requests | tokens/request | output tok/s | TTFT p50 (s) | TTFT p95 (s) "
        "| ITL p50 (ms) | ITL p95 (ms) | evictions / loads |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for row in rows:
        if isinstance(row, Skipped):
            lines.append(f"| {SYSTEMS[row.system]} | skipped: {row.reason} | | | | | | | | | |")
            continue
        if isinstance(row, LoadGap):
            continue
        churn = f"{row.churn[0]} / {row.churn[1]}" if row.churn else ""
        lines.append(
            f"| {SYSTEMS[row.system]} | {row.label} | {row.concurrency} | {row.requests} "
            f"| {row.tokens_per_request:.1f} | {row.tokens_per_s:.1f} | {row.ttft[0]:.2f} | {row.ttft[1]:.2f} "
            f"| {row.itl[0] * 1000:.0f} | {row.itl[1] * 1000:.0f} | {churn} |"
        )
    return lines


def tpot_table(rows: list[Row]) -> list[str]:
    """Time per output token of the c=1 rows."""
    lines = [
        "| system | workload | TPOT mean (ms) | TPOT p50 (ms) | TPOT p95 (ms) |",
        "|---|---|--:|--:|--:|",
    ]
    for row in rows:
        if isinstance(row, Summary) and row.concurrency == 1:
            mean, p50, p95 = (value * 1000 for value in row.tpot)
            lines.append(f"| {SYSTEMS[row.system]} | {row.label} | {mean:.1f} | {p50:.1f} | {p95:.1f} |")
    return lines


def targets_table(rows: list[Row]) -> list[str]:
    """The serving targets, each from this run's rows: value, goal, PASS/FAIL (n/a when a row is missing)."""
    by_key = {(r.system, r.label, r.concurrency): r for r in rows if isinstance(r, Summary)}
    c = CONCURRENCY
    hot_base1, hot_base, hot_adapters = (
        ("hotlora", "base", 1),
        ("hotlora", "base", c),
        ("hotlora", "8 adapters", c),
    )
    other1, other = ("hotlora-other", "base", 1), ("hotlora-other", "base", c)
    slots_adapters, slots_blends = ("hotlora-slots", "8 adapters", c), ("hotlora-slots", "4 blends", c)
    ratios = [
        (f"hotlora c={c} 8 adapters / hotlora c={c} base", hot_adapters, hot_base, 0.8),
        (f"hotlora, 8 slots: c={c} 4 blends / c={c} 8 adapters", slots_blends, slots_adapters, 0.8),
        ("hotlora c=1 / hotlora, other 4-bit path c=1", hot_base1, other1, 4.0),
        (f"hotlora c={c} base / hotlora, other 4-bit path c={c}", hot_base, other, 2.0),
        (f"hotlora c={c} 8 adapters / naive", hot_adapters, ("naive", "8 adapters", c), 5.0),
        (f"hotlora c={c} base / transformers serve c={c}", hot_base, ("transformers", "base", c), 1.3),
        ("hotlora c=1 / transformers serve c=1", hot_base1, ("transformers", "base", 1), 1.3),
        ("hotlora c=1 / llama.cpp server c=1", hot_base1, ("llamacpp", "base", 1), 0.5),
    ]
    lines = ["| target (output tok/s ratio or latency) | value | goal | result |", "|---|--:|--:|---|"]
    for name, top, bottom, goal in ratios:
        if top in by_key and bottom in by_key:
            value = by_key[top].tokens_per_s / by_key[bottom].tokens_per_s
            lines.append(f"| {name} | {value:.2f}x | ≥ {goal}x | {'PASS' if value >= goal else 'FAIL'} |")
        else:
            lines.append(f"| {name} | | ≥ {goal}x | n/a (not run) |")
    for conc in (c, 1):  # what a grammar costs: the target at c=16, a figure at c=1
        plain = by_key.get(("hotlora-structured", "base", conc))
        constrained = by_key.get(("hotlora-structured", "base, json_schema", conc))
        name = f"response_format: hotlora c={conc} base, json_schema / c={conc} base"
        if plain and constrained:
            value = constrained.tokens_per_s / plain.tokens_per_s
            verdict = ("PASS" if value >= 0.85 else "FAIL") if conc == c else "info"
            lines.append(f"| {name} | {value:.2f}x | {'≥ 0.85x' if conc == c else '(cost)'} | {verdict} |")
        elif conc == c:
            lines.append(f"| {name} | | ≥ 0.85x | n/a (not run) |")
    for conc in (1, c):  # what the guarantee costs: not a target, a figure to choose the flag by
        kept, dropped = by_key.get(("hotlora", "base", conc)), by_key.get(("hotlora-variant", "base", conc))
        if kept and dropped:
            value = kept.tokens_per_s / dropped.tokens_per_s
            name = f"batch invariance: hotlora c={conc} base / --no-batch-invariant c={conc}"
            lines.append(f"| {name} | {value:.2f}x | (cost) | info |")
    worst = max((r.ttft[1] for k, r in by_key.items() if k[0] == "hotlora" and k[2] == c), default=None)
    if worst is None:
        lines.append(f"| hotlora TTFT p95, worst c={c} workload | | ≤ 1 s | n/a (not run) |")
    else:
        verdict = "PASS" if worst <= 1.0 else "FAIL"
        lines.append(f"| hotlora TTFT p95, worst c={c} workload | {worst:.2f} s | ≤ 1 s | {verdict} |")
    return lines
