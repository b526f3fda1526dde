"""Datasets: TRL's three row formats (`hotlora_adapters.training_data`), read from JSONL before any model
loads, and the split into training and evaluation rows.

The rules a row must follow are shared with the server, which checks an uploaded fine-tuning file with
them; here a bad file is a `DatasetError` (a `TrainError`). Torch-free: this module only reads and checks.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hotlora_adapters import training_data
from hotlora_adapters.training_data import CHAT_FORMATS, Format, InvalidDatasetError, Row

from .errors import DatasetError

__all__ = ["Dataset", "Format", "Row", "load_jsonl", "parse_jsonl", "rows_from"]


@dataclass
class Dataset:
    """Validated rows of one format, with what the manifest records about where they came from."""

    format: Format
    rows: list[Row]
    source: str  # a path, or "task:piglatin"
    sha256: str
    size_bytes: int
    eval_rows: list[Row] = field(default_factory=list)
    eval_source: str | None = None  # the file of `eval_rows` when they are not a split of this one

    @property
    def chat(self) -> bool:
        """Whether the rows go through the chat template (so the adapter is used with chat completions)."""
        return self.format in CHAT_FORMATS

    def with_eval(self, evaluation: Dataset) -> Dataset:
        """These rows for training and `evaluation`'s (another file, `--eval-data`) for evaluation; the
        two must be in the same format, as both are encoded the same way."""
        if evaluation.format != self.format:
            raise DatasetError(
                evaluation.source,
                [
                    (
                        None,
                        f"is in the {evaluation.format.replace('_', '/')} format but the training data is "
                        f"in the {self.format.replace('_', '/')} format: use one format for both",
                    )
                ],
            )
        return Dataset(
            self.format,
            self.rows,
            self.source,
            self.sha256,
            self.size_bytes,
            evaluation.rows,
            evaluation.source,
        )

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
    parsed = parse_jsonl(content.splitlines(), str(path))
    return Dataset(parsed.format, parsed.rows, str(path), hashlib.sha256(content).hexdigest(), len(content))


def parse_jsonl(lines: Iterable[bytes], source: str) -> training_data.Parsed:
    """Parse and check JSONL lines by the shared rules; `DatasetError` lists every bad line."""
    try:
        return training_data.parse_jsonl(lines, source)
    except InvalidDatasetError as e:
        raise DatasetError(e.path, e.problems, more=e.more) from None


def rows_from(records: Sequence[dict[str, Any]], source: str) -> Dataset:
    """A validated dataset from in-memory rows (built-in tasks, tests); lines are the 1-based positions."""
    encoded = [json.dumps(r, ensure_ascii=False).encode() for r in records]
    parsed = parse_jsonl(encoded, source)
    content = b"\n".join(encoded) + b"\n"
    return Dataset(parsed.format, parsed.rows, source, hashlib.sha256(content).hexdigest(), len(content))
