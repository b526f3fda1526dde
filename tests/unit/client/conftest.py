"""Fixtures for the client's unit tests: a scripted real HTTP server (`tests/support/scripted_server.py`)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from support.scripted_server import ScriptedServer, running


@pytest.fixture
def scripted() -> Iterator[ScriptedServer]:
    with running() as server:
        yield server
