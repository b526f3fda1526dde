"""Logging set-up: every line carries the id of the request it belongs to; text or JSON lines.

The HTTP layer sets `request_id` for the task serving a request; the engine thread, which serves many
requests, passes the id explicitly (`extra={"request_id": ...}`). Headers (and so API keys) are never logged.
"""

from __future__ import annotations

import json
import logging
import time
from contextvars import ContextVar
from typing import Literal

request_id: ContextVar[str] = ContextVar("hotlora_request_id", default="-")

# fields the access log adds with `extra=`; JSON lines keep them as their own keys
ACCESS_FIELDS = ("method", "path", "status", "duration_ms")
_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"


class _RequestIdFilter(logging.Filter):
    """Give every record a `request_id`: its own (engine thread) or the serving task's."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "request_id", None):
            record.request_id = request_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers: time, level, logger, message, request id, access fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
        }
        entry.update({key: getattr(record, key) for key in ACCESS_FIELDS if hasattr(record, key)})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str, fmt: Literal["text", "json"]) -> None:
    """Route every logger (uvicorn's too) through one root handler in the chosen format."""
    handler = logging.StreamHandler()
    handler.addFilter(_RequestIdFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(_TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
