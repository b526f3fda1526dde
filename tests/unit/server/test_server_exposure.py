"""Exposure: an empty API key is refused, a keyless server stays on loopback unless a loud flag says
otherwise, and without a key only localhost, IP addresses and `--allowed-hosts` names are answered (DNS
rebinding: a web page's requests carry its own name as `Host`), with 403 before any route, purge included.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from hotlora_cli.main import build_parser, main
from hotlora_cli.serve import serve_settings
from hotlora_server.api.hosts import host_allowed, host_name
from hotlora_server.settings import Settings

from support.tiny_server import ADAPTER_NAME, API_KEY, running_engine, tiny_settings

REBOUND = "evil.example:8000"  # a name a web page controls, pointed at 127.0.0.1
LOCAL_HOSTS = [
    "localhost:8000",
    "127.0.0.1:8000",
    "[::1]:8000",
    "app.localhost",
    "LOCALHOST.",
    "192.168.1.5:8000",
]


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOTLORA_HOME", str(tmp_path))
    for name in ("HOTLORA_API_KEY", "HOTLORA_HOST", "HOTLORA_ALLOWED_HOSTS", "HOTLORA_INSECURE_NO_API_KEY"):
        monkeypatch.delenv(name, raising=False)


def serve(*argv: str) -> Settings:
    """What `hotlora serve ARGV` would run with (nothing is started)."""
    return serve_settings(build_parser().parse_args(["serve", *argv]))


# -- the API key ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["", " ", "\t\n"])
def test_an_empty_api_key_is_refused_from_the_flag_and_the_environment(tmp_path: Path, key: str) -> None:
    home = {"HOTLORA_HOME": str(tmp_path)}
    for flags, environment in (({"api_key": key}, home), ({}, {**home, "HOTLORA_API_KEY": key})):
        with pytest.raises(ValidationError, match="an empty API key would leave every route open"):
            Settings.build(flags, environment)


def test_the_command_line_says_why_an_empty_key_is_refused(env: None) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["serve", "--api-key", ""])  # what `--api-key "$KEY"` becomes with KEY unset
    message = str(exc.value.code)
    assert (
        message.startswith("hotlora: invalid settings: api_key: an empty API key")
        and "Value error" not in message
    )


def test_a_key_padded_with_whitespace_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="whitespace"):
        Settings.build({"api_key": "k \n"}, {"HOTLORA_HOME": str(tmp_path)})


# -- listening beyond loopback -------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.5", "my-workstation"])
def test_a_keyless_server_beyond_loopback_is_refused(env: None, host: str) -> None:
    with pytest.raises(SystemExit) as exc:
        serve("--host", host)
    message = str(exc.value.code)
    assert f"--host {host}" in message and "--api-key" in message and "--insecure-no-api-key" in message


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_a_key_or_the_loud_flag_lets_it_listen_beyond_loopback(
    env: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, host: str
) -> None:
    assert serve("--host", host, "--api-key", "k").host == host
    monkeypatch.setenv("HOTLORA_API_KEY", "k")
    assert serve("--host", host).api_key == "k"
    monkeypatch.delenv("HOTLORA_API_KEY")
    with caplog.at_level(logging.WARNING, logger="hotlora"):
        assert serve("--host", host, "--insecure-no-api-key").insecure_no_api_key
    assert "WITHOUT AN API KEY" in caplog.text


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
def test_loopback_needs_no_key(env: None, host: str) -> None:
    assert serve("--host", host).api_key is None


def test_fetch_is_not_refused_for_a_keyless_exposed_host(
    env: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HOTLORA_HOST", "0.0.0.0")  # fetch listens nowhere
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    assert main(["fetch", "--model", str(empty)]) == 1
    assert "config.json" in capsys.readouterr().err


# -- which Host headers are answered -------------------------------------------------------------------


def test_allowed_hosts_from_flags_and_the_environment(env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    assert serve("--allowed-hosts", "a.example,.B.example", "--allowed-hosts", "c.example").allowed_hosts == (
        "a.example",
        ".b.example",
        "c.example",
    )
    monkeypatch.setenv("HOTLORA_ALLOWED_HOSTS", "d.example, .e.example")
    assert serve().allowed_hosts == ("d.example", ".e.example")


@pytest.mark.parametrize(
    "entry", ["http://a.example", "a.example:8000", "cafe.be:8000", "a.example/x", "a example"]
)
def test_an_allowed_host_must_be_a_name(env: None, entry: str) -> None:
    with pytest.raises(SystemExit, match="not a host name"):
        serve("--allowed-hosts", entry)


def test_which_hosts_are_checked(tmp_path: Path) -> None:
    def check(**flags: Any) -> tuple[str, ...] | None:
        return Settings.build(flags, {"HOTLORA_HOME": str(tmp_path)}).host_check

    assert check() == ()  # no key: localhost and IP addresses only
    assert check(allowed_hosts=["a.example"]) == ("a.example",)
    assert check(api_key="k") is None  # a key: a rebound page cannot send it, so any name
    assert check(api_key="k", allowed_hosts=["a.example"]) == ("a.example",)  # asked for: checked anyway
    assert check(allowed_hosts=["*"]) is None


def test_host_names_are_matched_as_django_does() -> None:
    assert host_name("[::1]:8000") == "::1" and host_name("Example.COM.:80") == "example.com"
    assert all(host_allowed(h, ()) for h in LOCAL_HOSTS)
    assert not host_allowed(REBOUND, ()) and not host_allowed("127.0.0.1.evil.example", ())
    assert not host_allowed("localhost.evil.example", ()) and not host_allowed("evil.example:80:80", ())
    assert host_allowed("api.b.example", (".b.example",)) and host_allowed("b.example:1", (".b.example",))
    assert not host_allowed("notb.example", (".b.example",)) and not host_allowed(
        "x.a.example", ("a.example",)
    )


# -- the guard in the app ------------------------------------------------------------------------------


@pytest.fixture
def own_store(tmp_path: Path, adapter_store: Path) -> Path:
    """A copy of the adapter store, so that a purge that got through could not hurt other tests."""
    store = tmp_path / "store"
    shutil.copytree(adapter_store, store)
    return store


@pytest.fixture
def keyless_app(tiny_dir: Path, own_store: Path, tmp_path: Path) -> Iterator[tuple[Any, Path]]:
    """The app as `hotlora serve` builds it without a key, over a real engine and its own store."""
    from fastapi.testclient import TestClient

    from hotlora_server.api import create_app

    settings = tiny_settings(tiny_dir, tmp_path / "home", own_store)
    with running_engine(settings) as engine:
        app = create_app(engine, api_key=settings.api_key, allowed_hosts=settings.host_check)
        with TestClient(app, base_url="http://localhost:8000") as client:
            yield client, own_store


def test_a_rebound_host_reaches_no_route(keyless_app: tuple[Any, Path], openai_error: Any) -> None:
    client, _ = keyless_app
    evil = {"host": REBOUND}
    chat = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    for method, path, body in [
        ("GET", "/v1/models", None),
        ("POST", "/v1/chat/completions", chat),
        ("GET", "/metrics", None),
        ("GET", "/openapi.json", None),
        ("GET", "/docs", None),
        ("POST", "/v1/adapters", {"name": "x", "path": "/etc"}),
        ("GET", "/nowhere", None),
    ]:
        error = openai_error(
            client.request(method, path, json=body, headers=evil), 403, code="host_not_allowed"
        )
        assert "evil.example" in error["message"] and "--allowed-hosts" in error["message"], error
    assert client.get("/health", headers=evil).status_code == 200  # probes address it by any name
    for host in LOCAL_HOSTS:
        assert client.get("/v1/models", headers={"host": host}).status_code == 200, host


def test_a_purge_from_a_rebound_host_deletes_nothing(
    keyless_app: tuple[Any, Path], openai_error: Any
) -> None:
    client, store = keyless_app
    purge = f"/v1/adapters/{ADAPTER_NAME}?purge=true"
    openai_error(client.delete(purge, headers={"host": REBOUND}), 403, code="host_not_allowed")
    assert (store / ADAPTER_NAME / "adapter_config.json").is_file()
    assert client.delete(purge).status_code < 300  # the same request to localhost goes through
    assert not (store / ADAPTER_NAME).exists()


def test_with_a_key_any_host_is_answered_unless_hosts_are_listed(tiny_engine: Any, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from hotlora_server.api import create_app

    auth = {"authorization": f"Bearer {API_KEY}", "host": REBOUND}
    for allowed, status in ((None, 200), (["api.example"], 403)):
        settings = Settings.build(
            {"api_key": API_KEY, "allowed_hosts": allowed}, {"HOTLORA_HOME": str(tmp_path)}
        )
        app = create_app(tiny_engine, api_key=settings.api_key, allowed_hosts=settings.host_check)
        with TestClient(app) as client:
            assert client.get("/v1/models", headers=auth).status_code == status
