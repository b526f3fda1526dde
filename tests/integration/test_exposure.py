"""The real `hotlora serve` command: what it refuses to start with, and what a keyless server answers."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import httpx
import openai
import pytest

from support.live_server import ADAPTER, hotlora_cmd, save_random_lora, serving

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        (["--host", "0.0.0.0"], {}, "--insecure-no-api-key"),
        (["--api-key", ""], {}, "empty API key"),
        ([], {"HOTLORA_API_KEY": ""}, "empty API key"),
    ],
    ids=["keyless-beyond-loopback", "empty-flag", "empty-variable"],
)
def test_serve_refuses_to_start_exposed(
    tmp_path: Path, args: list[str], env: dict[str, str], says: str
) -> None:
    environment = {**{k: v for k, v in os.environ.items() if not k.startswith("HOTLORA_")}, **env}
    done = subprocess.run(
        [*hotlora_cmd(), "serve", "--home", str(tmp_path), *args],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode != 0 and says in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and not any(tmp_path.iterdir())  # refused before anything loads


def test_a_keyless_server_answers_only_local_hosts(
    tmp_path: Path, hotlora_home: Path, smollm2_dir: Path
) -> None:
    store = tmp_path / "store"
    save_random_lora(smollm2_dir, store / ADAPTER)
    with serving(
        ["--home", str(hotlora_home), "--adapters-dir", str(store)], tmp_path / "server.log"
    ) as server:
        rebound = {"Host": "evil.example"}  # a page's own name, pointed at 127.0.0.1
        purge = httpx.delete(f"{server.v1}/adapters/{ADAPTER}", params={"purge": "true"}, headers=rebound)
        assert purge.status_code == 403 and purge.json()["error"]["code"] == "host_not_allowed", purge.text
        assert (store / ADAPTER / "adapter_config.json").is_file()
        page = openai.OpenAI(base_url=server.v1, api_key="unused", max_retries=0, default_headers=rebound)
        with pytest.raises(openai.PermissionDeniedError):
            page.models.list()
        assert httpx.get(f"{server.base_url}/health", headers=rebound).status_code == 200
        port = server.base_url.rsplit(":", 1)[1]
        local = openai.OpenAI(
            base_url=server.v1, api_key="unused", max_retries=0, default_headers={"Host": f"localhost:{port}"}
        )
        assert ADAPTER in [m.id for m in local.models.list()]
