"""OpenAI's fine-tuning API end to end: the official `openai` SDK against the real `hotlora serve` (SmolLM2).

Upload a tiny Pig Latin file, train a job of a few steps, watch its events, chat with `fine_tuned_model`
the moment it has succeeded; a bad file is a 400 naming its line; a cancel stops the training and
registers nothing; a server killed mid-training fails that job on restart, its history kept.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from support.live_server import API_KEY, BASE_ID, RunningServer, own_home, start_server, stop_server
from support.trainer_data import PIG, QUESTION, SENTENCES

pytestmark = pytest.mark.integration

TERMINAL = {"succeeded", "failed", "cancelled"}
TINY = {"max_steps": 2, "max_length": 96}  # a few steps: seconds, not minutes
ENDLESS = {"max_steps": 100000, "max_length": 96, "logging_steps": 1}  # trains until stopped


def jsonl(rows: list[Any]) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


PIG_LATIN = jsonl(
    [
        {"messages": [{"role": "user", "content": s}, {"role": "assistant", "content": p}]}
        for s, p in zip(SENTENCES, PIG, strict=True)
    ]
)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, hotlora_home: Path) -> Path:
    """A home of its own (jobs database, store, runs), sharing the converted model and compiled kernels."""
    return own_home(tmp_path_factory.mktemp("fine-tuning-home"), hotlora_home)


def serve(home: Path) -> RunningServer:
    args = ["--home", str(home), "--api-key", API_KEY, "--fine-tuning-threads", "1"]
    return start_server(args, home / f"server-{time.monotonic_ns()}.log")


@pytest.fixture(scope="module")
def server(home: Path, smollm2_dir: Path) -> Iterator[RunningServer]:
    running = serve(home)
    try:
        yield running
    finally:
        stop_server(running)


@pytest.fixture
def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.v1, api_key=API_KEY, max_retries=0, timeout=120)


def ask(client: openai.OpenAI, model: str) -> str:
    answer = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": QUESTION}], temperature=0, max_tokens=24
    )
    return answer.choices[0].message.content or ""


def wait_until(client: openai.OpenAI, job_id: str, done: Any, timeout: float = 600) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        events = client.fine_tuning.jobs.list_events(job_id, limit=100).data
        if done(job, events):
            return job, events
        time.sleep(1)
    raise AssertionError(f"job {job_id} did not get there: {job}\n{[e.message for e in events]}")


def training(job: Any, events: list[Any]) -> bool:
    return job.status == "running" and any(e.type == "metrics" for e in events)


def test_openai_sdk_fine_tunes_and_chats_with_the_result(client: openai.OpenAI) -> None:
    lines = PIG_LATIN.splitlines(keepends=True)
    lines[1] = lines[1].replace(b'"assistant"', b'"robot"')
    with pytest.raises(openai.BadRequestError, match=r"bad\.jsonl:2: messages\[1\]\.role must be one of"):
        client.files.create(file=("bad.jsonl", b"".join(lines)), purpose="fine-tune")
    file = client.files.create(file=("pig.jsonl", PIG_LATIN), purpose="fine-tune")
    assert file.purpose == "fine-tune" and file.bytes == len(PIG_LATIN)
    base_answer = ask(client, BASE_ID)

    job = client.fine_tuning.jobs.create(
        model=BASE_ID,
        training_file=file.id,
        suffix="pig",
        method={
            "type": "supervised",
            "supervised": {
                "hyperparameters": {"n_epochs": 1, "batch_size": 2, "learning_rate_multiplier": 25}
            },
        },
        extra_body={"hotlora": TINY},
    )
    assert job.status in {"queued", "running"} and job.fine_tuned_model is None
    job, events = wait_until(client, job.id, lambda j, _: j.status in TERMINAL)
    assert job.status == "succeeded", (job, [e.message for e in events])
    assert job.fine_tuned_model.startswith("ft-pig-") and job.trained_tokens
    metrics = [e.data for e in events if e.type == "metrics"]
    assert metrics and all(m["total_steps"] == 2 for m in metrics) and metrics[0]["train_loss"] > 0
    assert job.fine_tuned_model in events[0].message  # the newest event: the model was created

    # servable the moment the job succeeded, and it answers differently from the base
    assert ask(client, job.fine_tuned_model) != base_answer
    assert ask(client, BASE_ID) == base_answer
    assert job.id in [j.id for j in client.fine_tuning.jobs.list(limit=5).data]
    [checkpoint] = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert checkpoint.fine_tuned_model_checkpoint == job.fine_tuned_model and checkpoint.step_number == 2
    assert client.files.content(file.id).content == PIG_LATIN


def test_cancel_stops_the_training_and_registers_nothing(client: openai.OpenAI) -> None:
    file = client.files.create(file=("pig.jsonl", PIG_LATIN), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model=BASE_ID, training_file=file.id, extra_body={"hotlora": ENDLESS}
    )
    wait_until(client, job.id, training)
    cancelled = client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled" and cancelled.fine_tuned_model is None
    time.sleep(2)  # were anything registered, the store watcher would list it by now
    models = [m.id for m in client.models.list().data]
    assert not [m for m in models if m.startswith(f"ft-{job.id[-24:-16]}")], models
    with pytest.raises(openai.BadRequestError, match="already ended"):
        client.fine_tuning.jobs.cancel(job.id)


def test_a_server_killed_mid_training_fails_the_job_on_restart(
    server: RunningServer, client: openai.OpenAI, home: Path
) -> None:
    file = client.files.create(file=("pig.jsonl", PIG_LATIN), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model=BASE_ID, training_file=file.id, extra_body={"hotlora": ENDLESS}
    )
    wait_until(client, job.id, training)
    before = [j.id for j in client.fine_tuning.jobs.list(limit=100).data]

    os.kill(server.process.pid, signal.SIGKILL)  # no shutdown: the job is left `running` in the database
    server.process.wait(10)
    run_dir = home / "runs" / f"ft-{job.id[-24:-16]}"
    deadline = time.monotonic() + 60
    while run_dir.exists():  # the trainer saw its stdin close, stopped and cleaned up
        assert time.monotonic() < deadline, "the training process outlived the server"
        time.sleep(0.5)

    restarted = serve(home)
    try:
        again = openai.OpenAI(base_url=restarted.v1, api_key=API_KEY, max_retries=0, timeout=120)
        failed = again.fine_tuning.jobs.retrieve(job.id)
        assert failed.status == "failed" and failed.error.code == "server_restarted"
        assert "server stopped while this job was training" in failed.error.message
        assert [j.id for j in again.fine_tuning.jobs.list(limit=100).data] == before  # the history is kept
        assert again.files.retrieve(file.id).id == file.id
    finally:
        stop_server(restarted)
