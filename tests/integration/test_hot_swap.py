"""Hot-swapping end to end: adapters registered, loaded, unloaded, blended and merged while the real server runs."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from hotlora_adapters import AdapterStore

from support.live_server import API_KEY, BASE_ID, RunningServer, save_random_lora, serving

pytestmark = pytest.mark.integration

QUESTION = [{"role": "user", "content": "Name three colours."}]
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path) -> Path:
    """Adapters built once: `a` and `b` (r=8), `c` (r=4), `a2` (a's name, other weights), and gentle
    `g1`, `g2` whose confident predictions survive the 4-bit kernel's rounding (for the merge test)."""
    root = tmp_path_factory.mktemp("library")
    for name, seed, rank in (("a", 1, 8), ("b", 2, 8), ("c", 3, 4), ("a2", 4, 8)):
        save_random_lora(smollm2_dir, root / name, seed=seed, r=rank)
    for name, seed in (("g1", 5), ("g2", 6)):
        save_random_lora(smollm2_dir, root / name, seed=seed, strength=0.25)
    return root


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory, library: Path) -> dict[str, Path]:
    store = tmp_path_factory.mktemp("hot-store")
    for name in ("a", "b", "c"):
        shutil.copytree(library / name, store / name)
    allowed = tmp_path_factory.mktemp("allowed")
    outside = tmp_path_factory.mktemp("outside")
    shutil.copytree(library / "b", allowed / "incoming")
    shutil.copytree(library / "b", outside / "secret")
    return {"store": store, "allowed": allowed, "outside": outside}


@pytest.fixture(scope="module")
def hot(
    tmp_path_factory: pytest.TempPathFactory, hotlora_home: Path, dirs: dict[str, Path]
) -> Iterator[RunningServer]:
    log = tmp_path_factory.mktemp("hot-logs") / "server.log"
    args = [
        "--home",
        str(hotlora_home),
        "--adapters-dir",
        str(dirs["store"]),
        "--api-key",
        API_KEY,
        "--allow-adapter-dir",
        str(dirs["allowed"]),
        "--max-loaded-adapters",
        "3",
        "--merge-policy",
        "never",
    ]
    with serving(args, log) as running:
        yield running


@pytest.fixture
def http(hot: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=hot.base_url, headers=AUTH, timeout=120) as client:
        yield client


def greedy(http: httpx.Client, model: str, max_tokens: int = 10, **extra: object) -> str:
    body = {"model": model, "messages": QUESTION, "temperature": 0, "max_tokens": max_tokens, **extra}
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["message"]["content"]


def adapters(http: httpx.Client) -> dict[str, dict]:
    return {a["id"]: a for a in http.get("/v1/adapters").json()["data"]}


def error_of(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error["message"]


def test_copied_in_adapter_is_served_within_two_seconds(
    http: httpx.Client, dirs: dict[str, Path], library: Path
) -> None:
    shutil.copytree(
        library / "b", dirs["store"] / ".copying"
    )  # copy under a hidden name, then rename: as `cp` + `mv`
    (dirs["store"] / ".copying").rename(dirs["store"] / "fresh")
    deadline = time.monotonic() + 2.0
    while "fresh" not in {m["id"] for m in http.get("/v1/models").json()["data"]}:
        assert time.monotonic() < deadline, "a copied-in adapter was not listed within 2 s"
        time.sleep(0.1)
    assert greedy(http, "fresh") == greedy(http, "b")  # same weights as b, served with no call at all


def test_removed_adapter_is_unloaded(http: httpx.Client, dirs: dict[str, Path], library: Path) -> None:
    shutil.copytree(library / "c", dirs["store"] / "doomed")
    greedy(http, "doomed")
    shutil.rmtree(dirs["store"] / "doomed")
    deadline = time.monotonic() + 2.0
    while (
        "doomed" in adapters(http)
        or http.post("/v1/chat/completions", json={"model": "doomed", "messages": QUESTION}).status_code
        != 404
    ):
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_unload_disables_until_loaded_again(http: httpx.Client) -> None:
    before = greedy(http, "c")
    response = http.delete("/v1/adapters/c")
    assert response.status_code == 200 and response.json()["status"] == "disabled"
    assert "is disabled" in error_of(
        http.post("/v1/chat/completions", json={"model": "c", "messages": QUESTION}), 404
    )
    assert adapters(http)["c"]["status"] == "disabled"
    assert "c" not in {m["id"] for m in http.get("/v1/models").json()["data"]}
    loaded = http.post("/v1/adapters", json={"name": "c"})
    assert loaded.status_code == 200 and loaded.json()["status"] == "resident"
    assert greedy(http, "c") == before


def test_reregistered_weights_are_served(http: httpx.Client, dirs: dict[str, Path], library: Path) -> None:
    shutil.copytree(library / "a", dirs["store"] / "swap")
    old = greedy(http, "swap")
    assert old == greedy(http, "a")
    AdapterStore(dirs["store"]).register("swap", library / "a2", overwrite=True)  # what the trainer does
    new = greedy(http, "swap")
    assert new != old
    shutil.copytree(library / "a2", dirs["store"] / "a2-copy")
    assert new == greedy(http, "a2-copy")  # exactly the new weights, never a mix


def test_blends_from_model_string_and_adapters_field(http: httpx.Client, hot: RunningServer) -> None:
    a = greedy(http, "a")
    assert greedy(http, "a*1+b*0") == a  # `cat` is the exact weighted sum
    client = openai.OpenAI(base_url=hot.v1, api_key=API_KEY, max_retries=0)
    stream = client.chat.completions.create(
        model="a*0.7+b*0.3", messages=QUESTION, temperature=0, max_tokens=10, stream=True
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    via_field = greedy(http, BASE_ID, adapters=[{"name": "a", "weight": 0.7}, {"name": "b", "weight": 0.3}])
    assert streamed == via_field == greedy(http, "a*0.7+b*0.3")
    assert greedy(http, BASE_ID, adapters=[{"name": "a"}, {"name": "b"}], blend_method="linear") != a


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"model": "a*0.5+c*0.5", "blend_method": "linear"}, 400, "equal rank"),
        ({"model": "a*0.5+c*0.5", "blend_method": "ties"}, 400, "needs `density`"),
        ({"model": "a*abc+b"}, 400, "not a number"),
        ({"model": "a*0+b*0"}, 400, "non-zero"),
        ({"model": "a*nan+b"}, 400, "finite"),
        ({"model": "a+a"}, 400, "only once"),
        ({"model": "a", "adapters": [{"name": "b"}]}, 400, "set `model`"),
        ({"model": "a*0.5+nope*0.5"}, 404, "nope"),
    ],
)
def test_bad_blends_say_why(http: httpx.Client, body: dict, status: int, needle: str) -> None:
    message = error_of(http.post("/v1/chat/completions", json={"messages": QUESTION, **body}), status)
    assert needle in message


def test_saved_blend_is_an_adapter_with_its_sources(http: httpx.Client) -> None:
    saved = http.post(
        "/v1/adapters/blend",
        json={"name": "ab-mix", "adapters": [{"name": "a", "weight": 0.7}, {"name": "b", "weight": 0.3}]},
    )
    assert saved.status_code == 200, saved.text
    manifest = saved.json()["manifest"]
    assert manifest["source"] == "blend" and manifest["blend_method"] == "cat"
    assert [(s["name"], s["weight"]) for s in manifest["sources"]] == [("a", 0.7), ("b", 0.3)]
    assert greedy(http, "ab-mix") == greedy(http, "a*0.7+b*0.3")
    again = http.post("/v1/adapters/blend", json={"name": "ab-mix", "adapters": [{"name": "a"}]})
    error_of(again, 409)


def test_load_from_allowed_path_and_refuse_escapes(http: httpx.Client, dirs: dict[str, Path]) -> None:
    allowed, outside = dirs["allowed"], dirs["outside"]
    ok = http.post("/v1/adapters", json={"name": "imported", "path": str(allowed / "incoming")})
    assert ok.status_code == 200, ok.text
    assert adapters(http)["imported"]["manifest"]["source"] == "imported"
    (allowed / "link").symlink_to(outside / "secret")
    for path in (outside / "secret", allowed / ".." / outside.name / "secret", allowed / "link"):
        message = error_of(http.post("/v1/adapters", json={"name": "escape", "path": str(path)}), 400)
        assert str(allowed) in message  # says where loading is allowed from
    assert "escape" not in adapters(http)
    error_of(http.post("/v1/adapters", json={"name": "imported", "path": str(allowed / "incoming")}), 409)
    error_of(http.post("/v1/adapters", json={"name": "Bad/Name"}), 400)
    error_of(http.post("/v1/adapters", json={"name": "missing"}), 404)


def test_pickle_weights_are_refused(http: httpx.Client, dirs: dict[str, Path]) -> None:
    folder = dirs["allowed"] / "pickled"
    folder.mkdir()
    shutil.copy(dirs["store"] / "a" / "adapter_config.json", folder)
    (folder / "adapter_model.bin").write_bytes(b"\x80\x04not really a pickle")
    assert "pickle" in error_of(http.post("/v1/adapters", json={"name": "pickled", "path": str(folder)}), 400)
    assert "pickled" not in adapters(http)


def test_vllm_aliases(http: httpx.Client, dirs: dict[str, Path]) -> None:
    loaded = http.post(
        "/v1/load_lora_adapter", json={"lora_name": "vl", "lora_path": str(dirs["allowed"] / "incoming")}
    )
    assert loaded.status_code == 200 and "Success" in loaded.text
    assert greedy(http, "vl") == greedy(http, "b")
    unloaded = http.post("/v1/unload_lora_adapter", json={"lora_name": "vl"})
    assert unloaded.status_code == 200
    error_of(http.post("/v1/chat/completions", json={"model": "vl", "messages": QUESTION}), 404)


def test_management_needs_the_key(hot: RunningServer) -> None:
    for method, path in (("GET", "/v1/adapters"), ("POST", "/v1/adapters"), ("DELETE", "/v1/adapters/a")):
        assert httpx.request(method, hot.base_url + path, json={"name": "a"}).status_code == 401


def test_lru_eviction_is_invisible(http: httpx.Client) -> None:
    first = {name: greedy(http, name) for name in ("a", "b", "c", "fresh")}
    for _ in range(2):
        for name, text in first.items():
            assert greedy(http, name) == text
    resident = [n for n, info in adapters(http).items() if info["status"] == "resident"]
    assert len(resident) <= 3


def test_base_never_drifts(http: httpx.Client) -> None:
    base = greedy(http, BASE_ID, max_tokens=16)
    targets = ["a", "b", "a*0.5+b*0.5", "c", "a*0.3+b*0.7"]
    for i in range(50):
        greedy(http, targets[i % len(targets)], max_tokens=2)
    assert greedy(http, BASE_ID, max_tokens=16) == base


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc to read resident memory")
def test_load_unload_cycles_release_memory(http: httpx.Client, hot: RunningServer) -> None:
    def cycle() -> None:
        assert http.post("/v1/adapters", json={"name": "b"}).status_code == 200
        assert http.delete("/v1/adapters/b").status_code == 200

    for _ in range(10):  # warm-up: allocator pools, caches
        cycle()
    before = rss_mb(hot.process.pid)
    for _ in range(200):
        cycle()
    grown = rss_mb(hot.process.pid) - before
    http.post("/v1/adapters", json={"name": "b"})
    assert grown < 50, f"resident memory grew {grown:.1f} MB over 200 load/unload cycles"


def test_merge_always_keeps_base_exact(tmp_path: Path, hotlora_home: Path, library: Path) -> None:
    """A second server merging every adapter request (`--merge-policy always`): the base never drifts.

    Merged, an adapter runs on dense dequantized weights instead of the 4-bit kernel, so its output may
    differ from the unmerged one by that kernel's rounding; it must be stable across merges and unmerges.
    """
    store = tmp_path / "store"
    for name in ("g1", "g2"):
        shutil.copytree(library / name, store / name)
    args = ["--home", str(hotlora_home), "--adapters-dir", str(store), "--merge-policy", "always"]
    with (
        serving(args, tmp_path / "server.log") as server,
        httpx.Client(base_url=server.base_url, timeout=120) as merged,
    ):
        base = greedy(merged, BASE_ID, max_tokens=16)
        first: dict[str, str] = {}
        for i in range(12):  # each switch merges and unmerges: ~2 s on this CPU
            name = ("g1", "g2", "g1*0.5+g2*0.5")[i % 3]
            text = greedy(merged, name, max_tokens=8)
            assert first.setdefault(name, text) == text  # the same answer every time it is merged
        assert first["g1"] != first["g2"]
        assert greedy(merged, BASE_ID, max_tokens=16) == base
        log = server.output()
        assert "merged g1 for speed" in log and "merged g2 for speed" in log


def test_restart_keeps_disabled(tmp_path: Path, hotlora_home: Path, library: Path) -> None:
    store = tmp_path / "store"
    shutil.copytree(library / "a", store / "a")
    AdapterStore(store).set_disabled("a", True)
    args = ["--home", str(hotlora_home), "--adapters-dir", str(store)]
    with (
        serving(args, tmp_path / "server.log") as server,
        httpx.Client(base_url=server.base_url, timeout=60) as client,
    ):
        assert client.get("/v1/adapters").json()["data"][0]["status"] == "disabled"
        error_of(client.post("/v1/chat/completions", json={"model": "a", "messages": QUESTION}), 404)
