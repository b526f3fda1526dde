"""Datasets: TRL's three row formats, read from JSONL and validated before any model loads.

- `{"messages": [{"role": ..., "content": ...}, ...]}` — a conversation; the loss is on assistant turns.
- `{"prompt": ..., "completion": ...}` — the loss is on the completion. Both strings (plain text, no chat
  template: use the adapter with /v1/completions), or both lists of messages (conversational: the prompt
  goes through the chat template, the completion is the assistant's reply; use it with /v1/chat/completions).
- `{"text": ...}` — plain text; the loss is on all of it (style adapters, /v1/completions).

Every row of a file must have the same format (the first row decides). Other keys are ignored, as TRL does.
Torch-free: this module only reads and checks.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .errors import DatasetError

Format = Literal["messages", "prompt_completion", "conversational_prompt_completion", "text"]
ROLES = ("system", "user", "assistant")
MAX_REPORTED = 10  # problems listed in one error; the rest are counted

FORMAT_KEYS = {
    "messages": "'messages'",
    "prompt_completion": "'prompt' and 'completion'",
    "conversational_prompt_completion": "'prompt' and 'completion'",
    "text": "'text'",
}


@dataclass(frozen=True)
class Row:
    """One training example: its 1-based line in the file (0 for built-in data) and its fields."""

    line: int
    data: dict[str, Any]


@dataclass
class Dataset:
    """Validated rows of one format, with what the manifest records about where they came from."""

    format: Format
    rows: list[Row]
    source: str  # a path, or "task:piglatin"
    sha256: str
    size_bytes: int
    eval_rows: list[Row] = field(default_factory=list)

    @property
    def chat(self) -> bool:
        """Whether the rows go through the chat template (so the adapter is used with chat completions)."""
        return self.format in ("messages", "conversational_prompt_completion")

    def split(self, eval_split: float, seed: int) -> Dataset:
        """Move a random `eval_split` fraction of the rows (at least one) to `eval_rows`; 0 keeps them all."""
        if eval_split <= 0 or self.eval_rows:
            return self
        if len(self.rows) < 2:
            raise DatasetError(
                self.source, [(None, f"--eval-split needs at least 2 rows, the file has {len(self.rows)}")]
            )
        rows = list(self.rows)
        random.Random(seed).shuffle(rows)
        n_eval = min(len(rows) - 1, max(1, round(len(rows) * eval_split)))
        eval_rows = sorted(rows[:n_eval], key=lambda r: r.line)
        train_rows = sorted(rows[n_eval:], key=lambda r: r.line)
        return Dataset(self.format, train_rows, self.source, self.sha256, self.size_bytes, eval_rows)


def detect_format(row: dict[str, Any]) -> Format | None:
    """The format a row is written in, judged by its keys; None when it has none of TRL's keys."""
    if "messages" in row:
        return "messages"
    if "prompt" in row or "completion" in row:
        if isinstance(row.get("prompt"), list) or isinstance(row.get("completion"), list):
            return "conversational_prompt_completion"
        return "prompt_completion"
    if "text" in row:
        return "text"
    return None


def check_row(row: Any, fmt: Format | None) -> tuple[Format | None, list[str]]:
    """(the row's format, what is wrong with it); `fmt` is the file's format (None: this row decides)."""
    if not isinstance(row, dict):
        return None, [f"expected a JSON object, found {_json_type(row)}"]
    found = detect_format(row)
    if found is None:
        keys = ", ".join(repr(k) for k in list(row)[:6]) or "none"
        return None, [
            "no 'messages', 'prompt'/'completion' or 'text' field (found keys: "
            f"{keys}); see TRL's dataset formats"
        ]
    if fmt is not None and _family(found) != _family(fmt):
        return found, [
            f"this row is in the {_family(found)} format but the file's first row is {_family(fmt)}: "
            "use one format per file"
        ]
    if fmt is not None and found != fmt:
        kind = "lists of messages" if fmt == "conversational_prompt_completion" else "strings"
        return found, [f"'prompt' and 'completion' must be {kind}, as in the file's first row"]
    if found == "messages":
        return found, _check_messages(row["messages"], "messages", need_assistant=True)
    if found == "text":
        return found, _check_text(row, "text")
    problems = [f"missing {key!r}" for key in ("prompt", "completion") if key not in row]
    if problems:
        return found, problems
    if found == "prompt_completion":
        return found, _check_text(row, "prompt", allow_empty=True) + _check_text(row, "completion")
    problems = _check_messages(row["prompt"], "prompt", need_assistant=False)
    problems += _check_messages(row["completion"], "completion", need_assistant=True)
    if not problems and any(m["role"] != "assistant" for m in row["completion"]):
        problems.append("'completion' must hold only assistant messages")
    return found, problems


def parse_jsonl(lines: Iterable[bytes], source: str) -> tuple[Format, list[Row]]:
    """Parse and validate JSONL lines; `DatasetError` lists every bad line (up to `MAX_REPORTED`)."""
    fmt: Format | None = None
    rows: list[Row] = []
    problems: list[tuple[int | None, str]] = []
    for number, raw in enumerate(lines, start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            problems.append((number, f"not UTF-8 text ({e.reason} at byte {e.start})"))
            continue
        if not text.strip():
            continue  # blank lines are allowed
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            problems.append((number, f"not valid JSON: {e.msg} (column {e.colno})"))
            continue
        found, row_problems = check_row(value, fmt)
        if row_problems:
            problems += [(number, p) for p in row_problems]
            continue
        if fmt is None:
            fmt = found
        rows.append(Row(number, value))
    if problems:
        raise DatasetError(source, problems[:MAX_REPORTED], more=max(0, len(problems) - MAX_REPORTED))
    if fmt is None or not rows:
        raise DatasetError(source, [(None, "the file has no rows: expected one JSON object per line")])
    return fmt, rows


def load_jsonl(path: Path) -> Dataset:
    """Read and validate a JSONL dataset file."""
    path = Path(path)
    try:
        content = path.read_bytes()
    except FileNotFoundError:
        raise DatasetError(str(path), [(None, "no such file")]) from None
    except IsADirectoryError:
        raise DatasetError(str(path), [(None, "is a folder, expected a .jsonl file")]) from None
    except OSError as e:
        raise DatasetError(str(path), [(None, f"cannot read it: {e.strerror}")]) from None
    fmt, rows = parse_jsonl(content.splitlines(), str(path))
    return Dataset(fmt, rows, str(path), hashlib.sha256(content).hexdigest(), len(content))


def _family(fmt: Format) -> str:
    return {"messages": "'messages'", "text": "'text'"}.get(fmt, "'prompt'/'completion'")


def _check_text(row: dict[str, Any], key: str, *, allow_empty: bool = False) -> list[str]:
    value = row.get(key)
    if not isinstance(value, str):
        return [f"{key!r} must be a string, found {_json_type(value)}"]
    if not allow_empty and not value.strip():
        return [f"{key!r} is empty"]
    return []


def _check_messages(messages: Any, key: str, *, need_assistant: bool) -> list[str]:
    if not isinstance(messages, list):
        return [f"{key!r} must be a list of messages, found {_json_type(messages)}"]
    if not messages:
        return [f"{key!r} is empty"]
    problems: list[str] = []
    for i, message in enumerate(messages):
        where = f"{key}[{i}]"
        if not isinstance(message, dict):
            problems.append(
                f"{where} must be an object with 'role' and 'content', found {_json_type(message)}"
            )
            continue
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            problems.append(f"{where}.role must be one of {', '.join(ROLES)}, found {role!r}")
        elif role == "system" and (i > 0 or key == "completion"):
            problems.append(f"{where}: a system message may only come first")
        if not isinstance(content, str):
            problems.append(f"{where}.content must be a string, found {_json_type(content)}")
        elif role == "assistant" and not content.strip():
            problems.append(f"{where}: the assistant's content is empty (nothing to learn)")
    if need_assistant and not problems and not any(m.get("role") == "assistant" for m in messages):
        problems.append(f"{key!r} has no assistant message: there is nothing to train on")
    return problems


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__
    )


def rows_from(records: Sequence[dict[str, Any]], source: str) -> Dataset:
    """A validated dataset from in-memory rows (built-in tasks, tests); lines are the 1-based positions."""
    encoded = [json.dumps(r, ensure_ascii=False).encode() for r in records]
    fmt, rows = parse_jsonl(encoded, source)
    content = b"\n".join(encoded) + b"\n"
    return Dataset(fmt, rows, source, hashlib.sha256(content).hexdigest(), len(content))
