"""OpenAI's fine-tuning routes: `/v1/files` and `/v1/fine_tuning/jobs`, thin over `ServingFineTuning`."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Form, Query, UploadFile
from fastapi.responses import Response

from .. import protocol as p
from .openapi import Responses
from .serving_fine_tuning import ServingFineTuning

FILE_CONTENT: Responses = {
    200: {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}
}
After = Annotated[str | None, Query(max_length=128)]


def build_fine_tuning_router(serving: ServingFineTuning) -> APIRouter:
    router = APIRouter(prefix="/v1")  # in the route paths: metrics label requests by them

    @router.post("/files")
    async def create_file(file: UploadFile, purpose: Annotated[str, Form(max_length=64)]) -> p.FileObject:
        content = await file.read(serving.max_file_bytes + 1)  # one byte more tells it is too large
        return await serving.create_file(file.filename or "", content, purpose)

    @router.get("/files")
    async def list_files(
        after: After = None,
        limit: Annotated[int, Query(ge=1, le=10000)] = 10000,
        order: Literal["asc", "desc"] = "desc",
        purpose: Annotated[str | None, Query(max_length=64)] = None,
    ) -> p.FileList:
        return await serving.list_files(after, limit, order, purpose)

    @router.get("/files/{file_id}")
    async def get_file(file_id: str) -> p.FileObject:
        return await serving.get_file(file_id)

    @router.get("/files/{file_id}/content", response_class=Response, responses=FILE_CONTENT)
    async def file_content(file_id: str) -> Response:
        return Response(await serving.file_content(file_id), media_type="application/octet-stream")

    @router.delete("/files/{file_id}")
    async def delete_file(file_id: str) -> p.FileDeleted:
        return await serving.delete_file(file_id)

    @router.post("/fine_tuning/jobs")
    async def create_job(body: p.JobCreateRequest) -> p.FineTuningJob:
        return await serving.create_job(body)

    @router.get("/fine_tuning/jobs")
    async def list_jobs(after: After = None, limit: Annotated[int, Query(ge=1, le=100)] = 20) -> p.JobList:
        return await serving.list_jobs(after, limit)

    @router.get("/fine_tuning/jobs/{fine_tuning_job_id}")
    async def get_job(fine_tuning_job_id: str) -> p.FineTuningJob:
        return await serving.get_job(fine_tuning_job_id)

    @router.post("/fine_tuning/jobs/{fine_tuning_job_id}/cancel")
    async def cancel_job(fine_tuning_job_id: str) -> p.FineTuningJob:
        return await serving.cancel_job(fine_tuning_job_id)

    @router.get("/fine_tuning/jobs/{fine_tuning_job_id}/events")
    async def list_events(
        fine_tuning_job_id: str, after: After = None, limit: Annotated[int, Query(ge=1, le=1000)] = 20
    ) -> p.JobEventList:
        return await serving.list_events(fine_tuning_job_id, after, limit)

    @router.get("/fine_tuning/jobs/{fine_tuning_job_id}/checkpoints")
    async def list_checkpoints(
        fine_tuning_job_id: str, after: After = None, limit: Annotated[int, Query(ge=1, le=100)] = 10
    ) -> p.JobCheckpointList:
        return await serving.list_checkpoints(fine_tuning_job_id, after, limit)

    return router
