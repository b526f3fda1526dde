"""vLLM's tokenizer routes, `POST /tokenize` and `POST /detokenize` (at the root, as vLLM serves them).

The engine tokenizes in a worker thread with its own copy of the tokenizer, and bounds the input as it
bounds a prompt: nothing here runs the tokenizer on the event loop.
"""

from __future__ import annotations

from fastapi import APIRouter

from .. import protocol as p
from ..types import EngineClient
from . import convert as c


def build_tokenize_router(engine: EngineClient) -> APIRouter:
    router = APIRouter()

    @router.post("/tokenize", response_model_exclude_none=True)
    async def tokenize(body: p.TokenizeRequest) -> p.TokenizeResponse:
        request = c.tokenize_request(body, engine.served_model_name)
        result = await engine.tokenize(request, token_strs=bool(body.return_token_strs))
        return p.TokenizeResponse(
            count=len(result.tokens), max_model_len=result.max_model_len, tokens=result.tokens, token_strs=result.token_strs
        )

    @router.post("/detokenize")
    async def detokenize(body: p.DetokenizeRequest) -> p.DetokenizeResponse:
        model, blend = c.detokenize_target(body, engine.served_model_name)
        return p.DetokenizeResponse(prompt=await engine.detokenize(model, body.tokens, blend))

    return router
