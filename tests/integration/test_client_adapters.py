"""Adapter management through the SDK, sync and async, on a real server of its own (a store of real PEFT
adapters in a temp folder, so the shared server's store is never touched); and the new user's check: the
client installed into a fresh virtual environment without torch, used by a short script."""

from __future__ import annotations

import ast
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from hotlora_client import (
    AdapterNotReadyError,
    AsyncClient,
    BadRequestError,
    Client,
    ConflictError,
    NotFoundError,
)

from support.live_server import API_KEY, RunningServer, save_random_lora, serving

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
HI = "Say hi."


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path) -> dict[str, Path]:
    """A store with `alpha` and `beta`, an allowed folder with `incoming` (to load by path), a spare copy."""
    store, allowed, spare = (
        tmp_path_factory.mktemp(name) for name in ("client-store", "client-allowed", "spare")
    )
    save_random_lora(smollm2_dir, store / "alpha", seed=11)
    save_random_lora(smollm2_dir, store / "beta", seed=12)
    shutil.copytree(store / "beta", allowed / "incoming")
    shutil.copytree(store / "alpha", spare / "alpha")
    return {"store": store, "allowed": allowed, "spare": spare}


@pytest.fixture(scope="module")
def own(
    tmp_path_factory: pytest.TempPathFactory, hotlora_home: Path, dirs: dict[str, Path]
) -> Iterator[RunningServer]:
    log = tmp_path_factory.mktemp("client-logs") / "server.log"
    args = [
        "--home",
        str(hotlora_home),
        "--adapters-dir",
        str(dirs["store"]),
        "--api-key",
        API_KEY,
        "--allow-adapter-dir",
        str(dirs["allowed"]),
    ]
    with serving(args, log) as running:
        yield running


@pytest.fixture
def sdk(own: RunningServer) -> Iterator[Client]:
    with Client(own.base_url, api_key=API_KEY, max_retries=0) as client:
        before = {a.id: a.status == "disabled" for a in client.adapters.list()}
        yield client
        after = {a.id: a.status == "disabled" for a in client.adapters.list()}
        assert after == before, "a test left the store changed"


def test_unload_then_load_again(sdk: Client) -> None:
    gone = sdk.adapters.unload("beta")
    assert (gone.id, gone.deleted, gone.status) == ("beta", False, "disabled")
    assert sdk.adapters.get("beta").status == "disabled"
    with pytest.raises(NotFoundError):
        sdk.chat(HI, adapter="beta", max_tokens=4)
    assert "beta" not in [m.id for m in sdk.models.list()]
    back = sdk.adapters.load("beta")
    assert back.ready and back.status == "resident"
    assert sdk.chat(HI, adapter="beta", max_tokens=4).model == "beta"


def test_save_a_blend_chat_with_it_and_purge_it(sdk: Client) -> None:
    mix = sdk.adapters.blend("mix", {"alpha": 0.7, "beta": 0.3})
    try:
        assert mix.id == "mix" and mix.manifest is not None and mix.manifest["source"] == "blend"
        assert mix.manifest["sources"] == [{"name": "alpha", "weight": 0.7}, {"name": "beta", "weight": 0.3}]
        assert sdk.adapters.wait_until_ready("mix", timeout=10).ready
        assert sdk.chat(HI, adapter="mix", max_tokens=4).model == "mix"
        with pytest.raises(ConflictError, match="mix"):
            sdk.adapters.blend("mix", {"alpha": 1.0})
        with pytest.raises(BadRequestError, match="density"):
            sdk.adapters.blend("mix2", {"alpha": 1.0, "beta": 1.0}, method="ties")
    finally:
        purged = sdk.adapters.unload("mix", purge=True)
    assert (purged.deleted, purged.status) == (True, "deleted")
    with pytest.raises(NotFoundError):
        sdk.adapters.get("mix")


def test_load_from_a_path_under_an_allowed_folder(sdk: Client, dirs: dict[str, Path]) -> None:
    loaded = sdk.adapters.load("gamma", path=dirs["allowed"] / "incoming")
    try:
        assert loaded.ready and loaded.manifest is not None and loaded.manifest["source"] == "imported"
        assert "gamma" in [m.id for m in sdk.models.list()]
    finally:
        sdk.adapters.unload("gamma", purge=True)
    with pytest.raises(BadRequestError):
        sdk.adapters.load("delta", path=dirs["spare"] / "alpha")  # not an allowed folder


def test_wait_until_ready_sees_an_adapter_moved_into_the_store(sdk: Client, dirs: dict[str, Path]) -> None:
    def move_in() -> None:  # as a user would: copy next to the store, then move in at once
        os.rename(
            shutil.copytree(dirs["spare"] / "alpha", dirs["spare"] / "copy"), dirs["store"] / "arriving"
        )

    mover = threading.Timer(1.0, move_in)
    mover.start()
    try:
        ready = sdk.adapters.wait_until_ready("arriving", timeout=30, interval=0.2)
        assert ready.id == "arriving" and ready.ready
    finally:
        mover.join()
        sdk.adapters.unload("arriving", purge=True)
    with pytest.raises(AdapterNotReadyError) as caught:
        sdk.adapters.wait_until_ready("never-there", timeout=0.5, interval=0.1)
    assert isinstance(caught.value, TimeoutError) and caught.value.status is None


def test_async_management(own: RunningServer, sdk: Client) -> None:
    async def go() -> None:
        async with AsyncClient(own.base_url, api_key=API_KEY, max_retries=0) as client:
            assert (await client.adapters.unload("alpha")).status == "disabled"
            with pytest.raises(AdapterNotReadyError, match="disabled"):
                await client.adapters.wait_until_ready("alpha", timeout=0.3, interval=0.1)
            assert (await client.adapters.load("alpha")).ready
            saved = await client.adapters.blend("amix", [("alpha", 0.5), ("beta", 0.5)], method="linear")
            try:
                assert saved.manifest is not None and saved.manifest["blend_method"] == "linear"
                stream = await client.chat(HI, adapter="amix", stream=True, max_tokens=4)
                assert [text async for text in stream.text_stream] and stream.text
            finally:
                assert (await client.adapters.unload("amix", purge=True)).deleted
            with pytest.raises(NotFoundError):
                await client.adapters.unload("amix")

    asyncio.run(go())


# -- a new user: pip install ./clients/python into a fresh venv, then a five-line script ------------------------

USER_SCRIPT = """
import importlib.util, os
from hotlora_client import Client, NotFoundError

assert importlib.util.find_spec("torch") is None, "torch is installed: the venv is not fresh"
client = Client()  # HOTLORA_BASE_URL and HOTLORA_API_KEY from the environment

print("adapter:", repr(client.chat("Hello!", adapter="alpha", max_tokens=8, temperature=0).text))
stream = client.chat("Hello!", blend={"alpha": 0.7, "beta": 0.3}, max_tokens=8, temperature=0, stream=True)
print("blend:", repr("".join(stream.text_stream)))
print("unloaded:", client.adapters.unload("beta").status, "loaded:", client.adapters.load("beta").status)
try:
    client.adapters.get("no-such-adapter")
except NotFoundError as exc:
    print("NotFoundError:", exc.message)
"""


def pypi_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=5).close()
        return True
    except OSError:
        return False


def test_fresh_venv_install_without_torch(tmp_path: Path, own: RunningServer, sdk: Client) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            str(REPO / "clients" / "python"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if install.returncode != 0:
        if not pypi_reachable():
            pytest.skip(f"PyPI is unreachable, cannot install httpx and pydantic:\n{install.stderr[-2000:]}")
        pytest.fail(f"pip install ./clients/python failed:\n{install.stdout}\n{install.stderr}")
    installed = subprocess.run(
        [str(python), "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True
    )
    names = {line.split("==")[0].lower() for line in installed.stdout.split()}
    assert "hotlora-client" in names and not names & {"torch", "transformers", "hotlora"}
    assert (venv / "bin" / "hotlora-chat").is_file()

    env = {**os.environ, "HOTLORA_BASE_URL": own.base_url, "HOTLORA_API_KEY": API_KEY}
    env.pop("PYTHONPATH", None)
    run = subprocess.run(
        [str(python), "-c", USER_SCRIPT], capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    adapter_text, blend_text = (ast.literal_eval(line.partition(": ")[2]) for line in lines[:2])
    assert lines[0].startswith("adapter: ") and lines[1].startswith("blend: ") and adapter_text and blend_text
    assert lines[2] == "unloaded: disabled loaded: resident"
    assert lines[3] == "NotFoundError: adapter 'no-such-adapter' is not in the store"
