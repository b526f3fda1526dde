"""Training data: TRL's three row formats, read from JSONL and checked line by line.

- `{"messages": [{"role": ..., "content": ...}, ...]}` — a conversation; the loss is on assistant turns.
- `{"prompt": ..., "completion": ...}` — the loss is on the completion. Both strings (plain text, no chat
  template: use the adapter with /v1/completions), or both lists of messages (conversational: the prompt
  goes through the chat template, the completion is the assistant's reply; use it with /v1/chat/completions).
- `{"text": ...}` — plain text; the loss is on all of it (style adapters, /v1/completions).

Every row of a file must have the same format (the first row decides). Other keys are ignored, as TRL does.
The trainer checks its `--data` with these rules and the server checks an uploaded fine-tuning file with
the same ones, so a file the server accepted is one the trainer reads: they live here, beside the store
both share, torch-free.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

Format = Literal["messages", "prompt_completion", "conversational_prompt_completion", "text"]
CHAT_FORMATS: tuple[Format, ...] = ("messages", "conversational_prompt_completion")
ROLES = ("system", "user", "assistant")
MAX_REPORTED = 10  # problems listed in one error; the rest are counted

Problem = tuple[int | None, str]  # (1-based line, or None for the whole file; what is wrong)


class InvalidDatasetError(Exception):
    """The dataset is malformed; the message names each bad line (1-based) and what is wrong with it."""

    def __init__(self, path: str, problems: list[Problem], *, more: int = 0) -> None:
        self.path = path
        self.problems = problems
        self.more = more
        lines = [
            f"{path}:{line}: {what}" if line is not None else f"{path}: {what}" for line, what in problems
        ]
        if more:
            lines.append(f"... and {more} more problem(s)")
        super().__init__("the dataset is not usable:\n  " + "\n  ".join(lines))


@dataclass(frozen=True)
class Row:
    """One training example: its 1-based line in the file (0 for built-in data) and its fields."""

    line: int
    data: dict[str, Any]


@dataclass(frozen=True)
class Parsed:
    """A checked file: its format, how many rows it has, and the rows themselves unless they were not kept."""

    format: Format
    count: int
    rows: list[Row] = field(default_factory=list)


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
    if fmt is not None and family(found) != family(fmt):
        return found, [
            f"this row is in the {family(found)} format but the file's first row is {family(fmt)}: "
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


def parse_jsonl(lines: Iterable[bytes], source: str, *, keep_rows: bool = True) -> Parsed:
    """Parse and check JSONL lines; `InvalidDatasetError` lists every bad line (up to `MAX_REPORTED`).

    With `keep_rows=False` only the format and the count are kept, so checking a large upload holds one
    row at a time.
    """
    fmt: Format | None = None
    rows: list[Row] = []
    count = 0
    problems: list[Problem] = []
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
        count += 1
        if keep_rows:
            rows.append(Row(number, value))
    if problems:
        raise InvalidDatasetError(source, problems[:MAX_REPORTED], more=max(0, len(problems) - MAX_REPORTED))
    if fmt is None or not count:
        raise InvalidDatasetError(source, [(None, "the file has no rows: expected one JSON object per line")])
    return Parsed(fmt, count, rows)


def family(fmt: Format) -> str:
    """The format as its keys name it: formats of one family may share a file, others may not."""
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
