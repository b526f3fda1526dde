"""Which `Host` headers the server answers: the guard against DNS rebinding.

A web page can point a name it controls at 127.0.0.1 once it has loaded; the browser then lets the page
talk to the keyless server on the visitor's machine as if it were its own site (Ollama's CVE-2024-28224).
Such a request carries the page's own name in `Host`. So without an API key the server answers only
requests addressed to `localhost` (`*.localhost` too: browsers resolve those themselves), to an IP address
(which no page can rebind), or to a name the operator listed (`--allowed-hosts`, Django's
`ALLOWED_HOSTS` rules: `.example.com` is it and its subdomains). A request without `Host` is no browser's.

`/health` is exempt: it changes nothing and says only whether the model is loaded, and container and load
balancer probes address it by whatever name they have. Pure ASGI, like the other middlewares.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from starlette.types import ASGIApp, Receive, Scope, Send

from ..errors import HostNotAllowedError
from .errors import error_response

OPEN_PATHS = frozenset({"/health"})
_LOOPBACK = ".localhost"  # localhost and its subdomains


def host_name(header: str) -> str:
    """The name or address in a `Host` header, without its port, brackets or final dot, lower case."""
    header = header.strip().lower()
    if header.startswith("["):  # [v6 address]:port
        return header[1:].partition("]")[0]
    name, colon, port = header.rpartition(":")
    if colon and port.isdigit() and ":" not in name:
        header = name
    return header.rstrip(".")


def host_allowed(header: str, allowed: Sequence[str]) -> bool:
    """Whether a request with this `Host` may reach the routes, given the names served besides
    localhost and IP addresses."""
    name = host_name(header)
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        pass
    return any(_matches(name, pattern) for pattern in (_LOOPBACK, *allowed))


def _matches(name: str, pattern: str) -> bool:
    """Django's rule: `.example.com` is example.com and its subdomains, anything else the name itself."""
    if pattern.startswith("."):
        return name == pattern[1:] or name.endswith(pattern)
    return name == pattern


class HostGuard:
    """Answer 403 to a request whose `Host` is not allowed, before it reaches any route.

    `allowed=None` lets every `Host` through (a server with an API key and no `--allowed-hosts`).
    """

    def __init__(self, app: ASGIApp, allowed: Sequence[str] | None) -> None:
        self.app = app
        self.allowed = tuple(allowed) if allowed is not None else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.allowed is not None and scope["path"] not in OPEN_PATHS:
            hosts = [value.decode("latin-1") for key, value in scope["headers"] if key == b"host"]
            refused = next((h for h in hosts if not host_allowed(h, self.allowed)), None)
            if refused is not None:
                await error_response(_refusal(refused))(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _refusal(host: str) -> HostNotAllowedError:
    return HostNotAllowedError(
        f"this server answers requests addressed to localhost, an IP address or a name in --allowed-hosts "
        f"(a guard against DNS rebinding), not to {host[:255]!r}: add that name to --allowed-hosts",
        param="Host",
    )
