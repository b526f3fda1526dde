"""Thin OpenAI routes: FastAPI parses and validates the body, a serving module does the rest.

Each route only wires HTTP to its serving module (`serving_chat.py`, `serving_completions.py`,
`serving_responses.py`, `serving_models.py`): request in, answer or stream out.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sse_starlette import EventSourceResponse

from .. import protocol as p
from ..metrics import Metrics
from ..tools import DEFAULT_TOOL_PARSER
from ..types import EngineClient
from . import serving_models
from .disconnect import cancelled_on_disconnect
from .openapi import streamed
from .serving_chat import ServingChat
from .serving_completions import ServingCompletions
from .serving_responses import ServingResponses


def build_router(
    engine: EngineClient, metrics: Metrics, tool_call_parser: str = DEFAULT_TOOL_PARSER
) -> APIRouter:
    router = APIRouter(prefix="/v1")  # in the route paths: metrics label requests by them
    chat = ServingChat(engine, metrics, tool_call_parser)
    completion = ServingCompletions(engine, metrics)
    responses = ServingResponses(chat)

    @router.get("/models")
    async def list_models() -> p.ModelList:
        return await serving_models.list_models(engine)

    @router.get("/models/{model_id:path}")
    async def get_model(model_id: str) -> p.ModelCard:
        return await serving_models.get_model(engine, model_id)

    @router.post("/chat/completions", response_model=None, responses=streamed(p.ChatCompletion))
    @cancelled_on_disconnect
    async def chat_completions(
        body: p.ChatCompletionRequest, request: Request
    ) -> JSONResponse | EventSourceResponse:
        return await chat.serve(body)

    @router.post("/completions", response_model=None, responses=streamed(p.Completion))
    @cancelled_on_disconnect
    async def completions(body: p.CompletionRequest, request: Request) -> JSONResponse | EventSourceResponse:
        return await completion.serve(body)

    @router.post("/responses", response_model=None, responses=streamed(p.ResponsesResponse, named=True))
    @cancelled_on_disconnect
    async def create_response(
        body: p.ResponsesRequest, request: Request
    ) -> JSONResponse | EventSourceResponse:
        return await responses.serve(body)

    return router
