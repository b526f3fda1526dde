"""vLLM's `POST /tokenize` and `POST /detokenize` (its `serving_tokenization.py`): a body to the engine's
request, and the engine's answer to the response. The engine tokenizes in a worker thread."""

from __future__ import annotations

from .. import protocol as p
from ..types import EngineClient, TokenizeRequest
from .chat_tools import template_tools
from .serving import blend_target, template_messages


async def tokenize(engine: EngineClient, body: p.TokenizeRequest) -> p.TokenizeResponse:
    base = engine.served_model_name
    request = TokenizeRequest(
        model=body.model or base,
        messages=template_messages(body.messages) if body.messages else None,
        tools=template_tools([tool.function for tool in body.tools or ()]),
        prompt=body.prompt,
        add_generation_prompt=body.add_generation_prompt,
        add_special_tokens=body.special_tokens(),
        blend=blend_target(body, base),
    )
    result = await engine.tokenize(request, token_strs=bool(body.return_token_strs))
    return p.TokenizeResponse(
        count=len(result.tokens),
        max_model_len=result.max_model_len,
        tokens=result.tokens,
        token_strs=result.token_strs,
    )


async def detokenize(engine: EngineClient, body: p.DetokenizeRequest) -> p.DetokenizeResponse:
    base = engine.served_model_name
    text = await engine.detokenize(body.model or base, body.tokens, blend_target(body, base))
    return p.DetokenizeResponse(prompt=text)
