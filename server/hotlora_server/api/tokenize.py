"""vLLM's tokenizer routes, `POST /tokenize` and `POST /detokenize` (at the root, as vLLM serves them).

The engine tokenizes in a worker thread with its own copy of the tokenizer, and bounds the input as it
bounds a prompt: nothing here runs the tokenizer on the event loop.
"""

from __future__ import annotations

from fastapi import APIRouter

from .. import protocol as p
from ..types import EngineClient
from . import serving_tokenize


def build_tokenize_router(engine: EngineClient) -> APIRouter:
    router = APIRouter()

    @router.post("/tokenize", response_model_exclude_none=True)
    async def tokenize(body: p.TokenizeRequest) -> p.TokenizeResponse:
        return await serving_tokenize.tokenize(engine, body)

    @router.post("/detokenize")
    async def detokenize(body: p.DetokenizeRequest) -> p.DetokenizeResponse:
        return await serving_tokenize.detokenize(engine, body)

    return router
