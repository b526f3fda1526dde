"""The fine-tuning stores on a real SQLite file: files checked at upload, jobs, events, pages, restarts."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from hotlora_server.errors import ConflictError, InvalidRequestError, NotFoundError
from hotlora_server.fine_tuning import Database, Event, FileStore, JobStore, new_id
from hotlora_server.fine_tuning.jobs import STOPPED_WHILE_RUNNING

CHAT = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Ello-hay"}]}


def jsonl(*rows: Any) -> bytes:
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows)


def open_stores(folder: Path) -> tuple[Database, FileStore, JobStore]:
    db = Database(folder)
    return db, FileStore(db, folder / "files"), JobStore(db)


def new_job(jobs: JobStore, training_file: str, **fields: Any) -> Any:
    job_id = new_id("ftjob")
    values = {
        "id": job_id,
        "model": "base",
        "adapter_name": f"ft-{job_id[-8:]}",
        "training_file": training_file,
        "validation_file": None,
        "suffix": None,
        "seed": 1,
        "hyperparameters": {"n_epochs": "auto", "batch_size": "auto", "learning_rate_multiplier": "auto"},
        "options": {"max_steps": 2},
        "metadata": None,
        **fields,
    }
    return jobs.create(**values)


def test_a_valid_file_is_kept_as_sent_with_its_format(tmp_path: Path) -> None:
    _, files, _ = open_stores(tmp_path)
    content = jsonl(CHAT, CHAT) + b"\n"  # a blank line is allowed
    record = files.add("dir/train.jsonl", content)
    assert record.id.startswith("file-") and record.filename == "train.jsonl"
    assert (record.format, record.rows, record.bytes, record.chat) == ("messages", 2, len(content), True)
    assert files.path(record.id).read_bytes() == content
    assert files.get(record.id) == record
    assert stat.S_IMODE(os.stat(files.path(record.id)).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(files.folder).st_mode) == 0o700


def test_a_bad_file_is_refused_with_its_line_numbers_and_nothing_is_kept(tmp_path: Path) -> None:
    _, files, _ = open_stores(tmp_path)
    bad = jsonl(CHAT, b"{not json", {"messages": []}, {"text": "plain"})
    with pytest.raises(InvalidRequestError) as info:
        files.add("train.jsonl", bad)
    message = info.value.message
    assert "train.jsonl:2: not valid JSON" in message
    assert "train.jsonl:3: 'messages' is empty" in message
    assert "train.jsonl:4: this row is in the 'text' format" in message
    assert info.value.status == 400 and info.value.param == "file"
    with pytest.raises(InvalidRequestError, match="the file has no rows"):
        files.add("empty.jsonl", b"\n\n")
    assert list(files.folder.iterdir()) == []
    assert files.page(None, 10, newest_first=True, purpose=None) == ([], False)


def test_files_list_in_pages_both_ways(tmp_path: Path) -> None:
    _, files, _ = open_stores(tmp_path)
    ids = [files.add(f"f{i}.jsonl", jsonl({"text": f"row {i}"})).id for i in range(5)]
    page, more = files.page(None, 2, newest_first=True, purpose=None)
    assert [f.id for f in page] == ids[:-3:-1] and more
    page, more = files.page(page[-1].id, 10, newest_first=True, purpose=None)
    assert [f.id for f in page] == ids[2::-1] and not more
    page, more = files.page(ids[1], 2, newest_first=False, purpose="fine-tune")
    assert [f.id for f in page] == ids[2:4] and more
    assert files.page(None, 10, newest_first=True, purpose="batch") == ([], False)
    with pytest.raises(NotFoundError):
        files.page("file-unknown", 10, newest_first=True, purpose=None)


def test_a_file_in_use_by_a_waiting_job_cannot_be_deleted(tmp_path: Path) -> None:
    _, files, jobs = open_stores(tmp_path)
    record = files.add("train.jsonl", jsonl(CHAT))
    job = new_job(jobs, record.id)
    with pytest.raises(ConflictError, match=job.id):
        files.delete(record.id)
    assert jobs.transition(job.id, "cancelled", only_from=("validating_files", "queued", "running"))
    files.delete(record.id)
    assert not files.path(record.id).exists()
    with pytest.raises(NotFoundError):
        files.get(record.id)


def test_a_transition_happens_only_from_the_statuses_given(tmp_path: Path) -> None:
    _, _, jobs = open_stores(tmp_path)
    job = new_job(jobs, "file-x")
    assert job.status == "validating_files" and job.finished_at is None
    assert not jobs.transition(job.id, "running", only_from=("queued",))
    assert jobs.transition(job.id, "queued", only_from=("validating_files",))
    assert jobs.transition(job.id, "running", only_from=("queued",), event=Event("started"))
    assert jobs.transition(job.id, "cancelled", only_from=("running",), event=Event("cancelled"))
    # the end of the training comes too late: the cancel won
    assert not jobs.transition(job.id, "succeeded", only_from=("running",), event=Event("done"))
    done = jobs.get(job.id)
    assert done.status == "cancelled" and done.finished_at is not None
    events, _ = jobs.events(job.id, None, 10)
    assert [e.message for e in events] == [
        "cancelled",
        "started",
        f"Validating training file: {job.training_file}",
    ]


def test_jobs_and_events_come_newest_first_in_pages(tmp_path: Path) -> None:
    _, _, jobs = open_stores(tmp_path)
    ids = [new_job(jobs, "file-x").id for _ in range(5)]
    page, more = jobs.page(None, 2)
    assert [j.id for j in page] == [ids[4], ids[3]] and more
    page, more = jobs.page(page[-1].id, 2)
    assert [j.id for j in page] == [ids[2], ids[1]] and more
    page, more = jobs.page(page[-1].id, 2)
    assert [j.id for j in page] == [ids[0]] and not more
    with pytest.raises(NotFoundError):
        jobs.page("ftjob-unknown", 2)

    for step in range(1, 4):
        jobs.add_event(
            ids[0], Event(f"step {step}", type="metrics", data={"step": step, "train_loss": 1.0 / step})
        )
    events, more = jobs.events(ids[0], None, 2)
    assert [e.message for e in events] == ["step 3", "step 2"] and more
    assert events[0].data == {"step": 3, "train_loss": 1 / 3} and events[0].type == "metrics"
    events, more = jobs.events(ids[0], events[-1].id, 10)
    assert [e.message for e in events] == ["step 1", "Validating training file: file-x"] and not more
    with pytest.raises(NotFoundError):
        jobs.events("ftjob-unknown", None, 10)


def test_a_restart_keeps_the_history_and_fails_the_job_that_was_training(tmp_path: Path) -> None:
    db, files, jobs = open_stores(tmp_path)
    record = files.add("train.jsonl", jsonl(CHAT))
    done, running, queued = (new_job(jobs, record.id) for _ in range(3))
    for job in (done, running, queued):
        jobs.transition(job.id, "queued", only_from=("validating_files",))
    for job in (done, running):
        jobs.transition(job.id, "running", only_from=("queued",))
    jobs.transition(done.id, "succeeded", only_from=("running",), result={"step": 2, "train_loss": 1.5})
    db.close()  # the server stops (or dies) here

    _, files, jobs = open_stores(tmp_path)
    assert jobs.recover() == [queued.id]  # still waiting: queued again
    failed = jobs.get(running.id)
    assert failed.status == "failed" and failed.finished_at is not None
    assert failed.error == {"code": "server_restarted", "message": STOPPED_WHILE_RUNNING, "param": None}
    events, _ = jobs.events(running.id, None, 1)
    assert events[0].level == "error" and STOPPED_WHILE_RUNNING in events[0].message
    assert jobs.get(done.id).status == "succeeded" and jobs.get(done.id).result == {
        "step": 2,
        "train_loss": 1.5,
    }
    assert jobs.get(queued.id).status == "queued"
    assert [j.id for j in jobs.page(None, 10)[0]] == [queued.id, running.id, done.id]
    assert files.get(record.id).rows == 1
    assert jobs.recover() == [queued.id]  # nothing left to fail
    for name in os.listdir(tmp_path):
        if name.startswith("fine_tuning.sqlite3"):
            assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o600, name


def test_a_jobs_command_line_is_what_the_trainer_reads(tmp_path: Path) -> None:
    """The server's side (`Launch.argv`) parsed by the trainer's own command line: every option of the
    protocol reaches its TrainConfig field, and the learning rate multiplier scales the trainer's default."""
    import sys

    from hotlora_server import protocol as p
    from hotlora_server.fine_tuning import Launch
    from hotlora_trainer import TrainConfig
    from hotlora_trainer.cli import build_parser, config_from_args

    options = {
        "r": 8,
        "lora_alpha": 16,
        "lora_dropout": 0.1,
        "target_modules": ["q_proj", "v_proj"],
        "bias": "lora_only",
        "use_rslora": True,
        "init_lora_weights": "gaussian",
        "max_steps": 7,
        "max_length": 96,
        "gradient_accumulation_steps": 2,
        "packing": True,
        "qlora": True,
        "optim": "adamw_8bit",
        "gradient_checkpointing": True,
        "lr_scheduler_type": "cosine",
        "warmup_steps": 0.1,
        "weight_decay": 0.01,
        "logging_steps": 3,
    }
    assert set(options) | {"eval_split"} == set(p.TrainingOptions.model_fields)  # eval_split: below
    _, _, jobs = open_stores(tmp_path)
    hyperparameters = {"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 0.5}
    job = new_job(jobs, "file-x", seed=3, hyperparameters=hyperparameters, options=options)
    launch = Launch(
        home=tmp_path / "home",
        adapters_dir=tmp_path / "store",
        base="base",
        chat_template="chatml",
        device="cpu",
        threads=1,
    )
    argv = launch.argv(job, tmp_path / "train.jsonl", tmp_path / "valid.jsonl")
    assert argv[:3] == [sys.executable, "-m", "hotlora_trainer"]
    args = build_parser().parse_args(argv[3:])
    assert args.log_format == "json" and args.stop_on_stdin_close
    config = config_from_args(args)
    default_rate = TrainConfig.model_fields["learning_rate"].default
    expected = {
        **options,
        "init_lora_weights": "gaussian",
        "name": job.adapter_name,
        "data": tmp_path / "train.jsonl",
        "eval_data": tmp_path / "valid.jsonl",
        "base": "base",
        "chat_template": "chatml",
        "home": tmp_path / "home",
        "adapters_dir": tmp_path / "store",
        "torch_threads": 1,
        "seed": 3,
        "num_train_epochs": 2,
        "per_device_train_batch_size": 4,
        "learning_rate": default_rate * 0.5,
    }
    assert {key: getattr(config, key) for key in expected} == expected

    def config_of(options: dict[str, Any]) -> TrainConfig:
        job = new_job(jobs, "file-x", options=options)
        return config_from_args(build_parser().parse_args(launch.argv(job, tmp_path / "t", None)[3:]))

    assert config_of({"eval_split": 0.25}).eval_split == 0.25
    switched_off = {"qlora": False, "packing": False, "use_rslora": False, "gradient_checkpointing": False}
    off = config_of(switched_off)  # the trainer's own default for qlora is on: false must reach it
    assert {key: getattr(off, key) for key in switched_off} == switched_off
    env = launch.env({"PATH": "/bin", "HOTLORA_API_KEY": "secret"})
    assert "HOTLORA_API_KEY" not in env and env["OMP_NUM_THREADS"] == "1" and env["PATH"] == "/bin"
