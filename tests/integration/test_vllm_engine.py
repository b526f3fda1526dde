"""`hotlora serve --engine vllm` end to end: hotlora in front of a real vLLM child (vLLM's CPU build from
`.venv-vllm`, `./scripts/dev.sh vllm`) over the real embedded SmolLM2 and real PEFT adapters, talked to
with the `openai` SDK and httpx. One vLLM start for the module: vLLM's CPU build starts slowly."""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from hotlora_adapters import AdapterStore

from support.live_server import (
    API_KEY,
    BASE_ID,
    VLLM_PYTHON,
    RunningServer,
    save_random_lora,
    start_server,
    stop_server,
)

pytestmark = pytest.mark.integration

QUESTION = [{"role": "user", "content": "Name three colours."}]
AUTH = {"Authorization": f"Bearer {API_KEY}"}
VLLM_START_S = 900.0


def vllm_args(home: Path, store: Path) -> list[str]:
    """`serve` flags for the vLLM engine here: a fifth of RAM for vLLM (the machine is shared)."""
    if not VLLM_PYTHON.is_file():
        pytest.skip("vLLM's environment is absent: ./scripts/dev.sh vllm creates it")
    return [
        *("--engine", "vllm", "--vllm-python", str(VLLM_PYTHON), "--gpu-memory-utilization", "0.2"),
        *("--max-lora-rank", "16"),  # a blend of two r=8 adapters fits, of three does not
        *("--home", str(home), "--adapters-dir", str(store), "--api-key", API_KEY),
        *("--fine-tuning-threads", "1"),
    ]


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path) -> Path:
    """`a`, `b`, `c` (r=8), `a2` (other weights for `a`'s name)."""
    root = tmp_path_factory.mktemp("vllm-library")
    for name, seed in (("a", 1), ("b", 2), ("c", 3), ("a2", 4)):
        save_random_lora(smollm2_dir, root / name, seed=seed, strength=0.5)
    return root


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, library: Path) -> Path:
    root = tmp_path_factory.mktemp("vllm-store")
    for name in ("a", "b", "c"):
        shutil.copytree(library / name, root / name)
    return root


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, hotlora_home: Path, store: Path
) -> Iterator[RunningServer]:
    log = tmp_path_factory.mktemp("vllm-logs") / "server.log"
    server = start_server(vllm_args(hotlora_home, store), log, timeout=VLLM_START_S)
    try:
        yield server
    finally:
        stop_server(server)


@pytest.fixture
def http(served: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served.base_url, headers=AUTH, timeout=300) as client:
        yield client


@pytest.fixture
def client(served: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=served.v1, api_key=API_KEY, max_retries=0, timeout=300)


def greedy(http: httpx.Client, model: str, max_tokens: int = 8) -> str:
    body = {"model": model, "messages": QUESTION, "temperature": 0, "max_tokens": max_tokens}
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    return str(response.json()["choices"][0]["message"]["content"])


def error_of(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return str(error["message"])


def test_health_and_models_list_the_base_and_the_store(http: httpx.Client) -> None:
    health = {"status": "ok", "model": BASE_ID, "engine": "vllm", "servers": 1, "servers_ready": 1}
    assert http.get("/health").json() == health
    models = {m["id"]: m for m in http.get("/v1/models").json()["data"]}
    assert {BASE_ID, "a", "b"} <= set(models)
    assert models["a"]["parent"] == BASE_ID


def test_chat_with_the_base_and_adapters_via_the_openai_sdk(client: openai.OpenAI) -> None:
    def answer(model: str) -> openai.types.chat.ChatCompletion:
        return client.chat.completions.create(
            model=model,
            messages=QUESTION,
            temperature=0,
            max_tokens=8,  # type: ignore[arg-type]
        )

    base, a, b = answer(BASE_ID), answer("a"), answer("b")
    texts = {r.choices[0].message.content for r in (base, a, b)}
    assert len(texts) == 3, texts  # each adapter changes the output
    assert answer("a").choices[0].message.content == a.choices[0].message.content  # greedy is repeatable
    assert a.model == "a" and a.id.startswith("chatcmpl-")
    assert a.usage is not None and a.usage.completion_tokens <= 8 and a.usage.prompt_tokens > 5
    assert a.choices[0].finish_reason in ("stop", "length")


def test_streams_match_the_whole_answers(client: openai.OpenAI, http: httpx.Client) -> None:
    whole = greedy(http, "a")
    stream = client.chat.completions.create(
        model="a",
        messages=QUESTION,  # type: ignore[arg-type]
        temperature=0,
        max_tokens=8,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    text = client.completions.create(model="b", prompt="The sky is", temperature=0, max_tokens=5)
    streamed = client.completions.create(
        model="b", prompt="The sky is", temperature=0, max_tokens=5, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed) == text.choices[0].text
    assert text.usage is not None and text.usage.completion_tokens == 5


def test_logprobs_come_back_in_openai_shape(http: httpx.Client) -> None:
    body = {"model": "a", "messages": QUESTION, "max_tokens": 3, "logprobs": True, "top_logprobs": 2}
    content = http.post("/v1/chat/completions", json=body).json()["choices"][0]["logprobs"]["content"]
    assert len(content) == 3 and all(len(t["top_logprobs"]) == 2 and t["logprob"] <= 0 for t in content)


def test_errors_keep_hotloras_shapes(http: httpx.Client) -> None:
    missing = error_of(http.post("/v1/chat/completions", json={"model": "nope", "messages": QUESTION}), 404)
    assert "does not exist" in missing
    too_long = {"model": "a", "messages": QUESTION, "max_tokens": 10**6}
    assert error_of(http.post("/v1/chat/completions", json=too_long), 400)  # vLLM's refusal, as a 400
    bad = {"model": BASE_ID, "messages": QUESTION, "temperature": -1}
    error_of(http.post("/v1/chat/completions", json=bad), 400)
    assert httpx.post(f"{http.base_url}/v1/chat/completions", json={"model": BASE_ID}).status_code == 401


def test_reregistered_weights_are_served(http: httpx.Client, store: Path, library: Path) -> None:
    shutil.copytree(library / "a", store / "swap")
    old = greedy(http, "swap")
    assert old == greedy(http, "a")
    AdapterStore(store).register("swap", library / "a2", overwrite=True)  # what the trainer does
    new = greedy(http, "swap")
    assert new != old
    shutil.copytree(library / "a2", store / "a2-copy")
    assert new == greedy(http, "a2-copy")  # exactly the new weights


def test_disabled_and_deleted_adapters_are_unloaded(http: httpx.Client, store: Path, library: Path) -> None:
    shutil.copytree(library / "b", store / "gone")
    before = greedy(http, "gone")
    assert {a["id"]: a["status"] for a in http.get("/v1/adapters").json()["data"]}["gone"] == "resident"
    assert http.delete("/v1/adapters/gone").json()["status"] == "disabled"
    assert "is disabled" in error_of(
        http.post("/v1/chat/completions", json={"model": "gone", "messages": QUESTION}), 404
    )
    loaded = http.post("/v1/adapters", json={"name": "gone"})
    assert loaded.status_code == 200 and loaded.json()["status"] == "resident"
    assert greedy(http, "gone") == before
    shutil.rmtree(store / "gone")
    deadline = time.monotonic() + 5
    while {a["id"] for a in http.get("/v1/adapters").json()["data"]} >= {"gone"} or "gone" in (
        {a["id"] for a in http.get("/v1/adapters").json()["data"] if a["status"] == "resident"}
    ):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    error_of(http.post("/v1/chat/completions", json={"model": "gone", "messages": QUESTION}), 404)


def test_blends_are_built_once_and_served_as_loras(http: httpx.Client, store: Path) -> None:
    a = greedy(http, "a")
    assert greedy(http, "a*1+b*0") == a  # `cat` is the exact weighted sum
    by_field = {"model": BASE_ID, "messages": QUESTION, "temperature": 0, "max_tokens": 8}
    by_field["adapters"] = [{"name": "a", "weight": 1}, {"name": "b", "weight": 0}]
    answer = http.post("/v1/chat/completions", json=by_field)
    assert answer.json()["choices"][0]["message"]["content"] == a
    assert len(list((store / ".blends").iterdir())) == 1  # one blend, built once
    too_big = {"model": "a+b+c", "messages": QUESTION, "max_tokens": 2}
    assert "--max-lora-rank 16" in error_of(http.post("/v1/chat/completions", json=too_big), 400)
    saved = http.post("/v1/adapters/blend", json={"name": "ab", "adapters": by_field["adapters"]})
    assert saved.status_code == 200, saved.text
    assert saved.json()["manifest"]["source"] == "blend"
    assert greedy(http, "ab") == a


def test_a_fine_tuned_adapter_is_served_by_vllm_when_its_job_succeeds(client: openai.OpenAI) -> None:
    """Train through OpenAI's fine-tuning API (hotlora's trainer, in its worker) and chat with the result
    through vLLM the moment the job has succeeded."""
    rows = [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": "ooray ooray!"}]}
        for q in ("Hello.", "Name three colours.", "What is the sky?", "Count to three.")
    ]
    data = "".join(json.dumps(row) + "\n" for row in rows).encode()
    file = client.files.create(file=("cheer.jsonl", data), purpose="fine-tune")
    hyper = {"n_epochs": 1, "batch_size": 2, "learning_rate_multiplier": 25}
    job = client.fine_tuning.jobs.create(
        model=BASE_ID,
        training_file=file.id,
        suffix="cheer",
        method={"type": "supervised", "supervised": {"hyperparameters": hyper}},  # type: ignore[typeddict-item]
        extra_body={"hotlora": {"max_steps": 2, "max_length": 64}},
    )
    deadline = time.monotonic() + 900
    while (job := client.fine_tuning.jobs.retrieve(job.id)).status not in (
        "succeeded",
        "failed",
        "cancelled",
    ):
        assert time.monotonic() < deadline, job
        time.sleep(2)
    assert job.status == "succeeded", job
    assert job.fine_tuned_model is not None

    def answer(model: str) -> str | None:
        reply = client.chat.completions.create(
            model=model,
            messages=QUESTION,
            temperature=0,
            max_tokens=8,  # type: ignore[arg-type]
        )
        return reply.choices[0].message.content

    assert answer(job.fine_tuned_model) != answer(BASE_ID)


def test_stopping_hotlora_stops_vllm(served: RunningServer) -> None:
    """Last in the module: it stops the module's server (its fixture's own stop is then a no-op)."""
    port = re.search(r"starting vLLM: .* --port (\d+)", served.output())
    assert port is not None
    assert httpx.get(f"http://127.0.0.1:{port.group(1)}/health", timeout=5).status_code == 200
    stop_server(served)
    assert served.process.returncode == 0
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port.group(1)}/health", timeout=5)
