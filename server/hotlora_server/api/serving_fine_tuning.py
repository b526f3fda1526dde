"""The fine-tuning API (vLLM's serving split): files and jobs requests in, OpenAI's objects out.

The routes (`api/fine_tuning.py`) only parse; this checks what needs the server's state (the served base,
the files, `--max-lora-rank`), hands the stores' blocking calls to worker threads, and turns their records
into OpenAI's shapes. `fine_tuned_model` is the adapter the job registers: `ft-<suffix>-<8 hex digits of
the job id>` (or `ft-<8 hex digits>`), a valid adapter name, shown once the job has succeeded.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Sequence
from pathlib import Path

from .. import protocol as p
from ..errors import InvalidRequestError, NotFoundError, PayloadTooLargeError, ServiceUnavailableError
from ..fine_tuning import (
    TERMINAL,
    Database,
    Event,
    EventRecord,
    FileRecord,
    FileStore,
    JobRecord,
    JobRunner,
    JobStore,
    Launch,
    new_id,
)
from ..fine_tuning.command import default_threads
from ..settings import Settings
from ..types import EngineClient

MULTIPART_SLACK = 64 << 10  # an upload's body beyond its file: part headers and the `purpose` field


def adapter_name(job_id: str, suffix: str | None) -> str:
    tag = job_id.rsplit("-", 1)[-1][:8]
    return f"ft-{suffix}-{tag}" if suffix else f"ft-{tag}"


class ServingFineTuning:
    def __init__(
        self,
        engine: EngineClient,
        folder: Path,
        launch: Launch,
        *,
        max_concurrent_jobs: int = 1,
        max_file_bytes: int = 64 << 20,
        max_lora_rank: int = 64,
    ) -> None:
        self._engine = engine
        self._db = Database(folder)
        self._files = FileStore(self._db, folder / "files")
        self._jobs = JobStore(self._db)
        self._runner = JobRunner(self._jobs, self._files, engine, launch, max_concurrent_jobs)
        self.max_file_bytes = max_file_bytes
        self._max_rank = max_lora_rank

    @classmethod
    def from_settings(cls, settings: Settings, engine: EngineClient) -> ServingFineTuning:
        launch = Launch(
            home=settings.home,
            adapters_dir=settings.adapters_dir,
            base=settings.model,
            chat_template=settings.chat_template,
            device=settings.device,
            threads=settings.fine_tuning_threads or default_threads(),
        )
        return cls(
            engine,
            settings.fine_tuning_dir,
            launch,
            max_concurrent_jobs=settings.max_concurrent_jobs,
            max_file_bytes=int(settings.max_file_bytes),
            max_lora_rank=settings.max_lora_rank,
        )

    @property
    def max_upload_bytes(self) -> int:
        """The largest body `POST /v1/files` takes: the largest file and its multipart wrapping."""
        return self.max_file_bytes + MULTIPART_SLACK

    async def start(self) -> None:
        await self._runner.start()

    async def stop(self) -> None:
        """Stop the trainings (failing their jobs); the app may start again (the database stays open)."""
        await self._runner.stop()

    # -- files ---------------------------------------------------------------------------------------

    async def create_file(self, filename: str, content: bytes, purpose: str) -> p.FileObject:
        if purpose != "fine-tune":
            raise InvalidRequestError(
                f"purpose {purpose[:64]!r} is not supported: this server keeps files for fine-tuning only "
                "(purpose 'fine-tune')",
                param="purpose",
            )
        if len(content) > self.max_file_bytes:
            raise PayloadTooLargeError(
                f"the file is larger than {self.max_file_bytes} bytes, this server's limit (--max-file-bytes)",
                param="file",
            )
        return _file(await asyncio.to_thread(self._files.add, filename, content))

    async def list_files(self, after: str | None, limit: int, order: str, purpose: str | None) -> p.FileList:
        files, more = await asyncio.to_thread(
            self._files.page, after, limit, newest_first=order == "desc", purpose=purpose
        )
        return p.FileList(
            data=[_file(f) for f in files], has_more=more, first_id=_first(files), last_id=_last(files)
        )

    async def get_file(self, file_id: str) -> p.FileObject:
        return _file(await asyncio.to_thread(self._files.get, file_id))

    async def file_content(self, file_id: str) -> bytes:
        await asyncio.to_thread(self._files.get, file_id)
        try:
            return await asyncio.to_thread(self._files.path(file_id).read_bytes)
        except FileNotFoundError:  # deleted meanwhile
            raise NotFoundError(
                f"no file with id '{file_id[:128]}'", param="file_id", code="file_not_found"
            ) from None

    async def delete_file(self, file_id: str) -> p.FileDeleted:
        await asyncio.to_thread(self._files.delete, file_id)
        return p.FileDeleted(id=file_id, deleted=True)

    # -- jobs ----------------------------------------------------------------------------------------

    async def create_job(self, body: p.JobCreateRequest) -> p.FineTuningJob:
        if not self._engine.is_ready():  # its name and its adapters are known once it has loaded
            raise ServiceUnavailableError("the model is still loading; retry shortly", retry_after=2)
        base = self._engine.served_model_name
        if body.model != base:
            raise InvalidRequestError(
                f"model '{body.model[:200]}' cannot be fine-tuned here: this server trains adapters of the "
                f"base model it serves, '{base}'",
                param="model",
                code="model_not_available",
            )
        options = body.hotlora.given()
        if options.get("r", 0) > self._max_rank:
            raise InvalidRequestError(
                f"hotlora.r {options['r']} is larger than this server serves (--max-lora-rank {self._max_rank})",
                param="hotlora.r",
            )
        training = await self._training_file(body.training_file, "training_file")
        if body.validation_file is not None:
            validation = await self._training_file(body.validation_file, "validation_file")
            if validation.format != training.format:
                raise InvalidRequestError(
                    f"the validation file is in the {validation.format} format and the training file in the "
                    f"{training.format} format: use one format for both",
                    param="validation_file",
                )
        if options.get("eval_split") and training.rows < 2:
            raise InvalidRequestError(
                "hotlora.eval_split needs a training file of at least 2 rows", param="hotlora.eval_split"
            )
        job_id = new_id("ftjob")
        job = await asyncio.to_thread(
            self._jobs.create,
            id=job_id,
            model=base,
            adapter_name=adapter_name(job_id, body.suffix),
            training_file=training.id,
            validation_file=body.validation_file,
            suffix=body.suffix,
            seed=body.seed if body.seed is not None else secrets.randbelow(2**31),
            hyperparameters=body.resolved_hyperparameters().model_dump(
                include={*p.Hyperparameters.model_fields}
            ),
            options=options,
            metadata=body.metadata,
        )
        await asyncio.to_thread(
            self._jobs.transition,
            job.id,
            "queued",
            only_from=("validating_files",),
            event=Event("Files validated, moving job to queued state"),
        )
        self._runner.submit(job.id)
        return await self.get_job(job.id)

    async def list_jobs(self, after: str | None, limit: int) -> p.JobList:
        jobs, more = await asyncio.to_thread(self._jobs.page, after, limit)
        return p.JobList(
            data=[_job(j) for j in jobs], has_more=more, first_id=_first(jobs), last_id=_last(jobs)
        )

    async def get_job(self, job_id: str) -> p.FineTuningJob:
        return _job(await asyncio.to_thread(self._jobs.get, job_id))

    async def cancel_job(self, job_id: str) -> p.FineTuningJob:
        job = await asyncio.to_thread(self._jobs.get, job_id)
        if job.status in TERMINAL:
            raise InvalidRequestError(
                f"job '{job_id}' has already ended ({job.status}): only a job that has not can be cancelled",
                param="fine_tuning_job_id",
                code="job_not_cancellable",
            )
        await self._runner.cancel(job)
        return await self.get_job(job_id)

    async def list_events(self, job_id: str, after: str | None, limit: int) -> p.JobEventList:
        events, more = await asyncio.to_thread(self._jobs.events, job_id, after, limit)
        return p.JobEventList(
            data=[_event(e) for e in events], has_more=more, first_id=_first(events), last_id=_last(events)
        )

    async def list_checkpoints(self, job_id: str, after: str | None, limit: int) -> p.JobCheckpointList:
        """The adapter a job registered, as its one checkpoint: the trainer's intermediate checkpoints
        are not kept (a job is never resumed)."""
        job = await asyncio.to_thread(self._jobs.get, job_id)
        checkpoints = [_checkpoint(job)] if job.status == "succeeded" and job.result is not None else []
        if after is not None:
            if after not in {c.id for c in checkpoints}:
                raise NotFoundError(f"no checkpoint with id '{after}' in this job", param="after")
            checkpoints = []
        shown = checkpoints[:limit]
        return p.JobCheckpointList(data=shown, has_more=False, first_id=_first(shown), last_id=_last(shown))

    async def _training_file(self, file_id: str, param: str) -> FileRecord:
        try:
            return await asyncio.to_thread(self._files.get, file_id)
        except NotFoundError:
            raise InvalidRequestError(
                f"no file with id '{file_id[:128]}': upload it first (POST /v1/files, purpose 'fine-tune')",
                param=param,
                code="invalid_file",
            ) from None


def _first(items: Sequence[FileRecord | JobRecord | EventRecord | p.JobCheckpoint]) -> str | None:
    return items[0].id if items else None


def _last(items: Sequence[FileRecord | JobRecord | EventRecord | p.JobCheckpoint]) -> str | None:
    return items[-1].id if items else None


def _file(record: FileRecord) -> p.FileObject:
    return p.FileObject(
        id=record.id,
        bytes=record.bytes,
        created_at=record.created_at,
        filename=record.filename,
        purpose="fine-tune",
    )


def _job(job: JobRecord) -> p.FineTuningJob:
    hyperparameters = p.Hyperparameters(**job.hyperparameters)
    return p.FineTuningJob(
        id=job.id,
        created_at=job.created_at,
        error=p.JobError(**job.error) if job.error else None,
        fine_tuned_model=job.adapter_name if job.status == "succeeded" else None,
        finished_at=job.finished_at,
        hyperparameters=hyperparameters,
        method=p.Method(type="supervised", supervised=p.SupervisedMethod(hyperparameters=hyperparameters)),
        model=job.model,
        seed=job.seed,
        status=job.status,
        trained_tokens=job.trained_tokens,
        training_file=job.training_file,
        validation_file=job.validation_file,
        metadata=job.metadata,
        user_provided_suffix=job.suffix,
        hotlora=job.options,
    )


def _event(event: EventRecord) -> p.JobEvent:
    return p.JobEvent(
        id=event.id,
        created_at=event.created_at,
        level=event.level,
        message=event.message,
        type=event.type,
        data=event.data,
    )


def _checkpoint(job: JobRecord) -> p.JobCheckpoint:
    result = job.result or {}
    step = int(result.get("step") or 0)
    return p.JobCheckpoint(
        id=f"ftckpt-{job.id.rsplit('-', 1)[-1]}",
        created_at=job.finished_at or job.created_at,
        fine_tuned_model_checkpoint=job.adapter_name,
        fine_tuning_job_id=job.id,
        metrics=p.CheckpointMetrics(
            step=step, train_loss=result.get("train_loss"), valid_loss=result.get("valid_loss")
        ),
        step_number=step,
    )
