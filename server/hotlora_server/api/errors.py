"""Every failure leaves the server as an OpenAI error body, mapped here and nowhere else."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import HotloraError
from ..protocol import ErrorDetail, ErrorResponse

log = logging.getLogger(__name__)

_TYPE_TAGS = {"str", "int", "float", "bool", "bytes", "dict", "list", "none"}
_HTTP_TYPES = {401: "invalid_request_error", 404: "invalid_request_error", 405: "invalid_request_error"}


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, object]:
    return ErrorResponse(error=ErrorDetail(message=message, type=type_, param=param, code=code)).model_dump()


def error_response(exc: HotloraError) -> JSONResponse:
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
    body = error_body(exc.message, exc.type, exc.param, exc.code)
    return JSONResponse(body, status_code=exc.status, headers=headers)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    """One readable line per problem, e.g. `temperature: Input should be less than or equal to 2`."""
    lines: list[str] = []
    first_param: str | None = None
    for err in exc.errors()[:5]:
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        # pydantic names the union branch it tried (`str`, `list[...]`); the user only cares about the field
        loc = [p for p in loc if p not in _TYPE_TAGS and "[" not in p and not p.startswith("function-")]
        param = ".".join(loc) or None
        first_param = first_param or param
        msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        if err.get("type") == "json_invalid":
            msg = f"the body is not valid JSON ({err.get('ctx', {}).get('error', 'parse error')})"
        lines.append(f"{param}: {msg}" if param else msg)
    return "; ".join(lines), first_param


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(HotloraError)
    async def _domain(_: Request, exc: HotloraError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return JSONResponse(error_body(message, "invalid_request_error", param), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = str(exc.detail)
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        type_ = _HTTP_TYPES.get(exc.status_code, "invalid_request_error" if exc.status_code < 500 else "server_error")
        return JSONResponse(error_body(message, type_), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(error_body("internal server error", "server_error"), status_code=500)
