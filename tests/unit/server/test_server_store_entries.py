"""The store's own entries: confined to the store like imports are, and served anew whenever their files change.

- A symlink dropped into the store that points at a folder outside it is listed `invalid` with the reason
  and never served, read or written through.
- A folder replaced under the same name (`rm -r` + `cp -r`, or a copy renamed over the old name) is served
  with its new weights within 2 s and without any call, also where file metadata cannot tell the two
  apart: simulated here as a file system (as FUSE and network ones can be) whose inode numbers follow the
  path and whose ctime mirrors mtime, with both copies carrying the same mtimes (`shutil.copytree` keeps
  the source's).
"""

from __future__ import annotations

import os
import shutil
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from support.tiny_server import ADAPTER_NAME, TINY_NAME, running_engine, save_tiny_adapter, tiny_settings

MESSAGES = [{"role": "user", "content": "Hi"}]
SAME_MTIME_NS = 1_700_000_000 * 10**9


@pytest.fixture
def served(tiny_dir: Path, tmp_path: Path) -> Iterator[tuple[Any, Path]]:
    """A client of a private engine over an empty store."""
    from fastapi.testclient import TestClient

    from hotlora_server.api import create_app

    store = tmp_path / "store"
    store.mkdir()
    with (
        running_engine(tiny_settings(tiny_dir, tmp_path / "home", store)) as engine,
        TestClient(create_app(engine)) as client,
    ):
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
    chat = client.post(
        "/v1/chat/completions", json={"model": "linked", "messages": MESSAGES, "max_tokens": 1}
    )
    assert reason in openai_error(chat, 400, param="model")["message"]
    assert reason in openai_error(client.post("/v1/adapters", json={"name": "linked"}), 400)["message"]
    assert reason in openai_error(client.delete("/v1/adapters/linked"), 400)["message"]  # would write outside
    assert greedy(client, "alias") == greedy(client, "real")

    assert client.delete("/v1/adapters/linked?purge=true").status_code == 200  # removes the link only
    assert not (store / "linked").exists() and sorted(p.name for p in outside.iterdir()) == sorted(
        p.name for p in (adapter_store / ADAPTER_NAME).iterdir()
    )


@pytest.fixture
def twins(adapter_store: Path, real_tokenizer: Any, tmp_path: Path) -> tuple[Path, Path]:
    """Two adapters of the same shapes (so the same file sizes) with other weights and equal mtimes."""
    first, second = tmp_path / "library" / "first", tmp_path / "library" / "second"
    shutil.copytree(adapter_store / ADAPTER_NAME, first, ignore=shutil.ignore_patterns("hotlora.json"))
    save_tiny_adapter(second, real_tokenizer, seed=7, r=4, target_modules="all-linear")
    for folder in (first, second):
        for path in (*folder.iterdir(), folder):
            os.utime(path, ns=(SAME_MTIME_NS, SAME_MTIME_NS))
    assert (first / "adapter_config.json").read_bytes() == (second / "adapter_config.json").read_bytes()
    assert (first / "adapter_model.safetensors").stat().st_size == (
        second / "adapter_model.safetensors"
    ).stat().st_size
    return first, second


def _metadata_blind(real: Callable[..., os.stat_result]) -> Callable[..., os.stat_result]:
    """`os.stat` of a file system whose inode numbers follow the path and whose ctime mirrors mtime."""

    def stat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        st = real(path, *args, **kwargs)
        fields = list(st[:10])
        if not isinstance(path, int):
            fields[1] = zlib.crc32(os.fsencode(os.path.abspath(path)))
        fields[9] = fields[8]
        extra = {
            "st_atime": st.st_atime,
            "st_mtime": st.st_mtime,
            "st_ctime": st.st_mtime,
            "st_atime_ns": st.st_atime_ns,
            "st_mtime_ns": st.st_mtime_ns,
            "st_ctime_ns": st.st_mtime_ns,
            "st_blksize": st.st_blksize,
            "st_blocks": st.st_blocks,
            "st_rdev": st.st_rdev,
        }
        return os.stat_result(fields, extra)

    return stat


def _rm_and_copy(source: Path, store: Path, name: str) -> None:
    shutil.rmtree(store / name)
    shutil.copytree(source, store / name)


def _renamed_over(source: Path, store: Path, name: str) -> None:
    shutil.copytree(source, store / ".incoming")
    shutil.rmtree(store / name)
    (store / ".incoming").rename(store / name)


@pytest.mark.parametrize("replace", [_rm_and_copy, _renamed_over], ids=["rm-and-copy", "renamed-over"])
def test_a_replaced_folder_is_served_with_its_new_weights_within_two_seconds(
    served: tuple[Any, Path],
    twins: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
    replace: Callable[[Path, Path, str], None],
) -> None:
    client, store = served
    first, second = twins
    monkeypatch.setattr(os, "stat", _metadata_blind(os.stat))
    shutil.copytree(first, store / "x")
    shutil.copytree(second, store / "reference")
    old, new = greedy(client, "x"), greedy(client, "reference")
    assert old != new != greedy(client, TINY_NAME)
    version = client.get("/v1/adapters/x").json()["version"]

    replace(second, store, "x")
    replaced = time.monotonic()
    while (served_now := greedy(client, "x")) != new:
        assert served_now == old, "neither the old weights nor the new ones"
        assert time.monotonic() - replaced < 2.0, (
            "the old weights are still served 2 s after the folder was replaced"
        )
        time.sleep(0.1)
    assert client.get("/v1/adapters/x").json()["version"] != version


def test_an_adapter_card_shows_its_rank_and_targets_from_its_peft_config(
    served: tuple[Any, Path], real_tokenizer: Any
) -> None:
    """Any PEFT adapter, not only one hotlora trained (whose manifest says as much): the web app's table."""
    client, store = served
    save_tiny_adapter(
        store / "peft-only",
        real_tokenizer,
        seed=3,
        r=4,
        target_modules=["q_proj", "v_proj"],
        rank_pattern={"q_proj": 6},
    )
    card = client.get("/v1/adapters/peft-only").json()
    assert card["manifest"] is None
    assert card["rank"] == 6 and sorted(card["target_modules"]) == ["q_proj", "v_proj"]
