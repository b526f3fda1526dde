"""The fine-tuning calls as plans (see `_core`): files (`/v1/files`) and jobs (`/v1/fine_tuning/jobs`).

The server speaks OpenAI's fine-tuning API; these are its typed helpers, with hotlora's training options
(`hotlora=`, by PEFT's and TRL's names) and `jobs.wait`, which polls until a job has ended.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any, Literal

from . import errors
from ._config import Config
from ._core import base_model
from ._plan import Plan, Sleep
from ._request import call, request, segment
from .fine_tuning_types import File, FileDeleted, FineTuningJob, JobCheckpoint, JobEvent, Page

FileInput = str | os.PathLike[str] | bytes | IO[bytes]
JOBS = "/v1/fine_tuning/jobs"


def _page_params(after: str | None, limit: int | None, **more: str | None) -> dict[str, str]:
    given = {"after": after, "limit": str(limit) if limit is not None else None, **more}
    return {key: value for key, value in given.items() if value is not None}


def _content(file: FileInput, filename: str | None) -> tuple[str, bytes]:
    if isinstance(file, bytes):
        return filename or "upload.jsonl", file
    if isinstance(file, str | os.PathLike):
        path = Path(file)
        return filename or path.name, path.read_bytes()
    return filename or Path(str(getattr(file, "name", "upload.jsonl"))).name, file.read()


# -- files ---------------------------------------------------------------------------------------------------


def upload_file(config: Config, file: FileInput, *, filename: str | None = None) -> Plan[File]:
    """Upload a JSONL training file (a path, bytes or a binary file object) for fine-tuning. The server
    checks every line with the trainer's rules: a bad file raises `BadRequestError` naming its lines."""
    name, content = _content(file, filename)
    return (
        yield from call(
            config, File, "POST", "/v1/files", files={"file": (name, content)}, data={"purpose": "fine-tune"}
        )
    )


def list_files(
    config: Config,
    *,
    after: str | None = None,
    limit: int | None = None,
    order: Literal["asc", "desc"] | None = None,
) -> Plan[Page[File]]:
    """The uploaded files, newest first unless `order="asc"`."""
    params = _page_params(after, limit, order=order)
    return (yield from call(config, Page[File], "GET", "/v1/files", params=params))


def get_file(config: Config, file_id: str) -> Plan[File]:
    return (yield from call(config, File, "GET", f"/v1/files/{segment(file_id)}"))


def file_content(config: Config, file_id: str) -> Plan[bytes]:
    """The file as it was uploaded."""
    response = yield from request(config, "GET", f"/v1/files/{segment(file_id)}/content")
    return response.content


def delete_file(config: Config, file_id: str) -> Plan[FileDeleted]:
    """Delete a file (`ConflictError` while a job that has not ended uses it)."""
    return (yield from call(config, FileDeleted, "DELETE", f"/v1/files/{segment(file_id)}"))


# -- jobs ----------------------------------------------------------------------------------------------------


def create_job(
    config: Config,
    training_file: str,
    *,
    validation_file: str | None = None,
    suffix: str | None = None,
    seed: int | None = None,
    n_epochs: int | None = None,
    batch_size: int | None = None,
    learning_rate_multiplier: float | None = None,
    hotlora: Mapping[str, Any] | None = None,
    metadata: Mapping[str, str] | None = None,
    model: str | None = None,
) -> Plan[FineTuningJob]:
    """Start training an adapter of the served base (`model`: asked of the server when left out) on an
    uploaded file. `hotlora` holds the trainer's options by PEFT's and TRL's names (`r`, `lora_alpha`,
    `target_modules`, `max_steps`, `max_length`, `eval_split`, `qlora`, ...). Its adapter, once the job
    has succeeded, is `job.fine_tuned_model`."""
    if model is None:
        model = yield from base_model(config)
    given = {
        "n_epochs": n_epochs,
        "batch_size": batch_size,
        "learning_rate_multiplier": learning_rate_multiplier,
    }
    hyperparameters = {key: value for key, value in given.items() if value is not None}
    body: dict[str, Any] = {
        "model": model,
        "training_file": training_file,
        "method": {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}},
    }
    optional = {"validation_file": validation_file, "suffix": suffix, "seed": seed, "metadata": metadata}
    body.update({key: value for key, value in optional.items() if value is not None})
    if hotlora:
        body["hotlora"] = dict(hotlora)
    return (yield from call(config, FineTuningJob, "POST", JOBS, json=body))


def list_jobs(
    config: Config, *, after: str | None = None, limit: int | None = None
) -> Plan[Page[FineTuningJob]]:
    """The jobs, newest first."""
    return (yield from call(config, Page[FineTuningJob], "GET", JOBS, params=_page_params(after, limit)))


def get_job(config: Config, job_id: str) -> Plan[FineTuningJob]:
    return (yield from call(config, FineTuningJob, "GET", f"{JOBS}/{segment(job_id)}"))


def cancel_job(config: Config, job_id: str) -> Plan[FineTuningJob]:
    """Cancel a job: a waiting one at once; a training one stops, and nothing is registered."""
    return (yield from call(config, FineTuningJob, "POST", f"{JOBS}/{segment(job_id)}/cancel"))


def list_events(
    config: Config, job_id: str, *, after: str | None = None, limit: int | None = None
) -> Plan[Page[JobEvent]]:
    """A job's events, newest first: progress messages, and metrics (`train_loss`, `valid_loss`, `step`)."""
    path = f"{JOBS}/{segment(job_id)}/events"
    return (yield from call(config, Page[JobEvent], "GET", path, params=_page_params(after, limit)))


def list_checkpoints(
    config: Config, job_id: str, *, after: str | None = None, limit: int | None = None
) -> Plan[Page[JobCheckpoint]]:
    """The adapter a succeeded job registered, with its final metrics (none for other jobs)."""
    path = f"{JOBS}/{segment(job_id)}/checkpoints"
    return (yield from call(config, Page[JobCheckpoint], "GET", path, params=_page_params(after, limit)))


def wait_for_job(
    config: Config, job_id: str, timeout: float = 3600.0, *, interval: float = 1.0
) -> Plan[FineTuningJob]:
    """Poll a job until it has ended and return it (check `status`: succeeded, failed or cancelled);
    `JobNotDoneError` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        job: FineTuningJob = yield from get_job(config, job_id)
        left = deadline - time.monotonic()
        if job.done:
            return job
        if left <= 0:
            raise errors.JobNotDoneError(
                f"job '{job_id}' has not ended after {timeout:g} s ({job.status})", job=job
            )
        yield Sleep(min(interval, left))
