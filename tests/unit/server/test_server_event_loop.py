"""Nothing one request does may hold the event loop for long: the streams and `/health` it serves wait.

The costly parts of a request (tokenizing a prompt, the first look at an adapter, which reads its weights,
listing the store) run in worker threads, are bounded (a prompt too long for the context is refused from
its length; listings are cached by store version), or both. A real uvicorn server on a loopback port serves
an engine over a private store of many adapters.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
import pytest

from hotlora_adapters import AdapterStore

from support.tiny_server import ADAPTER_NAME, TINY_NAME, live_app, running_engine, tiny_settings

CHAT = "/v1/chat/completions"
JSON = {"content-type": "application/json"}
COPIES = 16
MIB = 2**20
BOUND_S = 1.0  # "a few hundred milliseconds", asserted generously


@pytest.fixture(scope="module")
def store(adapter_store: Path, tmp_path_factory: pytest.TempPathFactory) -> AdapterStore:
    """A private store holding the tiny adapter under many names (the tests add more)."""
    store = AdapterStore(tmp_path_factory.mktemp("busy-store"))
    for i in range(COPIES):
        shutil.copytree(adapter_store / ADAPTER_NAME, store.root / f"copy{i}")
    return store


@pytest.fixture(scope="module")
def live(
    tiny_dir: Path, store: AdapterStore, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[httpx.Client]:
    """The app over an engine of its own (on `store`), served by uvicorn on a free loopback port."""
    from hotlora_server.api import create_app

    settings = tiny_settings(tiny_dir, tmp_path_factory.mktemp("home"), store.root)
    with running_engine(settings) as engine, live_app(create_app(engine)) as client:
        yield client


def _add_adapter(store: AdapterStore, adapter_store: Path, name: str) -> None:
    """A new adapter in the store: the server has never read its weights."""
    store.register(name, adapter_store / ADAPTER_NAME)


def _on_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _spy(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str, calls: list[bool]) -> None:
    """Record, for each call of `owner.name`, whether it ran on the event loop."""
    original = getattr(owner, name)

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(_on_loop())
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, spy)


# -- each costly part, off the loop or bounded ----------------------------------------------------------


def test_a_prompt_too_long_by_its_characters_is_refused_before_it_is_tokenized(
    real_tokenizer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hotlora_server.engine.prompts import PromptTokenizer
    from hotlora_server.errors import ContextLengthExceededError
    from hotlora_server.types import GenerationRequest, SamplingParams

    prompts = PromptTokenizer(real_tokenizer, context_length=256)
    expected = real_tokenizer("word")["input_ids"]
    calls: list[bool] = []
    _spy(monkeypatch, type(real_tokenizer), "__call__", calls)
    request = GenerationRequest(
        request_id="r",
        model=TINY_NAME,
        sampling=SamplingParams(max_tokens=4),
        prompt="word " * (4 * MIB // 5),
    )
    with pytest.raises(ContextLengthExceededError) as refused:
        prompts.encode(request)
    assert calls == []
    assert "at least" in refused.value.message and "4194300 characters" in refused.value.message
    assert refused.value.param == "prompt"
    fits = GenerationRequest(
        request_id="r", model=TINY_NAME, sampling=SamplingParams(max_tokens=4), prompt="word"
    )
    assert prompts.encode(fits) == expected and calls == [False]


def test_costly_parts_of_requests_run_off_the_event_loop(
    live: httpx.Client, store: AdapterStore, adapter_store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tokenizing, and an adapter's first check (which reads its weights) on every route that may need it."""
    from hotlora_server.engine.catalog import AdapterCatalog
    from hotlora_server.engine.prompts import PromptTokenizer

    tokenized: list[bool] = []
    _spy(monkeypatch, PromptTokenizer, "encode", tokenized)
    chat = {"model": TINY_NAME, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    assert live.post(CHAT, json=chat).status_code == 200
    assert tokenized == [False]

    checked: list[bool] = []
    _spy(monkeypatch, AdapterCatalog, "_check", checked)
    calls: list[Callable[[], httpx.Response]] = [
        lambda: live.get("/v1/models"),
        lambda: live.get("/v1/adapters"),
        lambda: live.post(CHAT, json={**chat, "model": "no-such-adapter"}),  # its 404 lists what exists
        lambda: live.post(CHAT, json={**chat, "model": "first-look"}),  # the adapter of this very request
    ]
    for i, call in enumerate(calls):
        _add_adapter(store, adapter_store, "first-look" if i == 3 else f"new{i}")
        checked.clear()
        assert call().status_code in (200, 404)
        assert checked and not any(checked), (i, checked)


def test_schemas_compile_off_the_event_loop_and_the_engine_thread(
    live: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`response_format`'s grammar is compiled (or refused with a 400) in a worker thread: neither the loop
    nor the running batch waits for a schema."""
    from hotlora_server.engine.grammar import GrammarCompiler

    where: list[tuple[bool, str]] = []
    original = GrammarCompiler._compile

    def spy(self: GrammarCompiler, schema: str) -> Any:
        where.append((_on_loop(), threading.current_thread().name))
        return original(self, schema)

    monkeypatch.setattr(GrammarCompiler, "_compile", spy)
    chat = {"model": TINY_NAME, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    for schema, status in (({"enum": ["a", "b"]}, 200), ({"not": {}}, 400)):
        response_format = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
        assert live.post(CHAT, json={**chat, "response_format": response_format}).status_code == status
    assert len(where) == 2
    assert not any(on_loop or thread == "hotlora-engine" for on_loop, thread in where), where


def test_tokenizer_routes_run_off_the_event_loop(live: httpx.Client, monkeypatch: pytest.MonkeyPatch) -> None:
    """`/tokenize` and `/detokenize` use the engine's tokenizer in a worker thread, and a text the context
    could not hold is refused by its characters, without being tokenized."""
    from hotlora_server.engine.prompts import PromptTokenizer

    calls: list[bool] = []
    for name in ("tokenize", "detokenize"):
        _spy(monkeypatch, PromptTokenizer, name, calls)
    tokens = live.post("/tokenize", json={"messages": [{"role": "user", "content": "Hi"}]}).json()["tokens"]
    assert live.post("/detokenize", json={"tokens": tokens}).status_code == 200
    assert calls == [False, False]
    started = time.perf_counter()
    huge = live.post("/tokenize", json={"prompt": "word " * (4 * MIB // 5)})
    assert huge.status_code == 400 and huge.json()["error"]["code"] == "context_length_exceeded"
    assert "characters" in huge.json()["error"]["message"] and time.perf_counter() - started < BOUND_S * 5


def test_listings_describe_an_adapter_once_per_version(
    live: httpx.Client, store: AdapterStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hotlora_adapters import store as store_module

    def listed() -> set[str]:
        response = live.get("/v1/models")
        assert response.status_code == 200
        return {m["id"] for m in response.json()["data"]}

    listed()
    described: list[bool] = []
    _spy(monkeypatch, store_module, "describe", described)
    assert "copy3" in listed() and described == []  # nothing changed: no adapter read again
    assert live.get("/v1/adapters").status_code == 200 and described == []
    store.set_disabled("copy3", True)
    described.clear()  # what the store read for itself
    try:
        assert "copy3" not in listed() and len(described) == 1  # the one that changed, once
    finally:
        store.set_disabled("copy3", False)
    assert "copy3" in listed()


# -- all of them at once, next to a stream --------------------------------------------------------------


def _burst() -> list[tuple[str, str, bytes | None, int]]:
    """(method, path, body, expected status) of requests that each once held the loop for seconds."""
    hi = [{"role": "user", "content": "Hi"}]

    def body(**fields: Any) -> bytes:
        return json.dumps(fields).encode()

    burst = [("POST", CHAT, body(model=TINY_NAME, messages=list(range(16_000))), 400)]
    burst += [("POST", "/v1/completions", body(model=TINY_NAME, prompt="word " * (4 * MIB // 5)), 400)] * 2
    burst += [("POST", CHAT, body(model="tiny-adapter*1+" * (8 * MIB // 15), messages=hi), 400)] * 2
    burst += [("GET", "/v1/models", None, 200), ("GET", "/v1/adapters", None, 200)] * 5
    burst += [("POST", CHAT, body(model="no-such-adapter", messages=hi), 404)] * 5
    return burst


def test_a_burst_of_costly_requests_stalls_neither_a_stream_nor_health(
    live: httpx.Client, store: AdapterStore, adapter_store: Path
) -> None:
    base = str(live.base_url)
    chunks: list[float] = []
    health: list[float] = []
    streaming, done = threading.Event(), threading.Event()

    def stream() -> None:
        body = {
            "model": TINY_NAME,
            "messages": [{"role": "user", "content": "go on and on"}],
            "max_tokens": 200,
            "temperature": 0,
            "stream": True,
        }
        with (
            httpx.Client(base_url=base, timeout=120) as client,
            client.stream("POST", CHAT, json=body) as response,
        ):
            for line in response.iter_lines():
                if line.startswith("data:"):
                    chunks.append(time.perf_counter())
                    if len(chunks) == 5:
                        streaming.set()
        streaming.set()

    def watch_health() -> None:
        with httpx.Client(base_url=base, timeout=120) as client:
            while not done.is_set():
                asked = time.perf_counter()
                assert client.get("/health").status_code == 200
                health.append(time.perf_counter() - asked)
                time.sleep(0.02)

    burst = _burst()
    _add_adapter(store, adapter_store, "burst-new")  # the burst's listings read its weights first
    with ThreadPoolExecutor(10) as pool:
        watcher = pool.submit(watch_health)
        streamer = pool.submit(stream)
        assert streaming.wait(60)
        answers = [
            pool.submit(live.request, method, path, content=body, headers=JSON)
            for method, path, body, _ in burst
        ]
        statuses = [answer.result().status_code for answer in answers]
        streamer.result()
        done.set()
        watcher.result()
    assert statuses == [expected for *_, expected in burst]
    gaps = [later - earlier for earlier, later in pairwise(chunks)]
    assert len(chunks) > 5 and max(gaps) < BOUND_S, f"largest gap between stream chunks: {max(gaps):.2f} s"
    assert max(health) < BOUND_S, f"slowest /health: {max(health):.2f} s"
