"""Dataset files: TRL's three formats are recognized, and a malformed file names each bad line."""

from __future__ import annotations

from pathlib import Path

import pytest

from hotlora_trainer import DatasetError
from hotlora_trainer.data import load_jsonl

from support.trainer_data import chat_row, write_jsonl


def test_each_format_is_recognized(tmp_path: Path) -> None:
    cases = {
        "messages": [chat_row("Hi", "Hello")],
        "prompt_completion": [{"prompt": "2+2=", "completion": "4"}],
        "conversational_prompt_completion": [
            {
                "prompt": [{"role": "user", "content": "Hi"}],
                "completion": [{"role": "assistant", "content": "Yo"}],
            }
        ],
        "text": [{"text": "Once upon a time."}],
    }
    for fmt, rows in cases.items():
        dataset = load_jsonl(write_jsonl(tmp_path / f"{fmt}.jsonl", rows + rows))
        assert dataset.format == fmt
        assert [r.line for r in dataset.rows] == [1, 2]
        assert len(dataset.sha256) == 64 and dataset.size_bytes == (tmp_path / f"{fmt}.jsonl").stat().st_size


def test_blank_lines_are_skipped_and_line_numbers_kept(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a"}\n\n   \n{"text": "b"}\n')
    assert [r.line for r in load_jsonl(path).rows] == [1, 4]


def problems_of(tmp_path: Path, rows: list) -> list[tuple[int | None, str]]:
    with pytest.raises(DatasetError) as info:
        load_jsonl(write_jsonl(tmp_path / "bad.jsonl", rows))
    assert "bad.jsonl:" in str(info.value)
    return info.value.problems


def test_malformed_rows_are_named_by_line(tmp_path: Path) -> None:
    problems = problems_of(
        tmp_path,
        [
            chat_row("Hi", "Hello"),  # 1 fine
            '{"messages": [}',  # 2 not JSON
            "[1, 2]",  # 3 not an object
            {"question": "?", "answer": "!"},  # 4 no known field
            {"messages": [{"role": "user", "content": "only a question"}]},  # 5 nothing to train on
            {"messages": [{"role": "robot", "content": "beep"}]},  # 6 unknown role
            {
                "messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "x"}]
            },  # 7 content type
            {
                "messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "  "}]
            },  # 8 empty reply
            {"text": "plain"},  # 9 another format
            {"messages": "hello"},  # 10 not a list
        ],
    )
    by_line = {line: what for line, what in problems}
    assert sorted(by_line) == [2, 3, 4, 5, 6, 7, 8, 9, 10]
    assert "not valid JSON" in by_line[2]
    assert "expected a JSON object, found a list" in by_line[3]
    assert "'question'" in by_line[4] and "'messages'" in by_line[4]
    assert "no assistant message" in by_line[5]
    assert "role must be one of system, user, assistant" in by_line[6] and "'robot'" in by_line[6]
    assert "content must be a string, found a number" in by_line[7]
    assert "empty" in by_line[8]
    assert "one format per file" in by_line[9]
    assert "must be a list of messages" in by_line[10]


def test_prompt_completion_checks(tmp_path: Path) -> None:
    problems = problems_of(
        tmp_path,
        [
            {"prompt": "a", "completion": "b"},
            {"prompt": "a"},  # 2 missing completion
            {"prompt": "a", "completion": ""},  # 3 empty completion
            {"prompt": 1, "completion": "b"},  # 4 prompt not a string
            {
                "prompt": [{"role": "user", "content": "a"}],
                "completion": [{"role": "assistant", "content": "b"}],
            },  # 5
        ],
    )
    by_line = dict(problems)
    assert "missing 'completion'" in by_line[2]
    assert "'completion' is empty" in by_line[3]
    assert "'prompt' must be a string" in by_line[4]
    assert "must be strings" in by_line[5]


def test_conversational_completion_must_be_assistant(tmp_path: Path) -> None:
    problems = problems_of(
        tmp_path,
        [
            {"prompt": [{"role": "user", "content": "a"}], "completion": [{"role": "user", "content": "b"}]},
        ],
    )
    assert problems[0][0] == 1 and "no assistant message" in problems[0][1]


def test_system_message_only_first(tmp_path: Path) -> None:
    row = {
        "messages": [
            {"role": "user", "content": "a"},
            {"role": "system", "content": "s"},
            {"role": "assistant", "content": "b"},
        ]
    }
    assert "may only come first" in problems_of(tmp_path, [row])[0][1]


def test_not_utf8_empty_and_missing_files(tmp_path: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(DatasetError) as info:
        load_jsonl(path)
    assert info.value.problems[0][0] == 2 and "not UTF-8" in info.value.problems[0][1]

    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DatasetError, match="no rows"):
        load_jsonl(empty)
    with pytest.raises(DatasetError, match="no such file"):
        load_jsonl(tmp_path / "missing.jsonl")


def test_many_problems_are_counted_not_all_listed(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as info:
        load_jsonl(write_jsonl(tmp_path / "bad.jsonl", ["nope"] * 25))
    assert len(info.value.problems) == 10
    assert "and 15 more problem(s)" in str(info.value)


def test_eval_split_is_seeded_and_disjoint(tmp_path: Path) -> None:
    dataset = load_jsonl(write_jsonl(tmp_path / "d.jsonl", [{"text": f"row {i}"} for i in range(20)]))
    a, b = dataset.split(0.25, seed=1), dataset.split(0.25, seed=1)
    assert [r.line for r in a.eval_rows] == [r.line for r in b.eval_rows]
    assert len(a.eval_rows) == 5 and len(a.rows) == 15
    assert not {r.line for r in a.eval_rows} & {r.line for r in a.rows}
    assert dataset.split(0.0, seed=1) is dataset
