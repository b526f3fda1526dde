"""The SDK's logic, written once for `Client` and `AsyncClient`, and free of I/O.

Every API call is a *plan*: a generator that yields the I/O it needs — `Send` a request, `Sleep` — and is
resumed with the outcome (the response, or the transport error to raise in it) until it returns the
call's result. `Client` performs those steps with blocking httpx and `time.sleep`, `AsyncClient` with
async httpx and `asyncio.sleep`; everything else lives here and only here: configuration, request
bodies, retries with backoff and `Retry-After`, response parsing, error mapping, adapter polling and the
decoding of Server-Sent Events.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import time
from collections.abc import Generator, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError

from . import errors
from ._version import __version__
from .types import (
    Adapter,
    AdapterDeleted,
    Blend,
    BlendMethod,
    ChatCompletion,
    ChatCompletionChunk,
    Completion,
    Health,
    Messages,
    Model,
    Usage,
)

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)
C = TypeVar("C", ChatCompletionChunk, Completion)

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT = httpx.Timeout(600.0, connect=10.0)  # a long answer on a CPU takes minutes
RETRY_STATUSES = frozenset({429, 503})
# Failures where the request cannot have been processed, or the connection dropped before any answer.
RETRYABLE_TRANSPORT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.RemoteProtocolError)
MAX_RETRY_AFTER = 60.0  # a server asking for a longer wait gets the error (with `retry_after`) at once
BACKOFF_FIRST, BACKOFF_MAX = 0.5, 8.0


# -- configuration -------------------------------------------------------------------------------------


@dataclass
class Config:
    """What a client was built with; environment defaults are read when it is built, never at import."""

    base_url: str
    api_key: str | None
    timeout: httpx.Timeout
    max_retries: int
    base_model: str | None = field(default=None)  # the served base id, looked up once when needed

    @classmethod
    def build(
        cls,
        base_url: str | None,
        api_key: str | None,
        timeout: float | httpx.Timeout | None,
        max_retries: int,
        environ: Mapping[str, str] | None = None,
    ) -> Config:
        env = os.environ if environ is None else environ
        url = (base_url or env.get("HOTLORA_BASE_URL") or DEFAULT_BASE_URL).strip().rstrip("/")
        url = url.removesuffix("/v1")  # the `openai` SDK's base URL works here too
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http:// or https:// URL, got {url!r}")
        if api_key is None:
            api_key = env.get("HOTLORA_API_KEY") or None
        if not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries must be an integer >= 0, got {max_retries!r}")
        if timeout is None:
            timeout = DEFAULT_TIMEOUT
        elif not isinstance(timeout, httpx.Timeout):
            timeout = httpx.Timeout(timeout)
        return cls(base_url=url, api_key=api_key or None, timeout=timeout, max_retries=max_retries)

    def http_options(self) -> dict[str, Any]:
        """Keyword arguments for `httpx.Client` / `httpx.AsyncClient`."""
        headers = {"User-Agent": f"hotlora-client/{__version__}", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return {"base_url": self.base_url, "headers": headers, "timeout": self.timeout}


# -- plans and how transports run them -------------------------------------------------------------------


@dataclass(frozen=True)
class Send:
    """Send one HTTP request; resume the plan with the response (its body read unless `stream`, and read
    anyway when it is an error), or with the `httpx.TransportError` raised in the plan."""

    method: str
    path: str
    json: Any = None
    params: Mapping[str, str] | None = None
    stream: bool = False

    def request(self, http: httpx.Client | httpx.AsyncClient) -> httpx.Request:
        return http.build_request(self.method, self.path, json=self.json, params=self.params)


@dataclass(frozen=True)
class Sleep:
    seconds: float


Op = Send | Sleep
Plan = Generator[Op, Any, T]


class Runner(Generic[T]):
    """Steps a plan for a transport:

        runner = Runner(plan)
        for op in runner:
            with runner.step():
                runner.reply(<perform op>)
        return runner.result

    A transport error raised while performing a step is handed to the plan, which decides what it means.
    """

    def __init__(self, plan: Plan[T]) -> None:
        self._plan = plan
        self._outcome: Any = None
        self._error: httpx.TransportError | None = None
        self.result: T

    def __iter__(self) -> Runner[T]:
        return self

    def __next__(self) -> Op:
        outcome, error = self._outcome, self._error
        self._outcome = self._error = None
        try:
            return self._plan.throw(error) if error is not None else self._plan.send(outcome)
        except StopIteration as stop:
            self.result = stop.value
            raise StopIteration from None

    def reply(self, outcome: Any) -> None:
        self._outcome = outcome

    @contextmanager
    def step(self) -> Iterator[None]:
        try:
            yield
        except httpx.TransportError as exc:
            self._error = exc


@dataclass
class Streaming(Generic[C]):
    """A plan's result for `stream=True`: the open response and its decoder, for the transport to wrap."""

    response: httpx.Response
    decoder: StreamDecoder[C]


# -- requests, retries, errors ----------------------------------------------------------------------------


def backoff(attempt: int) -> float:
    """Seconds before retry `attempt + 1`: 0.5, 1, 2, … up to 8, with jitter."""
    return float(min(BACKOFF_MAX, BACKOFF_FIRST * 2**attempt) * (1 - 0.25 * random.random()))


def retry_after(headers: httpx.Headers) -> float | None:
    """`Retry-After` in seconds (a number or an HTTP date); None when absent or unreadable."""
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, IndexError):
            return None
    return max(0.0, seconds) if math.isfinite(seconds) else None


def request(
    config: Config,
    method: str,
    path: str,
    *,
    json: Any = None,
    params: Mapping[str, str] | None = None,
    stream: bool = False,
) -> Plan[httpx.Response]:
    """Send a request, retrying connection failures, 429 and 503 (after `Retry-After` when the server
    sends one) up to `config.max_retries` times; any other error status raises at once."""
    send = Send(method, path, json, params, stream)
    for attempt in itertools.count():
        may_retry = attempt < config.max_retries
        try:
            response: httpx.Response = yield send
        except httpx.TransportError as exc:
            if may_retry and isinstance(exc, RETRYABLE_TRANSPORT_ERRORS):
                yield Sleep(backoff(attempt))
                continue
            raise connection_error(exc, config.base_url) from exc
        if not response.is_error:
            return response
        wait = retry_after(response.headers)
        if may_retry and response.status_code in RETRY_STATUSES and (wait is None or wait <= MAX_RETRY_AFTER):
            yield Sleep(backoff(attempt) if wait is None else wait)
            continue
        raise response_error(response, wait)
    raise AssertionError("unreachable")


def connection_error(exc: httpx.TransportError, base_url: str) -> errors.APIConnectionError:
    detail = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.TimeoutException):
        return errors.APITimeoutError(f"no answer from the hotlora server at {base_url} in time ({detail})")
    if isinstance(exc, httpx.ConnectError):
        return errors.APIConnectionError(
            f"cannot connect to the hotlora server at {base_url} ({detail}); is `hotlora serve` running "
            "there? (set HOTLORA_BASE_URL or base_url for another address)"
        )
    return errors.APIConnectionError(f"the connection to the hotlora server at {base_url} failed ({detail})")


def response_error(response: httpx.Response, wait: float | None) -> errors.APIStatusError:
    try:
        body = response.json()
    except ValueError:
        body = response.text
    return errors.status_error(response.status_code, body, response=response, retry_after=wait)


def parse(model: type[M], response: httpx.Response) -> M:
    try:
        return model.model_validate_json(response.content)
    except ValidationError as exc:
        raise errors.APIError(
            f"unexpected answer from {response.request.method} {response.request.url.path}: {exc}",
            status_code=response.status_code,
            body=response.text,
        ) from None


def call(config: Config, model: type[M], method: str, path: str, **kwargs: Any) -> Plan[M]:
    response = yield from request(config, method, path, **kwargs)
    return parse(model, response)


def segment(name: str, safe: str = "") -> str:
    """A name in a URL path (`safe="/"` for model ids, which may be hub ids like `org/model`)."""
    return quote(name, safe=safe)


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


def chat_messages(messages: Messages) -> list[dict[str, Any]]:
    if isinstance(messages, str):
        return [{"role": "user", "content": messages}]
    out: list[dict[str, Any]] = []
    for message in messages:
        if isinstance(message, BaseModel):
            message = message.model_dump(exclude_none=True)
        if not isinstance(message, Mapping):
            raise TypeError(f"a message is a mapping like {{'role': 'user', 'content': '...'}}, got {message!r}")
        out.append(dict(message))
    return out


def generation_body(config: Config, params: Mapping[str, Any], **fields: Any) -> Plan[dict[str, Any]]:
    """The JSON body of a chat or text completion: the target, `fields`, the options, then `extra_body`."""
    options = {key: value for key, value in params.items() if value is not None}
    extra = options.pop("extra_body", None) or {}
    if isinstance(options.get("logit_bias"), Mapping):  # JSON object keys are strings: token ids as text
        options["logit_bias"] = {str(token): bias for token, bias in options["logit_bias"].items()}
    targets = {key: options.pop(key) for key in ("model", "adapter", "blend") if key in options}
    if len(targets) > 1:
        raise ValueError(f"give at most one of model, adapter and blend (got {', '.join(targets)})")
    model: str | None = targets.get("model", targets.get("adapter"))
    if "blend" in targets:
        model = blend_model(targets["blend"])
    elif model is None:
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


def complete(
    config: Config, prompt: str, stream: bool, params: Mapping[str, Any]
) -> Plan[Completion | Streaming[Completion]]:
    fields: dict[str, Any] = {"prompt": prompt}
    if stream:
        fields["stream"] = True
    body = yield from generation_body(config, params, **fields)
    return (yield from generate(config, "/v1/completions", body, Completion, Completion))


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


def wait_until_ready(config: Config, name: str, timeout: float = 60.0, *, interval: float = 0.5) -> Plan[Adapter]:
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


# -- streams ---------------------------------------------------------------------------------------------------


class StreamDecoder(Generic[C]):
    """Server-Sent Events → typed chunks. Feed it the body line by line, then call `end()`.

    An `{"error": ...}` frame raises the matching `APIStatusError`; a body that ends without `[DONE]`
    raises `APIConnectionError`. `text` is the first choice's text so far, `usage` the last usage seen.
    """

    def __init__(self, chunk: type[C], response: httpx.Response | None = None) -> None:
        self._chunk: type[C] = chunk
        self._response = response
        self._data: list[str] = []
        self.done = False
        self.text = ""
        self.usage: Usage | None = None

    def feed(self, line: str) -> list[C]:
        if self.done:
            return []
        if not line:
            return self._dispatch()
        field_name, _, value = line.partition(":")
        if field_name == "data":  # ignore comments (keep-alive pings), `event:`, `id:`, `retry:`
            self._data.append(value.removeprefix(" "))
        return []

    def end(self) -> list[C]:
        chunks = self._dispatch()
        if not self.done:
            raise errors.APIConnectionError("the stream ended before [DONE]: the server stopped mid-answer")
        return chunks

    def _dispatch(self) -> list[C]:
        if not self._data:
            return []
        data = "\n".join(self._data)
        self._data.clear()
        if data == "[DONE]":
            self.done = True
            return []
        try:
            payload = json.loads(data)
        except ValueError:
            raise errors.APIError(f"malformed event in the stream: {data[:200]!r}") from None
        if isinstance(payload, dict) and "error" in payload:
            raise errors.stream_error(payload, self._response)
        try:
            chunk = self._chunk.model_validate(payload)
        except ValidationError as exc:
            raise errors.APIError(f"unexpected event in the stream: {exc}", body=payload) from None
        self.text += chunk.text
        if chunk.usage is not None:
            self.usage = chunk.usage
        return [chunk]


@contextmanager
def stream_transport_errors(base_url: str) -> Iterator[None]:
    """While reading a stream: a dropped connection raises `APIConnectionError`."""
    try:
        yield
    except httpx.TransportError as exc:
        raise connection_error(exc, base_url) from exc
