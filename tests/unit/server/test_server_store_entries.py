"""The store's own entries are confined to the store like imports are: a symlink dropped into the store
that points at a folder outside it is listed `invalid` with the reason and never served, read or written
through.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import ADAPTER_NAME, running_engine, tiny_settings

MESSAGES = [{"role": "user", "content": "Hi"}]


@pytest.fixture
def served(tiny_dir: Path, tmp_path: Path) -> Iterator[tuple[Any, Path]]:
    """A client of a private engine over an empty store."""
    from fastapi.testclient import TestClient

    from hotlora_server.api import create_app

    store = tmp_path / "store"
    store.mkdir()
    with running_engine(tiny_settings(tiny_dir, tmp_path / "home", store)) as engine, TestClient(create_app(engine)) as client:
        yield client, store


def greedy(client: Any, model: str) -> str:
    body = {"model": model, "messages": MESSAGES, "max_tokens": 8, "temperature": 0}
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    return str(response.json()["choices"][0]["message"]["content"])


def test_a_symlink_to_a_folder_outside_the_store_is_listed_invalid_and_never_served(
    served: tuple[Any, Path], adapter_store: Path, tmp_path: Path, openai_error: Any
) -> None:
    client, store = served
    outside = tmp_path / "outside" / "secret"
    shutil.copytree(adapter_store / ADAPTER_NAME, outside)
    (store / "linked").symlink_to(outside, target_is_directory=True)
    shutil.copytree(adapter_store / ADAPTER_NAME, store / "real")
    (store / "alias").symlink_to(store / "real", target_is_directory=True)  # within the store: fine
    reason = "outside the adapter store"

    cards = {card["id"]: card for card in client.get("/v1/adapters").json()["data"]}
    assert cards["linked"]["status"] == "invalid" and reason in cards["linked"]["error"]
    assert cards["alias"]["status"] == "available" and cards["real"]["status"] == "available"
    assert "linked" not in {m["id"] for m in client.get("/v1/models").json()["data"]}
    chat = client.post("/v1/chat/completions", json={"model": "linked", "messages": MESSAGES, "max_tokens": 1})
    assert reason in openai_error(chat, 400, param="model")["message"]
    assert reason in openai_error(client.post("/v1/adapters", json={"name": "linked"}), 400)["message"]
    assert reason in openai_error(client.delete("/v1/adapters/linked"), 400)["message"]  # would write outside
    assert greedy(client, "alias") == greedy(client, "real")

    assert client.delete("/v1/adapters/linked?purge=true").status_code == 200  # removes the link only
    assert not (store / "linked").exists() and sorted(p.name for p in outside.iterdir()) == sorted(
        p.name for p in (adapter_store / ADAPTER_NAME).iterdir()
    )
