"""hotlora's engine requests as vLLM's OpenAI requests, and vLLM's stream chunks as hotlora's events.

hotlora asks vLLM for a stream always (with usage): one way to read every answer, and `serving.py` turns
the events into a whole response or hotlora's own chunks, as for the built-in engine. Tool calls are read
by hotlora from the text (`--tool-call-parser`), so vLLM gets the tools for the template only.
"""

from __future__ import annotations

import json
from typing import Any

from ..types import (
    ChoiceDelta,
    FinishReason,
    GenerationEvent,
    GenerationRequest,
    TemplateMessage,
    TokenLogprob,
    TopLogprob,
    Usage,
)

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


def vllm_request(request: GenerationRequest, model: str) -> tuple[str, dict[str, Any]]:
    """The route and body that ask vLLM for `request` on `model` (the base's or a LoRA's name)."""
    s = request.sampling
    body: dict[str, Any] = {
        "model": model,
        "n": request.n,
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": s.max_tokens,
        "temperature": s.temperature,
        "top_p": s.top_p,
        "top_k": s.top_k,
        "min_p": s.min_p,
        "repetition_penalty": s.repetition_penalty,
        "seed": s.seed,
        "stop": list(s.stop) or None,
        "presence_penalty": s.presence_penalty,
        "frequency_penalty": s.frequency_penalty,
        "logit_bias": {str(token): bias for token, bias in s.logit_bias} or None,
        "min_tokens": s.min_tokens,
        "ignore_eos": s.ignore_eos,
    }
    if request.structured is not None:
        schema = request.structured.json_schema
        body["response_format"] = (
            {"type": "json_object"}
            if schema is None
            else {"type": "json_schema", "json_schema": {"name": "output", "schema": json.loads(schema)}}
        )
    if request.messages is not None:
        body["messages"] = [_openai_message(m) for m in request.messages]
        if request.tools:
            body["tools"] = list(request.tools)
        if s.logprobs:
            body["logprobs"] = True
            body["top_logprobs"] = s.top_logprobs
        path = CHAT
    else:
        body["prompt"] = request.prompt or ""
        if s.logprobs:
            body["logprobs"] = s.top_logprobs
        path = COMPLETIONS
    return path, {k: v for k, v in body.items() if v is not None}


def _openai_message(message: TemplateMessage) -> dict[str, Any]:
    """A template message back in OpenAI's shape: a call's arguments as JSON text."""
    out = dict(message)
    if "tool_calls" in out:
        out["tool_calls"] = [
            {**call, "function": {**call["function"], "arguments": _text(call["function"]["arguments"])}}
            for call in out["tool_calls"]
        ]
    return out


def _text(arguments: object) -> str:
    return arguments if isinstance(arguments, str) else json.dumps(arguments)


def events(chunk: dict[str, Any]) -> list[GenerationEvent]:
    """hotlora's events for one vLLM chunk: a delta per choice with text, logprobs or an end; the usage
    chunk (no choices) as `Usage`."""
    out: list[GenerationEvent] = []
    for choice in chunk.get("choices") or []:
        delta = choice.get("delta")
        text = (delta or {}).get("content") or "" if delta is not None else choice.get("text") or ""
        logprobs = _logprobs(choice.get("logprobs"))
        finish = _finish(choice.get("finish_reason"))
        if text or logprobs or finish:
            out.append(ChoiceDelta(choice["index"], text, logprobs, finish))
    usage = chunk.get("usage")
    if usage and not chunk.get("choices"):
        out.append(Usage(usage["prompt_tokens"], usage["completion_tokens"]))
    return out


def _finish(reason: str | None) -> FinishReason | None:
    if reason is None:
        return None
    return "length" if reason == "length" else "stop"


def _logprobs(data: dict[str, Any] | None) -> list[TokenLogprob]:
    if not data:
        return []
    if "content" in data:  # chat's shape
        return [
            TokenLogprob(
                token=item["token"],
                logprob=item["logprob"],
                bytes=item.get("bytes") or list(item["token"].encode()),
                top_logprobs=[
                    TopLogprob(t["token"], t["logprob"], t.get("bytes") or list(t["token"].encode()))
                    for t in item.get("top_logprobs") or []
                ],
            )
            for item in data["content"] or []
        ]
    tops = data.get("top_logprobs") or [None] * len(data.get("tokens") or [])
    return [  # the legacy completions shape
        TokenLogprob(
            token=token,
            logprob=logprob,
            bytes=list(token.encode()),
            top_logprobs=[TopLogprob(t, lp, list(t.encode())) for t, lp in (top or {}).items()],
        )
        for token, logprob, top in zip(data["tokens"], data["token_logprobs"], tops, strict=True)
    ]
