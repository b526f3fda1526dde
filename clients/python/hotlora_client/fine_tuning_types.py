"""Typed models of the fine-tuning API's answers: uploaded files, jobs, their events and checkpoints, and
the pages lists come in. Like every answer model, they accept fields they do not know."""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from .types import _Wire

__all__ = ["File", "FileDeleted", "FineTuningJob", "JobCheckpoint", "JobError", "JobEvent", "Page"]

T = TypeVar("T")


class Page(_Wire, Generic[T]):
    """One page of a list: `data`, and `has_more` (ask again with `after=page.last_id`)."""

    data: list[T]
    has_more: bool = False
    first_id: str | None = None
    last_id: str | None = None


class File(_Wire):
    """An uploaded fine-tuning file (checked when it was uploaded)."""

    id: str
    object: str = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: str | None = None


class FileDeleted(_Wire):
    id: str
    object: str = "file"
    deleted: bool


class JobError(_Wire):
    code: str
    message: str
    param: str | None = None


class FineTuningJob(_Wire):
    """A fine-tuning job. `status`: validating_files, queued, running, then succeeded, failed or cancelled;
    once it has succeeded, `fine_tuned_model` is the new adapter's name, already servable."""

    id: str
    object: str = "fine_tuning.job"
    created_at: int
    status: str
    model: str
    training_file: str
    validation_file: str | None = None
    fine_tuned_model: str | None = None
    finished_at: int | None = None
    error: JobError | None = None
    hyperparameters: dict[str, Any] = {}
    seed: int | None = None
    trained_tokens: int | None = None
    metadata: dict[str, str] | None = None
    user_provided_suffix: str | None = None
    hotlora: dict[str, Any] = {}

    @property
    def done(self) -> bool:
        """Whether it has ended (succeeded, failed or cancelled)."""
        return self.status in ("succeeded", "failed", "cancelled")


class JobEvent(_Wire):
    """What happened to a job; `type` "metrics" events carry `data` (`step`, `train_loss`, `valid_loss`, ...)."""

    id: str
    object: str = "fine_tuning.job.event"
    created_at: int
    level: str
    message: str
    type: str | None = None
    data: dict[str, Any] | None = None


class JobCheckpoint(_Wire):
    """The adapter a job registered (`fine_tuned_model_checkpoint`), with its final metrics."""

    id: str
    object: str = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    metrics: dict[str, Any]
    step_number: int
