"""A request's work is cancelled when its client goes away before the answer (vLLM's `with_cancellation`).

Streams notice a vanished client as soon as a write fails; a non-streaming request writes nothing until
the end, so without this it would generate to its last token for nobody, holding a row of the batch.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from fastapi import Request
from starlette.responses import Response

T = TypeVar("T")
CLIENT_CLOSED = 499  # nginx's status for "client closed request": what the access log and metrics show


async def _disconnected(request: Request) -> None:
    """Return once the client has gone (the body is read by then, so `receive` has nothing else to say)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def cancelled_on_disconnect(route: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T | Response]]:
    """Decorate a route that takes `request: Request`: its work is cancelled if the client leaves first
    (a streaming route's until it returns its response, which then watches the connection itself)."""

    @functools.wraps(route)  # FastAPI reads the route's own parameters through `__wrapped__`
    async def watched(*args: Any, **kwargs: Any) -> T | Response:
        request: Request = kwargs["request"]  # FastAPI passes every parameter by name
        task = asyncio.ensure_future(route(*args, **kwargs))
        watch = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watch.cancel()
            if not task.done():
                task.cancel()  # closing the engine's event stream aborts the generation
        if task.done():  # answered (or failed) before the client left
            return task.result()
        await asyncio.wait(
            {task}
        )  # let it unwind; unlike `await task`, this raises only our own cancellation
        return Response(status_code=CLIENT_CLOSED)

    return watched
