"""Where the adapter store lives by default.

Resolved from an explicit environment mapping (never `os.environ` at import time), so the server's
settings object and the trainer decide it once and tests can pass their own mapping.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

HOME_ENV = "HOTLORA_HOME"
DEFAULT_HOME = "~/.local/share/hotlora"
STORE_SUBDIR = "adapters"


def default_home_dir(env: Mapping[str, str]) -> Path:
    """`$HOTLORA_HOME`, or `~/.local/share/hotlora` when unset or empty; `~` expands with `env`'s HOME."""
    raw = env.get(HOME_ENV) or DEFAULT_HOME
    return _expand_user(raw, env)


def default_store_dir(env: Mapping[str, str]) -> Path:
    """The default adapter store: `$HOTLORA_HOME/adapters` (`~/.local/share/hotlora/adapters`)."""
    return default_home_dir(env) / STORE_SUBDIR


def _expand_user(raw: str, env: Mapping[str, str]) -> Path:
    if raw == "~" or raw.startswith("~/"):
        home = env.get("HOME")
        base = Path(home) if home else Path.home()
        return base / raw[2:] if raw != "~" else base
    return Path(raw).expanduser()
