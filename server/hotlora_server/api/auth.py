"""Bearer-token check for `/v1/*` when the server runs with an API key."""

from __future__ import annotations

import hmac

from fastapi import Request

from ..errors import AuthenticationError


def bearer_guard(api_key: str | None):  # noqa: ANN201 - a FastAPI dependency
    """A dependency that lets a request through only with `Authorization: Bearer <api_key>`."""
    expected = api_key.encode() if api_key else None

    async def check(request: Request) -> None:
        if expected is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise AuthenticationError("Missing API key: send it as 'Authorization: Bearer <key>'.")
        if not hmac.compare_digest(token.strip().encode(), expected):
            raise AuthenticationError("Incorrect API key provided.")

    return check
