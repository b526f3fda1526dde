"""The SDK's logic, written once for `Client` and `AsyncClient`, and free of I/O.

Every API call is a *plan*: a generator that yields the I/O it needs — `Send` a request, `Sleep` — and is
resumed with the outcome (the response, or the transport error to raise in it) until it returns the
call's result. `Client` performs those steps with blocking httpx and `time.sleep`, `AsyncClient` with
async httpx and `asyncio.sleep`; everything else lives in the SDK's I/O-free modules: configuration
(`_config`), plans and their runner (`_plan`), a request with its retries, errors and parsing
(`_request`), Server-Sent Events (`_stream`), and here, each API call.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel

from . import errors
from ._config import Config
from ._plan import Plan, Runner, Send, Sleep, Streaming
from ._request import M, call, parse, request, segment
from ._stream import C, StreamDecoder, stream_transport_errors
from ._structured import parsed_completion, response_format
from .types import (
    Adapter,
    AdapterDeleted,
    Blend,
    BlendMethod,
    ChatCompletion,
    ChatCompletionChunk,
    Completion,
    DetokenizeResponse,
    Health,
    Message,
    Messages,
    Model,
    ModelT,
    ParsedChatCompletion,
    TokenizeResponse,
)

__all__ = [  # the API calls, and what `_client` needs to run them
    "base_model",
    "blend_adapters",
    "blend_model",
    "chat",
    "chat_messages",
    "complete",
    "detokenize",
    "generate",
    "generation_body",
    "get_adapter",
    "get_model",
    "health",
    "list_adapters",
    "list_models",
    "load_adapter",
    "parse_chat",
    "target_model",
    "tokenize",
    "unload_adapter",
    "wait_until_ready",
    "C",
    "Config",
    "Plan",
    "Runner",
    "Send",
    "Sleep",
    "StreamDecoder",
    "Streaming",
    "stream_transport_errors",
]


# -- health and models -------------------------------------------------------------------------------------


class _ModelList(BaseModel):
    data: list[Model]


class _AdapterList(BaseModel):
    data: list[Adapter]


def health(config: Config) -> Plan[Health]:
    """`GET /health`: the server is up with its model loaded (while it loads: 503, `ServerError`)."""
    return (yield from call(config, Health, "GET", "/health"))


def list_models(config: Config) -> Plan[list[Model]]:
    """The base model and every servable adapter (`parent` is the base's id)."""
    return (yield from call(config, _ModelList, "GET", "/v1/models")).data


def get_model(config: Config, model_id: str) -> Plan[Model]:
    """One model by id (`NotFoundError` when there is none)."""
    return (yield from call(config, Model, "GET", f"/v1/models/{segment(model_id, safe='/')}"))


def base_model(config: Config) -> Plan[str]:
    """The served base model's id (asked once, then remembered)."""
    if config.base_model is None:
        models = yield from list_models(config)
        base = next((m.id for m in models if m.parent is None), None)
        if base is None:
            raise errors.APIError("the server lists no base model in /v1/models")
        config.base_model = base
    return config.base_model


# -- generation ------------------------------------------------------------------------------------------------


def blend_model(blend: Blend) -> str:
    """`{"a": 0.7, "b": 0.3}` → the model string `"a*0.7+b*0.3"` the server blends from."""
    pairs = list(blend.items()) if isinstance(blend, Mapping) else [(name, weight) for name, weight in blend]
    if not pairs:
        raise ValueError("a blend needs at least one adapter")
    for name, _ in pairs:
        if not isinstance(name, str) or not name or "*" in name or "+" in name:
            raise ValueError(f"{name!r} is not an adapter name")
    return "+".join(f"{name}*{float(weight)!r}" for name, weight in pairs)


def target_model(model: str | None, adapter: str | None, blend: Blend | None) -> str | None:
    """The `model` string of the one target given (None: no target, the base model)."""
    given = [
        name
        for name, value in (("model", model), ("adapter", adapter), ("blend", blend))
        if value is not None
    ]
    if len(given) > 1:
        raise ValueError(f"give at most one of model, adapter and blend (got {', '.join(given)})")
    return blend_model(blend) if blend is not None else model if model is not None else adapter


def chat_messages(messages: Messages) -> list[dict[str, Any]]:
    if isinstance(messages, str):
        return [{"role": "user", "content": messages}]
    out: list[dict[str, Any]] = []
    for message in messages:
        if isinstance(message, BaseModel):
            message = message.model_dump(exclude_none=True)
        if not isinstance(message, Mapping):
            raise TypeError(
                f"a message is a mapping like {{'role': 'user', 'content': '...'}}, got {message!r}"
            )
        out.append(dict(message))
    return out


def generation_body(config: Config, params: Mapping[str, Any], **fields: Any) -> Plan[dict[str, Any]]:
    """The JSON body of a chat or text completion: the target, `fields`, the options, then `extra_body`."""
    options = {key: value for key, value in params.items() if value is not None}
    extra = options.pop("extra_body", None) or {}
    if "response_format" in options:
        options["response_format"] = response_format(options["response_format"])
    if isinstance(options.get("logit_bias"), Mapping):  # JSON object keys are strings: token ids as text
        options["logit_bias"] = {str(token): bias for token, bias in options["logit_bias"].items()}
    model = target_model(options.pop("model", None), options.pop("adapter", None), options.pop("blend", None))
    if model is None:
        model = yield from base_model(config)
    return {"model": model, **fields, **options, **extra}


def generate(
    config: Config, path: str, body: dict[str, Any], result: type[M], chunk: type[C]
) -> Plan[M | Streaming[C]]:
    stream = bool(body.get("stream"))
    response = yield from request(config, "POST", path, json=body, stream=stream)
    return Streaming(response, StreamDecoder(chunk, response)) if stream else parse(result, response)


def chat(
    config: Config, messages: Messages, stream: bool, params: Mapping[str, Any]
) -> Plan[ChatCompletion | Streaming[ChatCompletionChunk]]:
    fields: dict[str, Any] = {"messages": chat_messages(messages)}
    if stream:
        fields["stream"] = True
    body = yield from generation_body(config, params, **fields)
    return (yield from generate(config, "/v1/chat/completions", body, ChatCompletion, ChatCompletionChunk))


def parse_chat(
    config: Config, messages: Messages, model: type[ModelT], params: Mapping[str, Any]
) -> Plan[ParsedChatCompletion[ModelT]]:
    """A chat completion whose every choice follows `model`'s JSON schema, parsed into `model`."""
    completion = yield from chat(config, messages, False, {**params, "response_format": model})
    assert isinstance(completion, ChatCompletion)
    return parsed_completion(model, completion)


def complete(
    config: Config, prompt: str, stream: bool, params: Mapping[str, Any]
) -> Plan[Completion | Streaming[Completion]]:
    fields: dict[str, Any] = {"prompt": prompt}
    if stream:
        fields["stream"] = True
    body = yield from generation_body(config, params, **fields)
    return (yield from generate(config, "/v1/completions", body, Completion, Completion))


# -- tokens ----------------------------------------------------------------------------------------------------


def tokenize(
    config: Config,
    text: str | Sequence[Message],
    *,
    model: str | None = None,
    adapter: str | None = None,
    blend: Blend | None = None,
    add_generation_prompt: bool = True,
    add_special_tokens: bool | None = None,
    return_token_strs: bool = False,
) -> Plan[TokenizeResponse]:
    """The server's token ids for `text` (vLLM's `POST /tokenize`). A string is a raw prompt (unlike in
    `chat`); a list of messages is rendered with the chat template, as `chat` sends it — ending with the
    assistant's turn opening unless `add_generation_prompt=False` — so `count` is its `prompt_tokens`.
    `add_special_tokens`: the tokenizer's own BOS/EOS (default: for a prompt, not for messages);
    `return_token_strs=True` fills `token_strs`. The target (`model`, `adapter` or `blend`) defaults to the
    base model; adapters share its tokenizer, and an unknown one raises `NotFoundError`."""
    body: dict[str, Any] = {}
    target = target_model(model, adapter, blend)
    if target is not None:
        body["model"] = target
    if isinstance(text, str):
        body["prompt"] = text
    else:
        body["messages"] = chat_messages(text)
        body["add_generation_prompt"] = add_generation_prompt
    if add_special_tokens is not None:
        body["add_special_tokens"] = add_special_tokens
    if return_token_strs:
        body["return_token_strs"] = True
    return (yield from call(config, TokenizeResponse, "POST", "/tokenize", json=body))


def detokenize(
    config: Config,
    tokens: Sequence[int],
    *,
    model: str | None = None,
    adapter: str | None = None,
    blend: Blend | None = None,
) -> Plan[DetokenizeResponse]:
    """The text of token ids (vLLM's `POST /detokenize`; `.text`). A token id outside the vocabulary
    raises `BadRequestError`; the target is `tokenize`'s."""
    body: dict[str, Any] = {"tokens": list(tokens)}
    target = target_model(model, adapter, blend)
    if target is not None:
        body["model"] = target
    return (yield from call(config, DetokenizeResponse, "POST", "/detokenize", json=body))


# -- adapters --------------------------------------------------------------------------------------------------


def list_adapters(config: Config) -> Plan[list[Adapter]]:
    """Every adapter in the store, with its status, size and manifest."""
    return (yield from call(config, _AdapterList, "GET", "/v1/adapters")).data


def get_adapter(config: Config, name: str) -> Plan[Adapter]:
    """One adapter of the store (`NotFoundError` when there is none)."""
    return (yield from call(config, Adapter, "GET", f"/v1/adapters/{segment(name)}"))


def load_adapter(config: Config, name: str, path: str | os.PathLike[str] | None = None) -> Plan[Adapter]:
    """Make adapter `name` servable now (enabling it again after `unload`); with `path`, first import
    the PEFT adapter folder at `path` — on the server's machine, under a folder it allows — as `name`."""
    body: dict[str, Any] = {"name": name}
    if path is not None:
        body["path"] = os.fspath(path)
    return (yield from call(config, Adapter, "POST", "/v1/adapters", json=body))


def unload_adapter(config: Config, name: str, purge: bool = False) -> Plan[AdapterDeleted]:
    """Unload `name` and disable it (it stays in the store, `load` enables it again; requests for it get
    404 meanwhile); with `purge=True`, delete it from the store instead."""
    params = {"purge": "true"} if purge else None
    return (yield from call(config, AdapterDeleted, "DELETE", f"/v1/adapters/{segment(name)}", params=params))


def blend_adapters(
    config: Config, name: str, weights: Blend, method: BlendMethod = "cat", density: float | None = None
) -> Plan[Adapter]:
    """Save the blend of stored adapters `weights` (`{"a": 0.7, "b": 0.3}`) as a new adapter `name`.
    `method`: "cat" (the exact weighted sum), "linear", "svd", "ties", "dare_linear", "dare_ties" or
    "magnitude_prune" (the last four need `density`). A taken name raises `ConflictError`."""
    pairs = weights.items() if isinstance(weights, Mapping) else weights
    body: dict[str, Any] = {
        "name": name,
        "adapters": [{"name": adapter, "weight": float(weight)} for adapter, weight in pairs],
        "method": method,
    }
    if density is not None:
        body["density"] = density
    return (yield from call(config, Adapter, "POST", "/v1/adapters/blend", json=body))


def wait_until_ready(
    config: Config, name: str, timeout: float = 60.0, *, interval: float = 0.5
) -> Plan[Adapter]:
    """Wait until adapter `name` is servable (resident or available) and return it — e.g. one just copied
    into the store or being trained. Not yet there, disabled or invalid (files still arriving) keep it
    waiting; after `timeout` seconds it raises `AdapterNotReadyError`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            adapter: Adapter | None = yield from get_adapter(config, name)
        except errors.NotFoundError:
            adapter = None
        if adapter is not None and adapter.ready:
            return adapter
        left = deadline - time.monotonic()
        if left <= 0:
            status = adapter.status if adapter else None
            why = f"its status is '{status}'" if status else "it is not in the store"
            if adapter is not None and adapter.error:
                why += f": {adapter.error}"
            raise errors.AdapterNotReadyError(
                f"adapter '{name}' is not ready after {timeout:g} s ({why})",
                name=name,
                status=status,
                error=adapter.error if adapter else None,
            )
        yield Sleep(min(interval, left))
