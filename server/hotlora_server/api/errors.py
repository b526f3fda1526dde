"""Every failure leaves the server as an OpenAI error body, mapped here and nowhere else."""

from __future__ import annotations

import itertools
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import HotloraError
from ..protocol import ErrorDetail, ErrorResponse

log = logging.getLogger(__name__)

_TYPE_TAGS = {"str", "int", "float", "bool", "bytes", "dict", "list", "none"}
_NOT_AN_OBJECT = {"missing", "model_attributes_type", "model_type", "dict_type"}
_Problem = tuple[str | None, str, bool]  # param, message, whether it is only a type mismatch
_HTTP_TYPES = {401: "invalid_request_error", 404: "invalid_request_error", 405: "invalid_request_error"}
MAX_SHOWN_PROBLEMS = 5
MAX_EXAMINED_PROBLEMS = 100  # a union's branches come one after the other: enough to pair them up


def error_body(
    message: str, type_: str, param: str | None = None, code: str | None = None
) -> dict[str, object]:
    return ErrorResponse(error=ErrorDetail(message=message, type=type_, param=param, code=code)).model_dump()


def error_response(exc: HotloraError) -> JSONResponse:
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
    body = error_body(exc.message, exc.type, exc.param, exc.code)
    return JSONResponse(body, status_code=exc.status, headers=headers)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    """One readable line per problem, e.g. `temperature: Input should be less than or equal to 2`.

    Runs on the event loop, so its work is bounded whatever the body: it reads the first few problems only
    and sorts out union branches in one pass.
    """
    problems = [_problem(err) for err in itertools.islice(exc.errors(), MAX_EXAMINED_PROBLEMS)]
    real = _really_wrong(problems)
    shown = [p for p in problems if not (p[2] and p[0] in real)][:MAX_SHOWN_PROBLEMS]
    lines = [f"{param}: {msg}" if param else msg for param, msg, _ in shown]
    return "; ".join(lines), next((param for param, _, _ in shown if param), None)


def _problem(err: dict[str, Any]) -> _Problem:
    loc = [str(p) for p in err.get("loc", ())[1:]]  # after the location: `body`, `query` or `path`
    # pydantic names the union branch it tried (`str`, `list[...]`); the user only cares about the field
    loc = [p for p in loc if p not in _TYPE_TAGS and "[" not in p and not p.startswith("function-")]
    param = ".".join(loc) or None
    kind = str(err.get("type", ""))
    msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
    ctx = err.get("ctx", {})
    if kind == "too_long" and ctx.get("field_type") == "List":  # pydantic adds "after validation"
        got = f", not {ctx['actual_length']}" if ctx.get("actual_length") is not None else ""
        msg = f"at most {ctx['max_length']} items are allowed{got}"
    elif kind == "json_invalid":  # its loc is the character offset, not a field
        reason, offset = ctx.get("error", "parse error"), loc[0] if loc else "?"
        param, msg = None, f"the body is not valid JSON ({reason} at character {offset})"
    elif not loc and kind in _NOT_AN_OBJECT:
        msg = _not_an_object_message(err)
    return param, msg, kind.endswith("_type")


def _really_wrong(problems: list[_Problem]) -> set[str | None]:
    """The params holding a problem other than a type mismatch, and every param they sit inside.

    A union's wrong-type branch (`content` is not a list) next to the real problem of the branch that
    matched (a string that is not text, at `content` or inside it): only the real problem is worth saying,
    so a mismatch at a param of this set is left out.
    """
    real: set[str | None] = set()
    for param, _, mismatch in problems:
        if mismatch:
            continue
        real.add(param)
        parts = (param or "").split(".")
        real.update(".".join(parts[:i]) for i in range(1, len(parts)))
    return real


def _not_an_object_message(err: dict[str, Any]) -> str:
    """The body as a whole is not an object: say what the server expected instead of pydantic's wording."""
    if err.get("type") == "missing":
        return "the request body is empty: send a JSON object"
    if isinstance(err.get("input"), bytes):  # FastAPI parses JSON only under a JSON content type
        return "the request body must be JSON sent with 'Content-Type: application/json'"
    return "the request body must be a JSON object"


def _unparsable_body_message(cause: BaseException) -> str:
    """FastAPI turns every body parse failure into one vague 400; name the actual cause."""
    if isinstance(cause, UnicodeDecodeError):
        return f"the body is not valid UTF-8 (byte {cause.start}: {cause.reason})"
    if isinstance(cause, RecursionError):
        return "the body's JSON is nested too deeply"
    if isinstance(cause, ValueError):  # e.g. an integer with more digits than Python converts
        return f"the body is not valid JSON ({cause})"
    return "the body could not be parsed as JSON"


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
        if exc.status_code == 400 and exc.__cause__ is not None:
            message = _unparsable_body_message(exc.__cause__)
        elif exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        type_ = _HTTP_TYPES.get(
            exc.status_code, "invalid_request_error" if exc.status_code < 500 else "server_error"
        )
        return JSONResponse(error_body(message, type_), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(error_body("internal server error", "server_error"), status_code=500)
