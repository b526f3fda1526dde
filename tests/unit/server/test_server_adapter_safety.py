"""Hostile adapter input over HTTP: bad names, unsafe or broken folders, paths outside the allowed ones.

Every refusal is a 400 in OpenAI's error shape that says why, and leaves the store and the loaded
adapters exactly as they were. The engine is a private one over its own copy of the store with one
allowed import folder, so imports, purges and dropped-in folders cannot disturb the session engine.
Broken folders are real PEFT adapters (saved by conftest) with one defect written into them.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from hotlora_adapters import CONFIG_FILENAME, WEIGHTS_FILENAME, AdapterStore

from support.tiny_server import ADAPTER_NAME, TINY_NAME, running_engine, tiny_settings

NAME_RULE = "an adapter name is 1 to 64 characters"
BAD_NAMES = ["a/b", "../escape", "..", "a\x00b", "a" * 1000, "Upper", ".hidden", "a b"]
MESSAGES = [{"role": "user", "content": "Hi"}]


@dataclass(frozen=True)
class Dirs:
    store: Path
    allowed: Path


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory, adapter_store: Path) -> Dirs:
    root = tmp_path_factory.mktemp("adapter-safety")
    found = Dirs(store=root / "store", allowed=root / "allowed")
    shutil.copytree(adapter_store, found.store)
    found.allowed.mkdir()
    return found


@pytest.fixture(scope="module")
def admin(tiny_dir: Path, dirs: Dirs, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A client of an engine that imports adapters from `dirs.allowed` only."""
    from fastapi.testclient import TestClient

    from hotlora_server.api import create_app

    home = tmp_path_factory.mktemp("adapter-safety-home")
    settings = tiny_settings(tiny_dir, home, dirs.store, allow_adapter_dir=(str(dirs.allowed),))
    with running_engine(settings) as engine, TestClient(create_app(engine)) as client:
        yield client


@pytest.fixture(scope="module")
def good_source(dirs: Dirs) -> Path:
    return good_copy(dirs, dirs.allowed, "good-source")


def state(client: Any, store: Path) -> tuple[list[str], dict[str, str], list[tuple[str, str]]]:
    """What a refused request must not change: the store's entries and versions, and what is loaded."""
    entries = sorted(n for n in os.listdir(store) if n != ".lock")
    listed = client.get("/v1/adapters").json()["data"]
    return entries, AdapterStore(store).versions(), [(card["id"], card["status"]) for card in listed]


def good_copy(dirs: Dirs, parent: Path, name: str) -> Path:
    """A copy of the store's real PEFT adapter (without hotlora's manifest) as `<parent>/<name>`."""
    dest = parent / name
    shutil.copytree(dirs.store / ADAPTER_NAME, dest, ignore=shutil.ignore_patterns("hotlora.json"))
    return dest


# -- folder defects: each turns a good adapter folder into one that must be refused ------------------


def _rewrite_tensors(change: Callable[[str, np.ndarray], np.ndarray]) -> Callable[[Path], None]:
    def rewrite(folder: Path) -> None:
        weights = folder / WEIGHTS_FILENAME
        tensors = load_file(weights)
        save_file(
            {key: change(key, value) for key, value in tensors.items()}, weights, metadata={"format": "pt"}
        )

    return rewrite


def _poison(value: float) -> Callable[[str, np.ndarray], np.ndarray]:
    def change(key: str, tensor: np.ndarray) -> np.ndarray:
        if key.endswith("layers.1.self_attn.v_proj.lora_B.weight"):
            tensor = tensor.copy()
            tensor[-1, -1] = value
        return tensor

    return change


def _widen_lora_a(key: str, tensor: np.ndarray) -> np.ndarray:
    """Made for a wider base: every lora_A reads 32 more input features than the base has."""
    if key.endswith("lora_A.weight"):
        return np.zeros((tensor.shape[0], tensor.shape[1] + 32), tensor.dtype)
    return tensor


def _config(**changes: Any) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        path = folder / CONFIG_FILENAME
        path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))

    return edit


def _retyped(dtype: str) -> Callable[[Path], None]:
    """Every tensor's dtype in the header renamed (the data left as is): a size nothing can check."""

    def retype(folder: Path) -> None:
        weights = folder / WEIGHTS_FILENAME
        data = weights.read_bytes()
        length = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + length])
        for name, entry in header.items():
            if name != "__metadata__":
                entry["dtype"] = dtype
        raw = json.dumps(header).encode()
        raw += b" " * (-len(raw) % 8)
        weights.write_bytes(len(raw).to_bytes(8, "little") + raw + data[8 + length :])

    return retype


def _pickled(filename: str) -> Callable[[Path], None]:
    return lambda folder: (folder / WEIGHTS_FILENAME).rename(folder / filename)


DEFECTS: dict[str, tuple[Callable[[Path], None], str]] = {
    "pickle-bin": (_pickled("adapter_model.bin"), "pickle weights are refused"),
    "pickle-pt": (_pickled("adapter_model.pt"), "pickle weights are refused"),
    "pickle-pkl": (_pickled("adapter_model.pkl"), "pickle weights are refused"),
    "wrong-shapes": (_rewrite_tensors(_widen_lora_a), "does not fit the base model"),
    "nan-weights": (_rewrite_tensors(_poison(float("nan"))), "NaN or infinite values in 1 tensor(s)"),
    "inf-weights": (_rewrite_tensors(_poison(float("-inf"))), "NaN or infinite values in 1 tensor(s)"),
    "auto-mapping-code": (
        _config(auto_mapping={"base_model_class": "Evil", "parent_library": "evil.modeling_evil"}),
        "custom code",
    ),
    "trust-remote-code": (_config(trust_remote_code=True), "remote code is refused"),
    "megatron-module": (
        _config(megatron_config={"tensor_model_parallel_size": 1}, megatron_core="evil"),
        "megatron",
    ),
    "not-lora": (_config(peft_type="IA3"), "only LoRA adapters"),
    "base-rewriting-init": (_config(init_lora_weights="pissa"), "rewrite the base model's weights"),
    "layer-replication": (_config(layer_replication=[[0, 2], [1, 2]]), "rewrite the base model's layer list"),
    "base-biases": (_config(bias="all"), "trained biases of the base model's own layers"),
    "unknown-field-set": (_config(future_option={"on": True}), "future_option"),
    "rank-above-limit": (_config(r=200000), "--max-lora-rank"),  # PEFT would allocate at r=200000 first
    "unknown-dtype": (_retyped("Q9"), "unknown dtype 'Q9'"),
    "lookahead-pattern": (_config(target_modules="(?!.*mlp).*_proj"), "lookahead"),
}
LOAD_ROUTES = {
    "hotlora": ("/v1/adapters", "name", "path"),
    "vllm": ("/v1/load_lora_adapter", "lora_name", "lora_path"),
}


def load_body(route: str, name: str, path: Path | str | None = None) -> tuple[str, dict[str, Any]]:
    url, name_field, path_field = LOAD_ROUTES[route]
    return url, {name_field: name} | ({path_field: str(path)} if path is not None else {})


def test_a_good_folder_imports_and_purges(admin: Any, dirs: Dirs) -> None:
    """The control: the folders below are refused for their defect, not because imports never work."""
    before = state(admin, dirs.store)
    source = good_copy(dirs, dirs.allowed, "good-import")
    response = admin.post("/v1/adapters", json={"name": "good-import", "path": str(source)})
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "resident"
    assert admin.delete("/v1/adapters/good-import?purge=true").status_code == 200
    assert state(admin, dirs.store) == before


@pytest.mark.parametrize("route", list(LOAD_ROUTES))
@pytest.mark.parametrize("defect", list(DEFECTS))
def test_a_broken_or_unsafe_folder_is_refused_with_its_reason(
    admin: Any, dirs: Dirs, openai_error: Any, defect: str, route: str
) -> None:
    damage, reason = DEFECTS[defect]
    name = f"{defect}-{route}"
    source = good_copy(dirs, dirs.allowed, name)
    damage(source)
    before = state(admin, dirs.store)

    url, body = load_body(route, name, source)
    error = openai_error(admin.post(url, json=body), 400)
    assert error["type"] == "invalid_request_error"
    assert reason in error["message"]
    assert state(admin, dirs.store) == before
    openai_error(admin.get(f"/v1/adapters/{name}"), 404)


@pytest.mark.parametrize("defect", list(DEFECTS))
def test_a_broken_folder_copied_into_the_store_is_listed_invalid_and_never_served(
    admin: Any, dirs: Dirs, openai_error: Any, defect: str
) -> None:
    damage, reason = DEFECTS[defect]
    name = f"dropped-{defect}"
    folder = good_copy(dirs, dirs.store, name)  # as a user copying a folder in, without any call
    damage(folder)
    try:
        before = state(admin, dirs.store)
        card = admin.get(f"/v1/adapters/{name}").json()
        assert card["status"] == "invalid" and reason in card["error"]
        chat = admin.post("/v1/chat/completions", json={"model": name, "messages": MESSAGES, "max_tokens": 1})
        assert reason in openai_error(chat, 400, param="model")["message"]
        assert reason in openai_error(admin.post("/v1/adapters", json={"name": name}), 400)["message"]
        assert state(admin, dirs.store) == before  # refused, not deleted: it is the user's folder
    finally:
        shutil.rmtree(folder)


# -- paths outside the allowed folders: each returns the path a client sends --------------------------


def _outside(dirs: Dirs, outside: Path, tag: str) -> Path:
    return good_copy(dirs, outside, tag)


def _dot_dot(dirs: Dirs, outside: Path, tag: str) -> Path:
    target = _outside(dirs, outside, tag)
    return dirs.allowed / os.path.relpath(target, dirs.allowed)  # allowed/../../<outside>/<tag>


def _symlinked_folder(dirs: Dirs, outside: Path, tag: str) -> Path:
    link = dirs.allowed / tag
    link.symlink_to(_outside(dirs, outside, tag), target_is_directory=True)
    return link


def _symlinked_file(filename: str) -> Callable[[Dirs, Path, str], Path]:
    def make(dirs: Dirs, outside: Path, tag: str) -> Path:
        target = _outside(dirs, outside, tag) / filename
        folder = good_copy(dirs, dirs.allowed, tag)
        (folder / filename).unlink()
        (folder / filename).symlink_to(target)
        return folder

    return make


OUTSIDE = "outside the folders adapters may be imported from"
ESCAPES: dict[str, tuple[Callable[[Dirs, Path, str], Path | str], str]] = {
    "outside": (_outside, OUTSIDE),
    "dot-dot": (_dot_dot, OUTSIDE),
    "symlinked-folder": (_symlinked_folder, OUTSIDE),
    "symlinked-weights": (_symlinked_file(WEIGHTS_FILENAME), f"{WEIGHTS_FILENAME} is a symlink to"),
    "symlinked-config": (_symlinked_file(CONFIG_FILENAME), f"{CONFIG_FILENAME} is a symlink to"),
    "nul-byte": (lambda dirs, _outside, tag: f"{dirs.allowed}/{tag}\x00x", "NUL character"),
}


@pytest.mark.parametrize("route", list(LOAD_ROUTES))
@pytest.mark.parametrize("escape", list(ESCAPES))
def test_paths_outside_the_allowed_folders_are_refused(
    admin: Any, dirs: Dirs, openai_error: Any, tmp_path: Path, escape: str, route: str
) -> None:
    make, reason = ESCAPES[escape]
    path = make(dirs, tmp_path, f"{escape}-{route}")  # pytest's tmp_path is outside `allowed`
    before = state(admin, dirs.store)

    url, body = load_body(route, "escapee", path)
    error = openai_error(admin.post(url, json=body), 400, param="path")
    assert reason in error["message"]
    assert state(admin, dirs.store) == before
    assert not (dirs.store / "escapee").exists()


# -- names: every route refuses what cannot be a single safe folder name, before touching anything ----


def in_path(name: str) -> str:
    """`name` as one URL path segment, every special byte escaped (`..` too, which clients would collapse)."""
    return quote(name, safe="").replace(".", "%2E")


def name_requests(bad: str, source: Path) -> list[tuple[str, str, dict[str, Any] | None]]:
    """(method, url, JSON body) of every adapter-management route, with `bad` as the adapter name
    (and, for the loads, the valid folder `source`, so that only the name is wrong)."""
    blend = {"adapters": [{"name": ADAPTER_NAME, "weight": 0.5}]}
    requests: list[tuple[str, str, dict[str, Any] | None]] = [
        ("POST", "/v1/adapters", {"name": bad}),
        ("POST", "/v1/adapters", {"name": bad, "path": str(source)}),
        ("POST", "/v1/load_lora_adapter", {"lora_name": bad, "lora_path": str(source)}),
        ("POST", "/v1/unload_lora_adapter", {"lora_name": bad}),
        ("POST", "/v1/adapters/blend", {"name": bad, **blend}),
        ("POST", "/v1/adapters/blend", {"name": "fine-blend", "adapters": [{"name": bad, "weight": 1.0}]}),
    ]
    if bad:  # an empty path segment is the listing route
        requests += [
            ("GET", f"/v1/adapters/{in_path(bad)}", None),
            ("DELETE", f"/v1/adapters/{in_path(bad)}", None),
            ("DELETE", f"/v1/adapters/{in_path(bad)}?purge=true", None),
        ]
    return requests


@pytest.mark.parametrize("bad", [*BAD_NAMES, ""], ids=repr)
def test_bad_names_are_400_with_the_rule_on_every_management_route(
    admin: Any, dirs: Dirs, good_source: Path, openai_error: Any, bad: str
) -> None:
    before = state(admin, dirs.store)
    for method, url, body in name_requests(bad, good_source):
        error = openai_error(admin.request(method, url, json=body), 400)
        assert error["type"] == "invalid_request_error", (method, url)
        assert NAME_RULE in error["message"], (method, url, error)
        assert len(error["message"]) < 400, "a hostile name is not echoed in full"
    assert state(admin, dirs.store) == before
    assert not (dirs.store.parent / "escape").exists()


@pytest.mark.parametrize("raw", ["/v1/adapters/a/b", "/v1/adapters/a%2Fb", "/v1/adapters/%2E%2E%2Fstore"])
def test_slashes_in_the_path_parameter_are_400_not_a_missing_route(
    admin: Any, openai_error: Any, raw: str
) -> None:
    for method in ("GET", "DELETE"):
        error = openai_error(admin.request(method, raw), 400, param="name")
        assert "path separator" in error["message"]


@pytest.mark.parametrize("bad", BAD_NAMES, ids=repr)
def test_a_chat_model_that_cannot_be_an_adapter_is_400(
    admin: Any, dirs: Dirs, openai_error: Any, bad: str
) -> None:
    before = state(admin, dirs.store)
    for fields in (
        {"model": bad},
        {"model": f"{ADAPTER_NAME}*0.5+{bad}"},
        {"model": TINY_NAME, "adapters": [{"name": bad, "weight": 1.0}]},
    ):
        response = admin.post("/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 1, **fields})
        error = openai_error(response, 400)
        assert NAME_RULE in error["message"], (fields, error)
    assert state(admin, dirs.store) == before


def test_valid_but_unknown_names_stay_404(admin: Any, openai_error: Any) -> None:
    openai_error(admin.get("/v1/adapters/no-such-adapter"), 404)
    openai_error(admin.delete("/v1/adapters/no-such-adapter"), 404)
    chat = admin.post("/v1/chat/completions", json={"model": "gpt-4o", "messages": MESSAGES, "max_tokens": 1})
    openai_error(chat, 404, code="model_not_found")


def test_the_catalog_reads_an_adapter_again_only_when_it_changed(
    tiny_dir: Path, adapter_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every request looks its adapter up: a few `stat`s, unless the folder changed since the last read."""
    from hotlora_server.errors import NotFoundError

    store = tmp_path / "store"
    shutil.copytree(adapter_store / ADAPTER_NAME, store / "x")
    with running_engine(tiny_settings(tiny_dir, tmp_path, store)) as engine:
        _, catalog = engine._require_ready()
        reads: list[str] = []
        read = catalog.store.get
        monkeypatch.setattr(catalog.store, "get", lambda name: reads.append(name) or read(name))
        first = catalog.get("x")
        seen = len(reads)
        assert catalog.get("x") is first and catalog.get("x") is first and len(reads) == seen
        catalog.store.set_disabled("x", True)
        with pytest.raises(NotFoundError, match="disabled"):
            catalog.get("x")
        catalog.store.set_disabled("x", False)
        assert catalog.get("x").version != first.version
        catalog.store.delete("x")
        with pytest.raises(NotFoundError, match="does not exist"):
            catalog.get("x")
