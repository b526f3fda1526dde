"""The HTTP layer: FastAPI routes over an `EngineClient`. No torch here."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response

from ..errors import ServiceUnavailableError
from ..metrics import Metrics
from ..tools import DEFAULT_TOOL_PARSER
from ..types import EngineClient
from ..web import build_web_router
from .adapters import build_adapter_router
from .auth import bearer_guard
from .errors import error_response, install_error_handlers
from .fine_tuning import build_fine_tuning_router
from .hosts import HostGuard
from .limits import BodyLimitMiddleware
from .observe import RequestObserver
from .openapi import ERROR_RESPONSES, PLAIN_TEXT
from .routes import build_router
from .serving_fine_tuning import ServingFineTuning
from .tokenize import build_tokenize_router


def create_app(
    engine: EngineClient,
    api_key: str | None = None,
    *,
    metrics_public: bool = False,
    max_body_bytes: int | None = None,
    allowed_hosts: Sequence[str] | None = None,
    allowed_origins: Sequence[str] = (),
    allowed_methods: Sequence[str] = ("*",),
    allowed_headers: Sequence[str] = ("*",),
    tool_call_parser: str = DEFAULT_TOOL_PARSER,
    fine_tuning: ServingFineTuning | None = None,
    web_app: bool = True,
) -> FastAPI:
    """The OpenAI-compatible app. With `api_key`, every route but `/health` (and `/metrics` when
    `metrics_public`) requires it as a bearer token; bodies over `max_body_bytes` get 413 (None: no limit);
    with `allowed_hosts` (`Settings.host_check`), a request to any other `Host` than those, localhost and IP
    addresses gets 403 on every route but `/health` (None: any `Host`). With `allowed_origins`, browsers
    may call it from those origins (CORS), with `allowed_methods` and `allowed_headers`. Chat replies are
    read for tool calls with the parser named `tool_call_parser` (`tools.TOOL_PARSERS`). With `fine_tuning`,
    it serves OpenAI's files and fine-tuning jobs routes and runs their job runner while it runs (without:
    they are 404, `--no-fine-tuning`). With `web_app`, `/` serves the web app (`hotlora_server.web`),
    which calls these routes with the key like any client (without: 404, `--no-web-app`)."""
    from .. import __version__

    # with a key, the schema is served behind it below
    keyed: dict[str, Any] = {"openapi_url": None, "docs_url": None, "redoc_url": None} if api_key else {}
    app = FastAPI(
        title="hotlora",
        version=__version__,
        responses=ERROR_RESPONSES,
        lifespan=_running(fine_tuning) if fine_tuning is not None else None,
        **keyed,
    )
    install_error_handlers(app)
    uploads = {"/v1/files": (fine_tuning.max_upload_bytes, "--max-file-bytes")} if fine_tuning else {}
    # inside the observer: 413s are counted
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_body_bytes, paths=uploads)
    if allowed_origins:
        # inside the Host guard (a rebound name gets no CORS answer either), outside the routes and their API
        # key check: a preflight (OPTIONS, no credentials) is answered here, the request itself needs the key;
        # errors (401, 413) carry the CORS headers, so the page can read them
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(allowed_origins),
            allow_methods=list(allowed_methods),
            allow_headers=list(allowed_headers),
            expose_headers=["X-Request-ID", "Retry-After"],
        )
    app.add_middleware(HostGuard, allowed=allowed_hosts)  # before the body is read, after the request id
    metrics = Metrics(engine.stats)
    app.add_middleware(RequestObserver, metrics=metrics)

    @app.get("/health", response_model=None)
    async def health() -> JSONResponse:
        if not engine.is_ready():
            return error_response(ServiceUnavailableError("the model is still loading", retry_after=2))
        return JSONResponse({"status": "ok", "model": engine.served_model_name, **engine.health()})

    guard = [Depends(bearer_guard(api_key))]

    @app.get(
        "/metrics",
        response_class=Response,
        responses=PLAIN_TEXT,
        dependencies=[] if metrics_public else guard,
    )
    async def prometheus() -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    if api_key:  # the schema needs the key too; the docs pages cannot send it, so they are off

        @app.get("/openapi.json", dependencies=guard, include_in_schema=False)
        async def openapi() -> JSONResponse:
            return JSONResponse(app.openapi())

    app.include_router(build_router(engine, metrics, tool_call_parser), dependencies=guard)
    app.include_router(build_tokenize_router(engine), dependencies=guard)
    app.include_router(build_adapter_router(engine), dependencies=guard)
    if fine_tuning is not None:
        app.include_router(build_fine_tuning_router(fine_tuning), dependencies=guard)
    if web_app:  # no key: the page holds no secret, and asks for the key when the API answers 401
        app.include_router(build_web_router())
    return app


def _running(fine_tuning: ServingFineTuning) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """The app's lifespan: the fine-tuning job runner starts with the server and stops its trainings
    (failing their jobs) when the server shuts down."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await fine_tuning.start()
        try:
            yield
        finally:
            await fine_tuning.stop()

    return lifespan


__all__ = ["create_app"]
