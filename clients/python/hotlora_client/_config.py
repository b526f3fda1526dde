"""What a client is built with: base URL, API key, timeout and retries, from arguments and the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from ._version import __version__

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT = httpx.Timeout(600.0, connect=10.0)  # a long answer on a CPU takes minutes


@dataclass
class Config:
    """What a client was built with; environment defaults are read when it is built, never at import."""

    base_url: str
    api_key: str | None
    timeout: httpx.Timeout
    max_retries: int
    base_model: str | None = field(default=None)  # the served base id, looked up once when needed

    @classmethod
    def build(
        cls,
        base_url: str | None,
        api_key: str | None,
        timeout: float | httpx.Timeout | None,
        max_retries: int,
        environ: Mapping[str, str] | None = None,
    ) -> Config:
        env = os.environ if environ is None else environ
        url = (base_url or env.get("HOTLORA_BASE_URL") or DEFAULT_BASE_URL).strip().rstrip("/")
        url = url.removesuffix("/v1")  # the `openai` SDK's base URL works here too
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http:// or https:// URL, got {url!r}")
        if api_key is None:
            api_key = env.get("HOTLORA_API_KEY") or None
        if not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries must be an integer >= 0, got {max_retries!r}")
        if timeout is None:
            timeout = DEFAULT_TIMEOUT
        elif not isinstance(timeout, httpx.Timeout):
            timeout = httpx.Timeout(timeout)
        return cls(base_url=url, api_key=api_key or None, timeout=timeout, max_retries=max_retries)

    def http_options(self) -> dict[str, Any]:
        """Keyword arguments for `httpx.Client` / `httpx.AsyncClient`."""
        headers = {"User-Agent": f"hotlora-client/{__version__}", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return {"base_url": self.base_url, "headers": headers, "timeout": self.timeout}
