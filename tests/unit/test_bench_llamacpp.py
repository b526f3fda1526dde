"""serve_bench's llama.cpp reference row where llama-cpp-python is not built (as in CI): a skipped row that
says how to build it, and the target that compares hotlora's c=1 with llama.cpp's."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from _baselines import Unavailable  # noqa: E402
from _llamacpp import bench_llamacpp  # noqa: E402
from _serve_report import results_table, targets_table  # noqa: E402
from _workloads import Skipped, Summary  # noqa: E402

TARGET = "| hotlora c=1 / llama.cpp server c=1 |"


def base_row(system: str, concurrency: int, tokens_per_s: float) -> Summary:
    return Summary(system, "base", concurrency, 12, 64.0, tokens_per_s, (0.1, 0.2), (0.03, 0.04), (0.03,) * 3)


def target_line(rows: list[Skipped | Summary]) -> str:
    return next(line for line in targets_table(list(rows)) if line.startswith(TARGET))


def test_without_its_venv_the_row_is_skipped_naming_the_command_that_builds_it(tmp_path: Path) -> None:
    kernels: dict[str, str] = {}
    with pytest.raises(Unavailable) as raised:
        bench_llamacpp(tmp_path, 1, 8, kernels, python=tmp_path / ".venv-llamacpp" / "bin" / "python")
    assert kernels == {}  # nothing started, nothing reported as served
    table = "\n".join(results_table([Skipped("llamacpp", str(raised.value))]))
    assert "| llama.cpp server (same GGUF, Q4_1; one request at a time) | skipped: no .venv-llamacpp" in table
    assert "`./scripts/dev.sh llamacpp`" in table


@pytest.mark.parametrize(("hotlora", "llamacpp", "shown"), [(30.0, 40.0, "0.75x"), (10.0, 40.0, "0.25x")])
def test_the_targets_give_hotlora_c1_as_a_ratio_of_llamacpp_c1(
    hotlora: float, llamacpp: float, shown: str
) -> None:
    rows = [base_row("hotlora", 1, hotlora), base_row("hotlora", 16, 99.0), base_row("llamacpp", 1, llamacpp)]
    rows.append(base_row("llamacpp", 16, 1.0))  # c=16 has no part in it
    verdict = "PASS" if hotlora / llamacpp >= 0.5 else "FAIL"
    assert target_line(rows) == f"{TARGET} {shown} | ≥ 0.5x | {verdict} |"


def test_the_target_is_not_run_when_llamacpp_was_skipped() -> None:
    rows = [base_row("hotlora", 1, 30.0), Skipped("llamacpp", "no .venv-llamacpp")]
    assert target_line(rows) == f"{TARGET} | ≥ 0.5x | n/a (not run) |"
