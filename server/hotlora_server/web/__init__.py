"""The web app at `/`: a page and its ES modules, shipped in this package and served as they are.

The page is a client of the API like any other: it holds no secret and gets no access of its own (it asks
for the API key when a route answers 401). What it runs is only what this folder holds: the
Content-Security-Policy forbids scripts, styles and connections from anywhere but this server, so neither a
remote script nor a model's answer rendered into the page can run code.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import Response

from ..errors import NotFoundError

STATIC_DIR = Path(__file__).parent / "static"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",  # a JSON answer is never run as a script
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidate: an upgraded server serves its own page at once
}


def build_web_router() -> APIRouter:
    """`GET /` (the page) and `GET /static/{name}` (its modules and style), read once from the package;
    any other name is an OpenAI-shaped 404, so nothing outside the folder is reachable."""
    assets = {
        path.name: (path.read_bytes(), CONTENT_TYPES[path.suffix])
        for path in sorted(STATIC_DIR.iterdir())
        if path.suffix in CONTENT_TYPES and path.is_file()
    }
    router = APIRouter(include_in_schema=False)

    def answer(name: str) -> Response:
        if name not in assets:
            raise NotFoundError(f"the web app has no file '{name}'", code="not_found")
        body, content_type = assets[name]
        return Response(body, media_type=content_type, headers=HEADERS)

    @router.get("/")
    async def page() -> Response:
        return answer("index.html")

    @router.get("/static/{name}")
    async def static(name: str) -> Response:
        return answer(name)

    return router


__all__ = ["CONTENT_SECURITY_POLICY", "build_web_router"]
