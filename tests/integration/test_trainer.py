"""The trainer end to end: `hotlora train` on the real SmolLM2, into the store of a running server.

A few steps on a tiny dataset (seconds, not minutes) in each of TRL's three formats: when the command
returns, the running server already serves the new adapter, and its answer differs from the base model's.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from support.live_server import API_KEY, BASE_ID, hotlora_cmd, start_server, stop_server
from support.trainer_data import PIG, QUESTION, SENTENCES

pytestmark = pytest.mark.integration


def chat(client: httpx.Client, model: str) -> str:
    response = client.post(
        "/v1/chat/completions",
        json={
            "model": model,
            "messages": [{"role": "user", "content": QUESTION}],
            "temperature": 0,
            "max_tokens": 24,
        },
    )
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["message"]["content"]


def complete(client: httpx.Client, model: str) -> str:
    response = client.post(
        "/v1/completions",
        json={
            "model": model,
            "prompt": f"English: {QUESTION}\nPig Latin:",
            "temperature": 0,
            "max_tokens": 24,
        },
    )
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["text"]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture
def served(tmp_path: Path, hotlora_home: Path, smollm2_dir: Path) -> Iterator[tuple[str, httpx.Client, Path]]:
    """A running server on an empty store: (its URL, a client with the API key, the store)."""
    store = tmp_path / "store"
    server = start_server(
        ["--home", str(hotlora_home), "--adapters-dir", str(store), "--api-key", API_KEY],
        tmp_path / "server.log",
    )
    try:
        with httpx.Client(
            base_url=server.base_url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=120
        ) as client:
            yield server.base_url, client, store
    finally:
        stop_server(server)


def train(
    server_url: str, hotlora_home: Path, store: Path, data: Path, name: str
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HOTLORA_API_KEY": API_KEY}
    return subprocess.run(
        [
            *hotlora_cmd(),
            "train",
            "--data",
            str(data),
            "--name",
            name,
            "--home",
            str(hotlora_home),
            "--adapters-dir",
            str(store),
            "--server",
            server_url,
            "--max-steps",
            "2",
            "--batch-size",
            "2",
            "--learning-rate",
            "5e-3",
            "--max-seq-length",
            "96",
            "--save-steps",
            "1000",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


def test_trained_adapter_is_served_when_the_command_returns(
    tmp_path: Path, hotlora_home: Path, served: tuple[str, httpx.Client, Path]
) -> None:
    url, client, store = served
    messages = write_jsonl(
        tmp_path / "messages.jsonl",
        [
            {"messages": [{"role": "user", "content": s}, {"role": "assistant", "content": p}]}
            for s, p in zip(SENTENCES, PIG, strict=True)
        ],
    )
    base_answer = chat(client, BASE_ID)
    result = train(url, hotlora_home, store, messages, "pig")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{url} serves 'pig'" in result.stdout
    curl = [line for line in result.stdout.splitlines() if line.startswith("curl ")]
    assert curl and '"model": "pig"' in curl[0] and "$HOTLORA_API_KEY" in curl[0]

    # servable the moment the command returned: no waiting here
    assert "pig" in [m["id"] for m in client.get("/v1/models").json()["data"]]
    assert chat(client, "pig") != base_answer
    assert chat(client, BASE_ID) == base_answer  # the base is untouched

    manifest = json.loads((store / "pig" / "hotlora.json").read_text())
    assert manifest["source"] == "trained" and manifest["base_model"] == BASE_ID
    assert manifest["eval_metrics"]["train_loss"] > 0
    assert (store / "pig" / "loss.png").is_file()


@pytest.mark.parametrize(
    ("name", "rows"),
    [
        (
            "pig-pc",
            [
                {"prompt": f"English: {s}\nPig Latin:", "completion": f" {p}"}
                for s, p in zip(SENTENCES, PIG, strict=True)
            ],
        ),
        (
            "pig-text",
            [{"text": f"English: {s}\nPig Latin: {p}"} for s, p in zip(SENTENCES, PIG, strict=True)],
        ),
    ],
    ids=["prompt-completion", "text"],
)
def test_plain_text_formats_train_completion_adapters(
    tmp_path: Path,
    hotlora_home: Path,
    served: tuple[str, httpx.Client, Path],
    name: str,
    rows: list[dict[str, Any]],
) -> None:
    """`prompt`/`completion` and `text` rows train an adapter for /v1/completions (no chat template)."""
    url, client, store = served
    base_answer = complete(client, BASE_ID)
    result = train(url, hotlora_home, store, write_jsonl(tmp_path / f"{name}.jsonl", rows), name)
    assert result.returncode == 0, result.stdout + result.stderr
    curl = [line for line in result.stdout.splitlines() if line.startswith("curl ")]
    assert curl and "/v1/completions" in curl[0] and f'"model": "{name}"' in curl[0]
    assert complete(client, name) != base_answer
