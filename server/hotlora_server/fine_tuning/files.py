"""Uploaded fine-tuning files: checked with the trainer's own rules, then kept under `$HOTLORA_HOME`.

A file is accepted only if the trainer would read it (`hotlora_adapters.training_data`, TRL's formats),
so a bad line is a 400 naming it at upload rather than a failed job minutes later. The content is kept
as sent, one private file per upload (`files/<id>.jsonl`); its row in the database says what it holds.
"""

from __future__ import annotations

import io
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hotlora_adapters.fsutil import write_file_synced
from hotlora_adapters.private import make_private_dirs
from hotlora_adapters.training_data import CHAT_FORMATS, InvalidDatasetError, parse_jsonl

from ..errors import ConflictError, InvalidRequestError, NotFoundError
from .database import Database, new_id

PURPOSE = "fine-tune"
MAX_FILENAME = 255


@dataclass(frozen=True)
class FileRecord:
    id: str
    filename: str
    bytes: int
    created_at: int
    purpose: str
    format: str  # TRL's: messages, prompt_completion, conversational_prompt_completion, text
    rows: int

    @property
    def chat(self) -> bool:
        """Whether its rows go through the chat template (an adapter for chat completions)."""
        return self.format in CHAT_FORMATS

    @classmethod
    def of(cls, row: dict[str, Any]) -> FileRecord:
        return cls(**{k: v for k, v in row.items() if k != "seq"})


class FileStore:
    """The uploaded files: their content in `folder`, their records in `db`."""

    def __init__(self, db: Database, folder: Path) -> None:
        self._db = db
        self.folder = make_private_dirs(folder)

    def path(self, file_id: str) -> Path:
        return self.folder / f"{file_id}.jsonl"

    def add(self, filename: str, content: bytes) -> FileRecord:
        """Check `content` as training data and keep it; a bad file is a 400 listing its bad lines."""
        shown = os.path.basename(filename.replace("\\", "/"))[:MAX_FILENAME] or "upload.jsonl"
        try:
            parsed = parse_jsonl(io.BytesIO(content), shown, keep_rows=False)
        except InvalidDatasetError as e:
            raise InvalidRequestError(str(e), param="file", code="invalid_file_format") from None
        record = FileRecord(
            new_id("file"), shown, len(content), int(time.time()), PURPOSE, parsed.format, parsed.count
        )
        write_file_synced(self.path(record.id), content)
        with self._db.transaction() as conn:
            conn.execute(
                "INSERT INTO files (id, filename, bytes, created_at, purpose, format, rows) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (record.id, record.filename, record.bytes, record.created_at, record.purpose)
                + (record.format, record.rows),
            )
        return record

    def get(self, file_id: str) -> FileRecord:
        rows = self._db.query("SELECT * FROM files WHERE id = ?", (file_id,))
        if not rows:
            raise NotFoundError(f"no file with id '{file_id[:128]}'", param="file_id", code="file_not_found")
        return FileRecord.of(rows[0])

    def page(
        self, after: str | None, limit: int, *, newest_first: bool, purpose: str | None
    ) -> tuple[list[FileRecord], bool]:
        where, params = ("purpose = ?", [purpose]) if purpose is not None else ("1", [])
        page = self._db.page("files", where, params, after, limit, newest_first=newest_first)
        if page is None:
            raise NotFoundError(f"no file with id '{after}'", param="after", code="file_not_found")
        rows, more = page
        return [FileRecord.of(r) for r in rows], more

    def delete(self, file_id: str) -> None:
        """Forget a file and remove its content; refused while a job that has not started yet, or is
        training, reads it."""
        self.get(file_id)
        with self._db.transaction() as conn:
            user = conn.execute(
                "SELECT id, status FROM jobs WHERE (training_file = ? OR validation_file = ?) "
                "AND status IN ('validating_files', 'queued', 'running') LIMIT 1",
                (file_id, file_id),
            ).fetchone()
            if user is not None:
                raise ConflictError(
                    f"file '{file_id}' is used by fine-tuning job '{user['id']}' ({user['status']}): cancel "
                    "it first, or wait until it ends",
                    param="file_id",
                    code="file_in_use",
                )
            conn.execute("DELETE FROM files WHERE id = ?", (file_id,))
        self.path(file_id).unlink(missing_ok=True)
