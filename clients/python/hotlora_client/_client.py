"""`Client` and `AsyncClient`: one surface over blocking and async httpx.

All of the logic is in `_core`'s plan functions. Each API method is declared once, as an `_Endpoint`
over its plan, and means "run this plan" on either client: `Client._run` performs the plan's steps with
blocking httpx and `time.sleep`, `AsyncClient._run` with async httpx and `asyncio.sleep`. Only the
generation methods (`chat`, `complete`) are spelled out per client, for their `stream=True` typing.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Concatenate, Generic, Literal, ParamSpec, TypeVar, overload

import httpx

from . import _core, _fine_tuning
from ._stream import AsyncStream, Stream
from .types import (
    ChatCompletion,
    ChatCompletionChunk,
    Completion,
    Messages,
    ModelT,
    ParsedChatCompletion,
)

if TYPE_CHECKING:
    from typing import Self, Unpack

    from .types import ChatParams, CompletionParams, ParseParams

__all__ = [
    "Adapters",
    "AsyncClient",
    "AsyncStream",
    "Client",
    "Files",
    "FineTuning",
    "Jobs",
    "Models",
    "Stream",
]

P = ParamSpec("P")
T = TypeVar("T")
ClientT = TypeVar("ClientT", "Client", "AsyncClient")
Timeout = float | httpx.Timeout | None


class _Part(Generic[ClientT]):
    """A client or one of its parts (`models`, `adapters`): what endpoints are declared on."""

    _client: ClientT


class _Endpoint(Generic[P, T]):
    """A `_core` plan function as a method: blocking on a `Client` (and its parts), awaitable on an
    `AsyncClient`. The plan's signature (less its `config`) and docstring are the method's."""

    def __init__(self, plan: Callable[Concatenate[_core.Config, P], _core.Plan[T]]) -> None:
        self._plan = plan
        self._name = plan.__name__
        self.__doc__ = plan.__doc__
        signature = inspect.signature(plan)
        result = signature.return_annotation  # "Plan[Adapter]" (a string: annotations are postponed)
        if isinstance(result, str) and result.startswith("Plan[") and result.endswith("]"):
            result = result[len("Plan[") : -1]
        self.__signature__ = signature.replace(
            parameters=list(signature.parameters.values())[1:], return_annotation=result
        )

    def __set_name__(self, owner: type, name: str) -> None:
        self._name = name

    @overload
    def __get__(self, part: None, owner: type) -> Self: ...
    @overload
    def __get__(self, part: _Part[Client], owner: type) -> Callable[P, T]: ...
    @overload
    def __get__(self, part: _Part[AsyncClient], owner: type) -> Callable[P, Awaitable[T]]: ...
    def __get__(self, part: _Part[Any] | None, owner: type) -> Any:
        if part is None:
            return self
        client, plan = part._client, self._plan

        def method(*args: Any, **kwargs: Any) -> Any:
            return client._run(plan(client._config, *args, **kwargs))

        method.__name__ = method.__qualname__ = self._name
        method.__doc__ = self.__doc__
        method.__signature__ = self.__signature__  # type: ignore[attr-defined]  # read by inspect.signature
        return method


class Models(_Part[ClientT]):
    """`client.models`: the base model and its adapters, as `/v1/models` lists them."""

    def __init__(self, client: ClientT) -> None:
        self._client = client

    list = _Endpoint(_core.list_models)
    get = _Endpoint(_core.get_model)


class Adapters(_Part[ClientT]):
    """`client.adapters`: the server's adapter store (needs the API key when the server has one)."""

    def __init__(self, client: ClientT) -> None:
        self._client = client

    list = _Endpoint(_core.list_adapters)
    get = _Endpoint(_core.get_adapter)
    load = _Endpoint(_core.load_adapter)
    unload = _Endpoint(_core.unload_adapter)
    blend = _Endpoint(_core.blend_adapters)
    wait_until_ready = _Endpoint(_core.wait_until_ready)


class Files(_Part[ClientT]):
    """`client.files`: JSONL training files uploaded for fine-tuning (OpenAI's `/v1/files`)."""

    def __init__(self, client: ClientT) -> None:
        self._client = client

    create = _Endpoint(_fine_tuning.upload_file)
    list = _Endpoint(_fine_tuning.list_files)
    get = _Endpoint(_fine_tuning.get_file)
    content = _Endpoint(_fine_tuning.file_content)
    delete = _Endpoint(_fine_tuning.delete_file)


class Jobs(_Part[ClientT]):
    """`client.fine_tuning.jobs`: training adapters on the server (OpenAI's fine-tuning jobs)."""

    def __init__(self, client: ClientT) -> None:
        self._client = client

    create = _Endpoint(_fine_tuning.create_job)
    list = _Endpoint(_fine_tuning.list_jobs)
    get = _Endpoint(_fine_tuning.get_job)
    cancel = _Endpoint(_fine_tuning.cancel_job)
    list_events = _Endpoint(_fine_tuning.list_events)
    list_checkpoints = _Endpoint(_fine_tuning.list_checkpoints)
    wait = _Endpoint(_fine_tuning.wait_for_job)


class FineTuning(_Part[ClientT]):
    """`client.fine_tuning`: its `jobs`."""

    def __init__(self, client: ClientT) -> None:
        self._client = client
        self.jobs: Jobs[ClientT] = Jobs(client)


class _BaseClient(_Part[ClientT]):
    health = _Endpoint(_core.health)
    tokenize = _Endpoint(_core.tokenize)
    detokenize = _Endpoint(_core.detokenize)

    def __init__(self, base_url: str | None, api_key: str | None, timeout: Timeout, max_retries: int) -> None:
        self._config = _core.Config.build(base_url, api_key, timeout, max_retries)
        self._client = self  # type: ignore[assignment]  # self is the ClientT (Client or AsyncClient)
        self.models: Models[ClientT] = Models(self._client)
        self.adapters: Adapters[ClientT] = Adapters(self._client)
        self.files: Files[ClientT] = Files(self._client)
        self.fine_tuning: FineTuning[ClientT] = FineTuning(self._client)

    @property
    def base_url(self) -> str:
        return self._config.base_url


# -- the blocking client ---------------------------------------------------------------------------------------


class Client(_BaseClient["Client"]):
    """A hotlora server, over blocking HTTP.

    `base_url` defaults to `$HOTLORA_BASE_URL`, else http://127.0.0.1:8000 (a trailing `/v1` is fine);
    `api_key` to `$HOTLORA_API_KEY` — both read now, when the client is built. Connection failures, 429
    and 503 are retried up to `max_retries` times with backoff, honouring `Retry-After`; other errors
    raise at once (`hotlora_client.errors`). `timeout` is in seconds (or an `httpx.Timeout`).

    `client.chat(...)`, `client.parse(...)`, `client.complete(...)`, `client.tokenize(...)/detokenize(...)`,
    `client.health()`, `client.models.list()/get(id)`,
    `client.adapters.list()/get/load/unload/blend/wait_until_ready`, `client.files.create/list/get/content/
    delete`, `client.fine_tuning.jobs.create/list/get/cancel/list_events/list_checkpoints/wait`. Close it,
    or use it in a `with`.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: Timeout = None,
        max_retries: int = 2,
    ) -> None:
        super().__init__(base_url, api_key, timeout, max_retries)
        self._http = httpx.Client(**self._config.http_options())

    @overload
    def chat(
        self, messages: Messages, *, stream: Literal[False] = False, **params: Unpack[ChatParams]
    ) -> ChatCompletion: ...
    @overload
    def chat(
        self, messages: Messages, *, stream: Literal[True], **params: Unpack[ChatParams]
    ) -> Stream[ChatCompletionChunk]: ...
    def chat(self, messages: Messages, *, stream: bool = False, **params: Any) -> Any:
        """A chat completion. `messages`: a list of `{"role", "content"}` dicts, or a text (one user turn).
        The target: `model=` (the base id, an adapter's name or `"a*0.7+b*0.3"`), `adapter="name"`, or
        `blend={"a": 0.7, "b": 0.3}` (with `blend_method=`, `density=`); none of them: the base model.
        The other keyword arguments are OpenAI's (`max_tokens`, `temperature`, `seed`, `stop`, `logit_bias`, …)
        and vLLM's sampling extras (`top_k`, `min_p`, `repetition_penalty`, `min_tokens`, `ignore_eos`).
        With `stream=True`, a `Stream` of chunks (`.text_stream` for the text alone)."""
        return self._run(_core.chat(self._config, messages, stream, params))

    def parse(
        self, messages: Messages, *, response_format: type[ModelT], **params: Unpack[ParseParams]
    ) -> ParsedChatCompletion[ModelT]:
        """`chat` whose every choice follows the JSON schema of `response_format`, a pydantic model class:
        `.parsed` is the first choice's reply as an instance of it (`.parsed_choices`, all of them). A
        choice cut short by `max_tokens` raises `IncompleteOutputError`."""
        return self._run(_core.parse_chat(self._config, messages, response_format, params))

    @overload
    def complete(
        self, prompt: str, *, stream: Literal[False] = False, **params: Unpack[CompletionParams]
    ) -> Completion: ...
    @overload
    def complete(
        self, prompt: str, *, stream: Literal[True], **params: Unpack[CompletionParams]
    ) -> Stream[Completion]: ...
    def complete(self, prompt: str, *, stream: bool = False, **params: Any) -> Any:
        """A raw text completion (`/v1/completions`) of `prompt`; the options are `chat`'s."""
        return self._run(_core.complete(self._config, prompt, stream, params))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _run(self, plan: _core.Plan[Any]) -> Any:
        runner = _core.Runner(plan)
        for op in runner:
            with runner.step():
                runner.reply(self._sleep(op.seconds) if isinstance(op, _core.Sleep) else self._send(op))
        return (
            Stream(runner.result, self.base_url)
            if isinstance(runner.result, _core.Streaming)
            else runner.result
        )

    @staticmethod
    def _sleep(seconds: float) -> None:
        time.sleep(seconds)

    def _send(self, op: _core.Send) -> httpx.Response:
        response = self._http.send(op.request(self._http), stream=op.stream)
        if op.stream and response.is_error:
            response.read()
        return response


# -- the async client -----------------------------------------------------------------------------------------------


class AsyncClient(_BaseClient["AsyncClient"]):
    """`Client` for asyncio: the same methods and options, awaited; streams are `AsyncStream`s."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: Timeout = None,
        max_retries: int = 2,
    ) -> None:
        super().__init__(base_url, api_key, timeout, max_retries)
        self._http = httpx.AsyncClient(**self._config.http_options())

    @overload
    async def chat(
        self, messages: Messages, *, stream: Literal[False] = False, **params: Unpack[ChatParams]
    ) -> ChatCompletion: ...
    @overload
    async def chat(
        self, messages: Messages, *, stream: Literal[True], **params: Unpack[ChatParams]
    ) -> AsyncStream[ChatCompletionChunk]: ...
    async def chat(self, messages: Messages, *, stream: bool = False, **params: Any) -> Any:
        """See `Client.chat`; with `stream=True`, an `AsyncStream`."""
        return await self._run(_core.chat(self._config, messages, stream, params))

    async def parse(
        self, messages: Messages, *, response_format: type[ModelT], **params: Unpack[ParseParams]
    ) -> ParsedChatCompletion[ModelT]:
        """See `Client.parse`."""
        return await self._run(_core.parse_chat(self._config, messages, response_format, params))

    @overload
    async def complete(
        self, prompt: str, *, stream: Literal[False] = False, **params: Unpack[CompletionParams]
    ) -> Completion: ...
    @overload
    async def complete(
        self, prompt: str, *, stream: Literal[True], **params: Unpack[CompletionParams]
    ) -> AsyncStream[Completion]: ...
    async def complete(self, prompt: str, *, stream: bool = False, **params: Any) -> Any:
        """See `Client.complete`."""
        return await self._run(_core.complete(self._config, prompt, stream, params))

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _run(self, plan: _core.Plan[Any]) -> Any:
        runner = _core.Runner(plan)
        for op in runner:
            with runner.step():
                runner.reply(
                    await (asyncio.sleep(op.seconds) if isinstance(op, _core.Sleep) else self._send(op))
                )
        return (
            AsyncStream(runner.result, self.base_url)
            if isinstance(runner.result, _core.Streaming)
            else runner.result
        )

    async def _send(self, op: _core.Send) -> httpx.Response:
        response = await self._http.send(op.request(self._http), stream=op.stream)
        if op.stream and response.is_error:
            await response.aread()
        return response
