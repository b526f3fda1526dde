"""The settings that name network peers: the Host names, web origins, methods and headers let in, the vLLM
servers used, and whether a listening address keeps the server on this machine.

Each list is given as repeated flags or comma-separated (`HOTLORA_ALLOWED_HOSTS=a.example,.b.example`), the
CORS ones also as one JSON list as vLLM takes them; an entry that is not what its setting names is refused
at start with the entries at fault, rather than never matching a request.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import BeforeValidator

_HOST_NAME = re.compile(r"\*|\.?[a-z0-9_-]+(\.[a-z0-9_-]+)*")  # a name, `.name` (and its subdomains) or `*`
_ORIGIN = re.compile(r"\*|[a-z][a-z0-9+.-]*://[^/\s?#]+")  # `*` or scheme://host[:port], as browsers send it
_URL = re.compile(r"https?://[^/\s?#]+")  # a server's root: scheme://host[:port]
_TOKEN = re.compile(r"\*|[A-Za-z0-9!#$%&'*+.^_`|~-]+")  # an HTTP method or header name (RFC 9110 token)


def _listed(parse: Callable[[list[Any]], tuple[str, ...]]) -> Callable[[Any], Any]:
    """A before-validator: a string or a list/tuple of them goes to `parse`; anything else to pydantic."""

    def validate(value: Any) -> Any:
        items = [value] if isinstance(value, str) else value
        return parse(list(items)) if isinstance(items, (list, tuple)) else value

    return validate


def _hosts(items: list[Any]) -> tuple[str, ...]:
    hosts = [h.strip().lower() for item in items for h in str(item).split(",") if h.strip()]
    bad = [h for h in hosts if not _HOST_NAME.fullmatch(h) and not _is_address(h)]
    if bad:
        raise ValueError(
            f"not a host name: {', '.join(bad)} (give names such as `example.com`, `.example.com` for it "
            "and its subdomains, or `*`; no scheme, port or path)"
        )
    return tuple(hosts)


def _cors_entries(items: list[Any]) -> list[str]:
    """Comma-separated, repeated, or one JSON list (vLLM's form: `--allowed-origins '["https://a.example"]'`)."""
    entries: list[str] = []
    for item in items:
        text = str(item).strip()
        parsed = _json_list(text) if text.startswith("[") else text.split(",")
        entries.extend(e.strip() for e in parsed if e.strip())
    return entries


def _origins(items: list[Any]) -> tuple[str, ...]:
    entries = [e.lower().rstrip("/") for e in _cors_entries(items)]
    bad = [e for e in entries if not _ORIGIN.fullmatch(e)]
    if bad:
        what = "origins such as `https://app.example.com` or `http://localhost:3000` (scheme, host, port; no path), or `*`"
        raise ValueError(f"not valid: {', '.join(bad)} (give {what})")
    return tuple(entries)


def _tokens(items: list[Any]) -> tuple[str, ...]:
    entries = _cors_entries(items)
    bad = [e for e in entries if not _TOKEN.fullmatch(e)]
    if bad:
        raise ValueError(f"not valid: {', '.join(bad)} (give names such as `GET` or `Content-Type`, or `*`)")
    return tuple(entries)


def _urls(items: list[Any]) -> tuple[str, ...]:
    """Each an http(s) URL without a path (vLLM's routes sit at its root)."""
    urls = [u.strip().rstrip("/") for item in items for u in str(item).split(",") if u.strip()]
    bad = [u for u in urls if not _URL.fullmatch(u)]
    if bad:
        raise ValueError(f"not a server URL: {', '.join(bad)} (give e.g. http://10.0.0.5:8000)")
    return tuple(urls)


HostNames = Annotated[tuple[str, ...], BeforeValidator(_listed(_hosts))]
Origins = Annotated[tuple[str, ...], BeforeValidator(_listed(_origins))]
HttpTokens = Annotated[tuple[str, ...], BeforeValidator(_listed(_tokens))]  # methods or header names
ServerUrls = Annotated[tuple[str, ...], BeforeValidator(_listed(_urls))]


def _json_list(text: str) -> list[str]:
    try:
        items = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{text[:80]!r} is not a JSON list ({exc})") from None
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise ValueError(f"{text[:80]!r} is not a JSON list of strings")
    return items


def is_loopback(host: str) -> bool:
    """Whether listening on `host` keeps the server on this machine: `localhost` or a loopback address
    (any other name may resolve to anything, so it counts as exposed)."""
    if host.lower() == "localhost":
        return True
    return _is_address(host) and ipaddress.ip_address(host.strip("[]")).is_loopback


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True
