"""OpenAI's fine-tuning API over the real engine on the tiny llama, with real trainings in worker processes.

Each job runs `python -m hotlora_trainer` on the tiny model (a few steps): the test sees what a client
sees — statuses, events, the adapter served the moment the job succeeds, a cancel that stops the process
and registers nothing, a shutdown that fails the job it interrupts. Bad requests are 400s that change
nothing.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from hotlora_adapters import AdapterStore
from hotlora_server.api import create_app
from hotlora_server.api.serving_fine_tuning import ServingFineTuning

from support.tiny_server import API_KEY, TINY_NAME, assert_error, live_app, running_engine, tiny_settings

SENTENCES = ["The birch canoe slid.", "Glue the sheet.", "It is easy to tell.", "These days a chicken leg."]
PIG = ["Ethay irchbay anoecay idslay.", "Ueglay ethay eetshay.", "Itway isway easyway.", "Esethay aysday."]
TERMINAL = {"succeeded", "failed", "cancelled"}
LONG = {"max_steps": 100000, "logging_steps": 1, "r": 4, "max_length": 64}  # runs until cancelled


def chat_rows(count: int = len(SENTENCES)) -> bytes:
    rows = [
        {"messages": [{"role": "user", "content": s}, {"role": "assistant", "content": p}]}
        for s, p in zip(SENTENCES[:count], PIG[:count], strict=True)
    ]
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


@pytest.fixture(scope="module")
def ft_env(tiny_dir: Path, adapter_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """An engine over a private store (jobs register adapters in it) and its settings."""
    store = tmp_path_factory.mktemp("ft") / "store"
    shutil.copytree(adapter_store, store)
    settings = tiny_settings(tiny_dir, tmp_path_factory.mktemp("ft-home"), store, fine_tuning_threads=1)
    with running_engine(settings) as engine:
        yield engine, settings


@contextmanager
def serving(ft_env: Any, **settings_changes: Any) -> Iterator[TestClient]:
    """The app with the fine-tuning API (its runner started and stopped with it, as the server does)."""
    engine, settings = ft_env
    settings = settings.model_copy(update=settings_changes)
    api_key = settings_changes.get("api_key")
    app = create_app(engine, api_key=api_key, fine_tuning=ServingFineTuning.from_settings(settings, engine))
    with TestClient(app) as client:
        yield client


def upload(client: TestClient, content: bytes, name: str = "train.jsonl", purpose: str = "fine-tune") -> Any:
    return client.post("/v1/files", files={"file": (name, content)}, data={"purpose": purpose})


def wait_for(client: TestClient, job_id: str, done: Any, timeout: float = 300) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/fine_tuning/jobs/{job_id}").json()
        if done(job):
            return job
        time.sleep(0.25)
    events = client.get(f"/v1/fine_tuning/jobs/{job_id}/events", params={"limit": 50}).json()
    raise AssertionError(f"job {job_id} did not get there: {job}\n{events}")


def metrics_seen(client: TestClient, job_id: str) -> bool:
    events = client.get(f"/v1/fine_tuning/jobs/{job_id}/events").json()["data"]
    return any(e["type"] == "metrics" for e in events)


def test_files_are_uploaded_listed_read_and_deleted(ft_env: Any) -> None:
    with serving(ft_env) as client:
        content = chat_rows()
        created = upload(client, content)
        assert created.status_code == 200, created.text
        file = created.json()
        assert file["object"] == "file" and file["purpose"] == "fine-tune" and file["status"] == "processed"
        assert file["bytes"] == len(content) and file["filename"] == "train.jsonl"
        assert client.get(f"/v1/files/{file['id']}").json() == file
        assert client.get(f"/v1/files/{file['id']}/content").content == content
        listed = client.get("/v1/files").json()
        assert listed["object"] == "list" and file in listed["data"] and listed["has_more"] is False
        deleted = client.delete(f"/v1/files/{file['id']}")
        assert deleted.json() == {"id": file["id"], "object": "file", "deleted": True}
        assert_error(client.get(f"/v1/files/{file['id']}"), 404, code="file_not_found")
        assert_error(client.get(f"/v1/files/{file['id']}/content"), 404)


def test_a_bad_file_is_400_naming_its_lines_and_nothing_is_kept(ft_env: Any) -> None:
    with serving(ft_env, max_file_bytes=2048) as client:
        before = client.get("/v1/files").json()["data"]
        bad = chat_rows() + b'{"messages": [{"role": "user", "content": "no answer"}]}\n{oops\n'
        error = assert_error(upload(client, bad, "mine.jsonl"), 400, param="file", code="invalid_file_format")
        assert "mine.jsonl:5: 'messages' has no assistant message" in error["message"]
        assert "mine.jsonl:6: not valid JSON" in error["message"]
        assert_error(upload(client, chat_rows(), purpose="batch"), 400, param="purpose")
        assert_error(upload(client, chat_rows() * 40), 413)  # past --max-file-bytes
        assert_error(client.post("/v1/files", data={"purpose": "fine-tune"}), 400, param="file")
        assert client.get("/v1/files").json()["data"] == before


def test_bad_job_requests_are_400_and_create_nothing(ft_env: Any) -> None:
    with serving(ft_env) as client:
        train = upload(client, chat_rows()).json()["id"]
        text = upload(client, b'{"text": "plain"}\n').json()["id"]
        good = {"model": TINY_NAME, "training_file": train}
        for changes, param in [
            ({"model": "gpt-4o-mini"}, "model"),
            ({"training_file": "file-nope"}, "training_file"),
            ({"validation_file": text}, "validation_file"),  # another format than the training file's
            ({"hotlora": {"rank": 4}}, "hotlora.rank"),  # unknown options would reach the trainer
            ({"hotlora": {"r": 65}}, "hotlora.r"),  # beyond --max-lora-rank
            ({"hotlora": {"lora_dropout": 1.5}}, "hotlora.lora_dropout"),
            ({"suffix": "Has Spaces"}, "suffix"),
            ({"hyperparameters": {"n_epochs": 0}}, "hyperparameters.n_epochs"),
            ({"method": {"type": "dpo"}}, "method.type"),
            ({"method": {"type": "supervised"}, "hyperparameters": {"n_epochs": 1}}, None),
        ]:
            assert_error(client.post("/v1/fine_tuning/jobs", json={**good, **changes}), 400, param=param)
        assert client.get("/v1/fine_tuning/jobs").json()["data"] == []
        for path in ("", "/events", "/checkpoints"):
            assert_error(client.get(f"/v1/fine_tuning/jobs/ftjob-nope{path}"), 404, code="job_not_found")
        assert_error(client.post("/v1/fine_tuning/jobs/ftjob-nope/cancel"), 404)


def test_a_job_trains_registers_and_is_served_when_it_succeeds(ft_env: Any) -> None:
    engine, settings = ft_env
    with serving(ft_env) as client:
        train = upload(client, chat_rows()).json()["id"]
        valid = upload(client, chat_rows(2), "valid.jsonl").json()["id"]
        created = client.post(
            "/v1/fine_tuning/jobs",
            json={
                "model": TINY_NAME,
                "training_file": train,
                "validation_file": valid,
                "suffix": "pig",
                "seed": 7,
                "method": {"type": "supervised", "supervised": {"hyperparameters": {"batch_size": 2}}},
                "metadata": {"team": "tests"},
                "hotlora": {"max_steps": 2, "logging_steps": 1, "r": 4, "max_length": 64},
            },
        )
        assert created.status_code == 200, created.text
        job = created.json()
        assert job["object"] == "fine_tuning.job" and job["status"] in {"queued", "running"}
        assert job["fine_tuned_model"] is None and job["hyperparameters"]["batch_size"] == 2
        assert (
            job["seed"] == 7 and job["metadata"] == {"team": "tests"} and job["user_provided_suffix"] == "pig"
        )
        assert_error(client.delete(f"/v1/files/{train}"), 409, code="file_in_use")

        job = wait_for(client, job["id"], lambda j: j["status"] in TERMINAL)
        assert job["status"] == "succeeded", job
        name = job["fine_tuned_model"]
        assert name.startswith("ft-pig-") and job["finished_at"] >= job["created_at"]
        assert job["trained_tokens"] > 0 and job["error"] is None
        # servable the moment the job says so
        answer = client.post(
            "/v1/chat/completions",
            json={"model": name, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4},
        )
        assert answer.status_code == 200, answer.text
        manifest = AdapterStore(settings.adapters_dir).get(name).manifest
        assert manifest is not None and manifest.source == "trained"

        events = client.get(f"/v1/fine_tuning/jobs/{job['id']}/events", params={"limit": 100}).json()["data"]
        messages = [e["message"] for e in reversed(events)]
        assert messages[0] == f"Validating training file: {train}" and "Fine-tuning job started" in messages
        assert messages[-1].startswith(f"New fine-tuned model created: {name}")
        metrics = [e["data"] for e in events if e["type"] == "metrics"]
        assert any(m.get("train_loss") and m["total_steps"] == 2 for m in metrics), metrics
        assert any(m.get("valid_loss") for m in metrics), metrics
        checkpoints = client.get(f"/v1/fine_tuning/jobs/{job['id']}/checkpoints").json()["data"]
        assert [(c["fine_tuned_model_checkpoint"], c["step_number"]) for c in checkpoints] == [(name, 2)]
        assert checkpoints[0]["metrics"]["valid_loss"] > 0
        assert job["id"] in [j["id"] for j in client.get("/v1/fine_tuning/jobs").json()["data"]]
        assert_error(client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel"), 400, code="job_not_cancellable")
        client.delete(f"/v1/files/{train}").raise_for_status()  # no longer in use


def test_cancel_stops_the_training_and_registers_nothing(ft_env: Any) -> None:
    _, settings = ft_env
    with serving(ft_env) as client:
        train = upload(client, chat_rows()).json()["id"]
        body = {"model": TINY_NAME, "training_file": train, "hotlora": LONG}
        running = client.post("/v1/fine_tuning/jobs", json=body).json()
        waiting = client.post("/v1/fine_tuning/jobs", json=body).json()
        wait_for(client, running["id"], lambda j: j["status"] == "running" and metrics_seen(client, j["id"]))
        assert (
            client.get(f"/v1/fine_tuning/jobs/{waiting['id']}").json()["status"] == "queued"
        )  # one at a time
        cancelled = client.post(f"/v1/fine_tuning/jobs/{waiting['id']}/cancel").json()
        assert cancelled["status"] == "cancelled"
        cancelled = client.post(f"/v1/fine_tuning/jobs/{running['id']}/cancel").json()
        assert cancelled["status"] == "cancelled" and cancelled["fine_tuned_model"] is None
        name = running["id"].rsplit("-", 1)[-1][:8]
        run_dir = settings.home / "runs" / f"ft-{name}"
        deadline = time.monotonic() + 60
        while run_dir.exists():  # the trainer cleans up its run as it stops
            assert time.monotonic() < deadline, "the training process did not stop"
            time.sleep(0.25)
        assert f"ft-{name}" not in AdapterStore(settings.adapters_dir)
        assert client.get(f"/v1/fine_tuning/jobs/{running['id']}").json()["status"] == "cancelled"


def test_a_shutdown_fails_the_running_job_and_a_restart_keeps_the_history(ft_env: Any) -> None:
    with serving(ft_env) as client:
        train = upload(client, chat_rows()).json()["id"]
        job = client.post(
            "/v1/fine_tuning/jobs", json={"model": TINY_NAME, "training_file": train, "hotlora": LONG}
        )
        job_id = job.json()["id"]
        wait_for(client, job_id, lambda j: j["status"] == "running")
    with serving(ft_env) as client:  # the same home: the same database
        job = client.get(f"/v1/fine_tuning/jobs/{job_id}").json()
        assert job["status"] == "failed" and job["error"]["code"] == "server_shutdown", job
        assert "shut down" in job["error"]["message"]
        assert client.get(f"/v1/files/{train}").status_code == 200


def test_the_routes_need_the_key_and_can_be_turned_off(ft_env: Any) -> None:
    with serving(ft_env, api_key=API_KEY) as client:
        assert_error(client.get("/v1/fine_tuning/jobs"), 401)
        assert_error(upload(client, chat_rows()), 401)
        assert client.get("/v1/files", headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 200
    engine, _ = ft_env
    with TestClient(create_app(engine)) as client:  # --no-fine-tuning
        assert_error(client.get("/v1/fine_tuning/jobs"), 404)
        assert_error(upload(client, chat_rows()), 404)


def test_the_sdk_uploads_trains_and_reads_the_job(ft_env: Any, tmp_path: Path) -> None:
    """hotlora's client SDK, sync and async, against the real app on a loopback port."""
    import asyncio

    from hotlora_client import AsyncClient, Client, errors

    engine, settings = ft_env
    app = create_app(engine, fine_tuning=ServingFineTuning.from_settings(settings, engine))
    data = tmp_path / "train.jsonl"
    data.write_bytes(chat_rows())
    with live_app(app) as http, Client(str(http.base_url), api_key="", max_retries=0) as sdk:
        file = sdk.files.create(data)
        assert file.filename == "train.jsonl" and sdk.files.content(file.id) == chat_rows()
        with pytest.raises(errors.BadRequestError, match=r"bad\.jsonl:1: not valid JSON"):
            sdk.files.create(b"{nope\n", filename="bad.jsonl")
        job = sdk.fine_tuning.jobs.create(
            file.id, suffix="sdk", batch_size=2, hotlora={"max_steps": 1, "r": 4, "max_length": 64}
        )
        assert job.model == TINY_NAME and job.hyperparameters["batch_size"] == 2
        done = sdk.fine_tuning.jobs.wait(job.id, timeout=300, interval=0.25)
        assert (
            done.status == "succeeded"
            and done.fine_tuned_model
            and done.fine_tuned_model.startswith("ft-sdk-")
        )
        assert sdk.chat("Hi", model=done.fine_tuned_model, max_tokens=2).choices
        events = sdk.fine_tuning.jobs.list_events(job.id, limit=2)
        assert len(events.data) == 2 and events.has_more and events.last_id == events.data[-1].id
        older = sdk.fine_tuning.jobs.list_events(job.id, after=events.last_id, limit=100)
        assert older.data and older.data[-1].message.startswith("Validating training file")
        [checkpoint] = sdk.fine_tuning.jobs.list_checkpoints(job.id).data
        assert checkpoint.fine_tuned_model_checkpoint == done.fine_tuned_model and checkpoint.step_number == 1
        with pytest.raises(errors.JobNotDoneError):
            sdk.fine_tuning.jobs.wait(
                sdk.fine_tuning.jobs.create(file.id, hotlora={**LONG, "logging_steps": 1000}).id, timeout=0
            )

        async def from_async() -> tuple[list[str], Any]:
            async with AsyncClient(str(http.base_url), api_key="", max_retries=0) as client:
                jobs = await client.fine_tuning.jobs.list(limit=10)
                cancelled = await client.fine_tuning.jobs.cancel(jobs.data[0].id)
                return [j.id for j in jobs.data], cancelled

        ids, cancelled = asyncio.run(from_async())
        assert ids[1] == job.id and cancelled.status == "cancelled"
        assert sdk.files.delete(file.id).deleted
