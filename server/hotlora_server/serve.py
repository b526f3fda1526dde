"""Run the server from one `Settings`: refuse settings that must not be served, then serve until a signal.

What builds the settings (the `hotlora` command, an embedder, a test) is not the server's business: this
module takes them ready-made.
"""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Callable
from typing import Protocol

from .network import is_loopback
from .settings import Settings
from .types import EngineClient

log = logging.getLogger("hotlora")


def check_servable(settings: Settings) -> Settings:
    """`settings` if they may be served; `SystemExit` with the reason if not (listening beyond loopback
    without an API key), and a loud warning for the risky choices the flags allow."""
    problem = settings.engine_problem() or settings.exposure_problem()
    if problem is not None:
        raise SystemExit(f"hotlora: {problem}")
    if settings.api_key is None and not is_loopback(settings.host):  # allowed by --insecure-no-api-key
        log.warning(
            "SERVING ON %s:%d WITHOUT AN API KEY (--insecure-no-api-key): anyone who can reach this port "
            "can use this server and change or delete its adapters",
            settings.host,
            settings.port,
        )
    if settings.api_key is None and "*" in settings.allowed_origins:
        log.warning(
            "--allowed-origins '*' without an API key: any web page a user of this machine opens can "
            "use this server and change or delete its adapters"
        )
    return settings


class ServedEngine(EngineClient, Protocol):
    """An engine `serve` runs: the API's `EngineClient`, started and stopped here, with the error that
    stopped it (None: it did not fail)."""

    error: BaseException | None

    def start(self) -> None: ...

    def stop(self) -> None: ...


def _engine(settings: Settings, fatal: Callable[[BaseException], None]) -> ServedEngine:
    """The engine `--engine` names; each imports only what it needs (the vLLM engine no torch)."""
    if settings.engine == "vllm":
        from .vllm.engine import VllmEngine

        return VllmEngine(settings, on_fatal=fatal)
    from .engine.engine import Engine

    return Engine(settings, on_fatal=fatal)


def serve(settings: Settings) -> int:
    """Serve until SIGINT/SIGTERM; then stop accepting connections, let in-flight requests finish (up to
    `--shutdown-timeout`), stop the engine and return 0 (1 if the engine failed)."""
    check_servable(settings)  # before anything loads
    import uvicorn
    from sse_starlette.sse import AppStatus

    from .api import create_app
    from .api.serving_fine_tuning import ServingFineTuning

    # sse-starlette ends every open stream at the first signal; uvicorn's graceful shutdown drains instead
    AppStatus.disable_automatic_graceful_drain()

    server: uvicorn.Server | None = None

    def fatal(_: BaseException) -> None:
        if server is not None:
            server.should_exit = True

    engine = _engine(settings, fatal)
    fine_tuning = ServingFineTuning.from_settings(settings, engine) if settings.fine_tuning else None
    app = create_app(
        engine,
        api_key=settings.api_key,
        metrics_public=settings.metrics_public,
        max_body_bytes=settings.max_body_bytes,
        allowed_hosts=settings.host_check,
        allowed_origins=settings.allowed_origins,
        allowed_methods=settings.allowed_methods,
        allowed_headers=settings.allowed_headers,
        tool_call_parser=settings.tool_call_parser,
        fine_tuning=fine_tuning,
        web_app=settings.web_app,
    )
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=None,
        access_log=False,  # our access log carries the request id
        # uvicorn annotates an int; it hands the value to asyncio.timeout, which takes float seconds
        timeout_graceful_shutdown=settings.shutdown_timeout,  # type: ignore[arg-type]
    )
    server = uvicorn.Server(config)
    engine.start()
    # uvicorn drains, then re-raises SIGINT/SIGTERM into the handlers it found: with these, the engine
    # stops and the command exits 0 rather than dying by the signal (or with a KeyboardInterrupt trace)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    server.run()
    engine.stop()
    if engine.error is not None:
        print(f"hotlora: {engine.error}", file=sys.stderr)
        return 1
    return 0
