"""One vLLM server as hotlora sees it: ready or not, the LoRAs loaded in it, the requests it is running.

LoRAs are loaded and unloaded over vLLM's runtime routes (`/v1/load_lora_adapter`, `/v1/unload_lora_adapter`,
which need `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`), by path: the server reads the adapter folder itself.
Generation streams from `/v1/chat/completions` and `/v1/completions`. vLLM's errors come back as
hotlora's (`errors.py` beside this file).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx

from .errors import ReplicaDown, from_vllm

log = logging.getLogger(__name__)
logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per health check and LoRA load otherwise

_TIMEOUT = httpx.Timeout(10.0, read=None)  # generating may pause long between tokens; connecting may not
_LOAD_TIMEOUT = 300.0  # a first LoRA load on a busy CPU server may take a while


class Replica:
    """A vLLM server at `url`. `ready` is the last health check's verdict; `loras` what hotlora loaded."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.ready = False
        self.in_flight = 0
        self.lora_loads = 0
        self.loras: set[str] = set()
        self.sees_store: bool | None = None  # None: not asked yet (`probe.py`); False: never ready
        self._locks: dict[str, asyncio.Lock] = {}
        self._client: httpx.AsyncClient | None = None

    def __repr__(self) -> str:
        return f"Replica({self.url})"

    def has_lora(self, name: str) -> bool:
        return name in self.loras

    @property
    def lora_count(self) -> int:
        return len(self.loras)

    @property
    def client(self) -> httpx.AsyncClient:
        """Made on first use, inside the server's event loop."""
        if self._client is None:
            self._client = httpx.AsyncClient(base_url=self.url, timeout=_TIMEOUT)
        return self._client

    def check(self) -> bool:
        """GET /health, blocking (from the monitor thread); a server that comes back has lost its LoRAs."""
        try:
            ok = (
                self.sees_store is not False
                and httpx.get(f"{self.url}/health", timeout=5.0).status_code == 200
            )
        except httpx.HTTPError:
            ok = False
        if ok and not self.ready:
            self.loras.clear()
        if self.ready and not ok:
            log.warning("vLLM server %s is not ready: taken out of the rotation", self.url)
        self.ready = ok
        return ok

    def load_blocking(self, name: str, path: str) -> str | None:
        """Load and unload LoRA `name` from `path` (the store probe), blocking; None, or vLLM's refusal."""
        try:
            response = httpx.post(
                f"{self.url}/v1/load_lora_adapter",
                json={"lora_name": name, "lora_path": path},
                timeout=_LOAD_TIMEOUT,
            )
            if response.status_code != 200:
                return from_vllm(response.status_code, response.content, what="loading").message
            httpx.post(f"{self.url}/v1/unload_lora_adapter", json={"lora_name": name}, timeout=30.0)
        except httpx.HTTPError as exc:
            return str(exc)
        return None

    def mark_down(self) -> None:
        """It failed a request: out of the rotation until a health check finds it ready again."""
        if self.ready:
            log.warning("vLLM server %s failed: taken out of the rotation", self.url)
        self.ready = False

    async def ensure_lora(self, name: str, path: str) -> None:
        """Load LoRA `name` from `path` unless it is loaded already (once, however many ask at once)."""
        if name in self.loras:
            return
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            if name in self.loras:
                return
            response = await self._post(
                "/v1/load_lora_adapter", {"lora_name": name, "lora_path": path}, _LOAD_TIMEOUT
            )
            if response.status_code != 200 and "already been loaded" not in response.text:
                raise from_vllm(response.status_code, response.content, what=f"loading LoRA {name}")
            self.loras.add(name)
            self.lora_loads += 1
            log.info("vLLM server %s: loaded %s from %s", self.url, name, path)

    async def unload_lora(self, name: str) -> None:
        """Unload LoRA `name`; one the server does not have (404) is already gone."""
        self.loras.discard(name)
        try:
            response = await self._post("/v1/unload_lora_adapter", {"lora_name": name}, 30.0)
        except ReplicaDown:
            return  # a server that comes back has no LoRA loaded
        if response.status_code not in (200, 404):
            log.warning("vLLM server %s: unloading %s: %s", self.url, name, response.text[:200])

    async def stream(self, path: str, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """POST a streaming request and yield its chunks; vLLM's refusal raises before the first."""
        try:
            async with self.client.stream("POST", path, json=body) as response:
                if response.status_code != 200:
                    raise from_vllm(response.status_code, await response.aread(), what="generating")
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        return
                    chunk = json.loads(data)
                    if "error" in chunk:  # failed midway: vLLM reports it in-band
                        raise from_vllm(500, data.encode(), what="generating")
                    yield chunk
        except httpx.TransportError as exc:
            raise ReplicaDown(f"vLLM server {self.url}: {exc}") from exc

    async def get_json(self, path: str) -> Any:
        try:
            response = await self.client.get(path)
        except httpx.TransportError as exc:
            raise ReplicaDown(f"vLLM server {self.url}: {exc}") from exc
        if response.status_code != 200:
            raise from_vllm(response.status_code, response.content, what=f"GET {path}")
        return response.json()

    async def post_json(self, path: str, body: dict[str, Any]) -> Any:
        response = await self._post(path, body, None)
        if response.status_code != 200:
            raise from_vllm(response.status_code, response.content, what=f"POST {path}")
        return response.json()

    async def _post(self, path: str, body: dict[str, Any], timeout: float | None) -> httpx.Response:
        try:
            return await self.client.post(path, json=body, timeout=timeout or _TIMEOUT)
        except httpx.TransportError as exc:
            raise ReplicaDown(f"vLLM server {self.url}: {exc}") from exc
