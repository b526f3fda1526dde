"""Fine-tuning jobs and their events, kept in the database so that a restart keeps the list and history.

A job moves `validating_files → queued → running → succeeded | failed | cancelled`, each step a
conditional update (`transition`), so that a cancel and the end of a training cannot both win. What a
restart finds: queued jobs are queued again; a job that was `running` when the server stopped is
`failed` with that reason (training is not resumed: the worker process died with the server).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal

from ..errors import NotFoundError
from .database import Database, encode, new_id

Status = Literal["validating_files", "queued", "running", "succeeded", "failed", "cancelled"]
Level = Literal["info", "warn", "error"]
ACTIVE: tuple[Status, ...] = ("validating_files", "queued", "running")
TERMINAL: tuple[Status, ...] = ("succeeded", "failed", "cancelled")
STOPPED_WHILE_RUNNING = (
    "the server stopped while this job was training (the training process stopped with it); create a "
    "new job to train again"
)


@dataclass(frozen=True)
class Event:
    """What happened to a job, in OpenAI's event shape: `type` "message" or "metrics" (with `data`)."""

    message: str
    level: Level = "info"
    type: Literal["message", "metrics"] = "message"
    data: dict[str, Any] | None = None


@dataclass(frozen=True)
class EventRecord:
    id: str
    job_id: str
    created_at: int
    level: Level
    type: Literal["message", "metrics"]
    message: str
    data: dict[str, Any] | None


@dataclass(frozen=True)
class JobRecord:
    id: str
    created_at: int
    status: Status
    model: str  # the base model's id
    adapter_name: str  # `fine_tuned_model` once the job has succeeded
    training_file: str
    validation_file: str | None
    suffix: str | None
    seed: int
    hyperparameters: dict[str, Any]  # OpenAI's: n_epochs, batch_size, learning_rate_multiplier
    options: dict[str, Any]  # hotlora's training options (TrainConfig names)
    metadata: dict[str, str] | None
    error: dict[str, Any] | None  # {"code", "message", "param"} of a failed job
    finished_at: int | None
    trained_tokens: int | None
    result: dict[str, Any] | None  # the final step and losses of a job that succeeded


def _record(cls: type, row: dict[str, Any]) -> Any:
    return cls(**{f.name: row[f.name] for f in fields(cls)})


class JobStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    def create(self, **job: Any) -> JobRecord:
        """A new job, `validating_files`, from the fields of `JobRecord` that describe the request (its
        `id` included: its adapter's name is made from it)."""
        row = {"created_at": int(time.time()), "status": "validating_files", **job}
        columns = list(row)
        values = [encode(v) if isinstance(v, dict) else v for v in row.values()]
        with self._db.transaction() as conn:
            conn.execute(
                f"INSERT INTO jobs ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})", values
            )
            self._insert_event(conn, job["id"], Event(f"Validating training file: {job['training_file']}"))
        return self.get(job["id"])

    def get(self, job_id: str) -> JobRecord:
        rows = self._db.query("SELECT * FROM jobs WHERE id = ?", (job_id,))
        if not rows:
            raise NotFoundError(
                f"no fine-tuning job with id '{job_id[:128]}'",
                param="fine_tuning_job_id",
                code="job_not_found",
            )
        return _record(JobRecord, rows[0])

    def page(self, after: str | None, limit: int) -> tuple[list[JobRecord], bool]:
        """A page of jobs, newest first, after the job `after`."""
        page = self._db.page("jobs", "1", (), after, limit, newest_first=True)
        if page is None:
            raise NotFoundError(f"no fine-tuning job with id '{after}'", param="after", code="job_not_found")
        rows, more = page
        return [_record(JobRecord, r) for r in rows], more

    def transition(
        self,
        job_id: str,
        to: Status,
        *,
        only_from: Sequence[Status],
        event: Event | None = None,
        **changes: Any,
    ) -> bool:
        """Move a job to `to` if its status is one of `only_from`, with `changes` to its other columns
        and `event` logged; False (and nothing changed) when it was not."""
        if to in TERMINAL:
            changes.setdefault("finished_at", int(time.time()))
        sets = ["status = ?", *(f"{column} = ?" for column in changes)]
        values = [to, *(encode(v) if isinstance(v, dict) else v for v in changes.values())]
        with self._db.transaction() as conn:
            cursor = conn.execute(
                f"UPDATE jobs SET {', '.join(sets)} WHERE id = ? AND status IN ({', '.join('?' * len(only_from))})",
                [*values, job_id, *only_from],
            )
            if cursor.rowcount and event is not None:
                self._insert_event(conn, job_id, event)
        return bool(cursor.rowcount)

    def add_event(self, job_id: str, event: Event) -> None:
        with self._db.transaction() as conn:
            self._insert_event(conn, job_id, event)

    def events(self, job_id: str, after: str | None, limit: int) -> tuple[list[EventRecord], bool]:
        """A page of a job's events, newest first (OpenAI's order), after the event `after`."""
        self.get(job_id)
        page = self._db.page("events", "job_id = ?", (job_id,), after, limit, newest_first=True)
        if page is None:
            raise NotFoundError(
                f"no event with id '{after}' in this job", param="after", code="event_not_found"
            )
        rows, more = page
        return [_record(EventRecord, r) for r in rows], more

    def recover(self) -> list[str]:
        """At start: fail the jobs a stopped server left `running`; the ids of the jobs still waiting to
        train, oldest first (a job left `validating_files` had been validated: it is queued)."""
        running = self._db.query("SELECT id FROM jobs WHERE status = 'running'")
        error = {"code": "server_restarted", "message": STOPPED_WHILE_RUNNING, "param": None}
        for row in running:
            self.transition(
                row["id"],
                "failed",
                only_from=("running",),
                event=Event(f"The job failed: {STOPPED_WHILE_RUNNING}", level="error"),
                error=error,
            )
        waiting = self._db.query(
            "SELECT id FROM jobs WHERE status IN ('validating_files', 'queued') ORDER BY seq ASC"
        )
        return [row["id"] for row in waiting]

    @staticmethod
    def _insert_event(conn: Any, job_id: str, event: Event) -> None:
        conn.execute(
            "INSERT INTO events (id, job_id, created_at, level, type, message, data) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                new_id("ftevent"),
                job_id,
                int(time.time()),
                event.level,
                event.type,
                event.message,
                encode(event.data),
            ),
        )
