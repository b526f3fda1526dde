"""The HTTP layer: FastAPI routes over an `EngineClient`. No torch here."""

from __future__ import annotations

from fastapi import Depends, FastAPI
from fastapi.responses import JSONResponse

from ..errors import ServiceUnavailableError
from ..types import EngineClient
from .adapters import build_adapter_router
from .auth import bearer_guard
from .errors import error_response, install_error_handlers
from .routes import build_router


def create_app(engine: EngineClient, api_key: str | None = None) -> FastAPI:
    """The OpenAI-compatible app; `/v1/*` requires `api_key` as a bearer token when one is given."""
    from .. import __version__

    app = FastAPI(title="hotlora", version=__version__)
    install_error_handlers(app)

    @app.get("/health", response_model=None)
    async def health() -> JSONResponse:
        if not engine.is_ready():
            return error_response(ServiceUnavailableError("the model is still loading", retry_after=2))
        return JSONResponse({"status": "ok", "model": engine.served_model_name})

    guard = [Depends(bearer_guard(api_key))]
    app.include_router(build_router(engine), prefix="/v1", dependencies=guard)
    app.include_router(build_adapter_router(engine), prefix="/v1", dependencies=guard)
    return app


__all__ = ["create_app"]
