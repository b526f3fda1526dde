"""Plans and how a transport runs them: a plan yields `Send` and `Sleep` steps and is resumed with each
outcome, so `Client` and `AsyncClient` share every call and differ only in how they do I/O."""

from __future__ import annotations

from collections.abc import Generator, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import httpx

from ._stream import C

if TYPE_CHECKING:
    from ._stream import StreamDecoder

T = TypeVar("T")


@dataclass(frozen=True)
class Send:
    """Send one HTTP request; resume the plan with the response (its body read unless `stream`, and read
    anyway when it is an error), or with the `httpx.TransportError` raised in the plan."""

    method: str
    path: str
    json: Any = None
    params: Mapping[str, str] | None = None
    stream: bool = False
    files: Mapping[str, tuple[str, bytes]] | None = None  # a multipart body: these files ...
    data: Mapping[str, str] | None = None  # ... and these fields

    def request(self, http: httpx.Client | httpx.AsyncClient) -> httpx.Request:
        return http.build_request(
            self.method, self.path, json=self.json, params=self.params, files=self.files, data=self.data
        )


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
