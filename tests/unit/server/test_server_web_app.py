"""The web app's routes: the page with its Content-Security-Policy, its assets, and the training log route.

The page itself is driven in a real browser by `tests/integration/test_web_app.py`; here are the HTTP
answers around it (no browser needed) and the markdown renderer's escaping, run by node when it is there.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from hotlora_server.api import create_app
from hotlora_server.web import STATIC_DIR

from support.tiny_server import ADAPTER_NAME, API_KEY, assert_error, running_engine, tiny_settings

LOG = {
    "log_history": [
        {"loss": 2.5, "grad_norm": 1.0, "learning_rate": 0.001, "epoch": 0.5, "step": 1},
        {"loss": math.nan, "epoch": 1.0, "step": 2},  # a diverged step: NaN is dropped, the step kept
        {"eval_loss": 2.0, "epoch": 1.0, "step": 2},
        {"train_runtime": 3.2, "train_loss": 2.2, "step": 2, "note": "text is dropped"},
    ],
    "samples": [],
}


@pytest.fixture(scope="module")
def logged_store(tmp_path_factory: pytest.TempPathFactory, adapter_store: Path) -> Path:
    """A store with the session's tiny adapter three times: with the trainer's log, without one, and with
    a log that is a symlink to a file outside the store."""
    store = tmp_path_factory.mktemp("logged-store")
    outside = tmp_path_factory.mktemp("outside") / "secret.json"
    outside.write_text(json.dumps(LOG))
    for name in ("trained", "imported", "linked"):
        shutil.copytree(adapter_store / ADAPTER_NAME, store / name)
    (store / "trained" / "training_log.json").write_text(json.dumps(LOG))
    (store / "linked" / "training_log.json").symlink_to(outside)
    return store


@pytest.fixture(scope="module")
def keyed(tiny_dir: Path, logged_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The app with an API key, over the logged store."""
    settings = tiny_settings(tiny_dir, tmp_path_factory.mktemp("home"), logged_store)
    with running_engine(settings) as engine, TestClient(create_app(engine, api_key=API_KEY)) as client:
        yield client


def test_the_page_is_served_without_the_key_and_forbids_remote_scripts(keyed: Any) -> None:
    page = keyed.get("/")
    assert page.status_code == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "script-src 'self'" in policy and "unsafe" not in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    assert '<script type="module" src="/static/app.js">' in page.text
    assert "http://" not in page.text and "https://" not in page.text  # nothing from elsewhere
    assert API_KEY not in page.text
    assert_error(keyed.get("/v1/models"), 401)  # the API behind it still needs the key


@pytest.mark.parametrize(
    ("name", "content_type"),
    [("app.js", "text/javascript; charset=utf-8"), ("style.css", "text/css; charset=utf-8")],
)
def test_assets_are_served_with_their_content_type(keyed: Any, name: str, content_type: str) -> None:
    answer = keyed.get(f"/static/{name}")
    assert answer.status_code == 200 and answer.headers["content-type"] == content_type
    assert answer.content == (STATIC_DIR / name).read_bytes()


def test_every_module_the_page_imports_is_shipped_and_nothing_comes_from_elsewhere() -> None:
    for module in STATIC_DIR.glob("*.js"):
        source = module.read_text()
        for imported in source.split('from "./')[1:]:
            assert (STATIC_DIR / imported.split('"')[0]).is_file(), (module.name, imported)
        assert "://" not in source.replace("http://www.w3.org/2000/svg", ""), module.name  # no remote URL


@pytest.mark.parametrize("path", ["/static/missing.js", "/static/..%2f__init__.py", "/static/__init__.py"])
def test_anything_else_is_a_404(keyed: Any, path: str) -> None:
    assert_error(keyed.get(path), 404)


def test_the_page_is_behind_the_host_check(tiny_engine: Any) -> None:
    app = create_app(tiny_engine, allowed_hosts=[])
    with TestClient(app, base_url="http://localhost") as client:
        assert client.get("/").status_code == 200
        assert_error(client.get("/", headers={"Host": "rebound.example"}), 403, code="host_not_allowed")


def test_the_web_app_can_be_turned_off(tiny_engine: Any) -> None:
    with TestClient(create_app(tiny_engine, web_app=False)) as client:
        assert_error(client.get("/"), 404)
        assert_error(client.get("/static/app.js"), 404)


def test_the_training_log_keeps_the_finite_numbers(keyed: Any) -> None:
    auth = {"Authorization": f"Bearer {API_KEY}"}
    assert_error(keyed.get("/v1/adapters/trained/training_log"), 401)
    answer = keyed.get("/v1/adapters/trained/training_log", headers=auth)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "object": "adapter.training_log",
        "id": "trained",
        "log_history": [
            {"loss": 2.5, "grad_norm": 1.0, "learning_rate": 0.001, "epoch": 0.5, "step": 1},
            {"epoch": 1.0, "step": 2},
            {"eval_loss": 2.0, "epoch": 1.0, "step": 2},
            {"train_runtime": 3.2, "train_loss": 2.2, "step": 2},
        ],
    }
    assert keyed.get("/v1/adapters/trained", headers=auth).json()["id"] == "trained"  # still the card


def test_the_training_log_refuses_what_it_cannot_show(keyed: Any) -> None:
    auth = {"Authorization": f"Bearer {API_KEY}"}
    assert_error(
        keyed.get("/v1/adapters/imported/training_log", headers=auth), 404, code="training_log_not_found"
    )
    assert_error(keyed.get("/v1/adapters/nobody/training_log", headers=auth), 404, code="adapter_not_found")
    assert_error(keyed.get("/v1/adapters/Bad%20Name/training_log", headers=auth), 400)
    linked = assert_error(keyed.get("/v1/adapters/linked/training_log", headers=auth), 400)
    assert "training_log.json" in linked["message"]


MARKDOWN_CHECK = """
import { renderMarkdown } from "%s";
const inputs = JSON.parse(process.argv[2]);
console.log(JSON.stringify(inputs.map(renderMarkdown)));
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed: the renderer is JavaScript")
def test_markdown_escapes_html_before_rendering(tmp_path: Path) -> None:
    script = tmp_path / "check.mjs"
    script.write_text(MARKDOWN_CHECK % (STATIC_DIR / "markdown.js").as_uri())
    inputs = [
        "**bold** <script>alert(1)</script>",
        "```html\n<img src=x onerror=alert(1)>\n```",
        "[x](javascript:alert(1)) [y](https://example.com/a) `<b>`",
        "- <i>one</i>\n- two\n\n# Title & more",
        '[z](https://e.com/"onmouseover="alert(1))',
    ]
    run = subprocess.run(
        ["node", str(script), json.dumps(inputs)], capture_output=True, text=True, check=True, timeout=60
    )
    html = json.loads(run.stdout)
    assert html[0] == "<p><strong>bold</strong> &lt;script&gt;alert(1)&lt;/script&gt;</p>"
    assert html[1] == '<pre><code class="language-html">&lt;img src=x onerror=alert(1)&gt;</code></pre>'
    assert "javascript:" not in html[2].split("<a")[1] and 'href="javascript' not in html[2]
    assert '<a href="https://example.com/a" target="_blank" rel="noopener noreferrer">y</a>' in html[2]
    assert "<code>&lt;b&gt;</code>" in html[2]
    assert html[3] == "<ul><li>&lt;i&gt;one&lt;/i&gt;</li><li>two</li></ul><h1>Title &amp; more</h1>"
    assert "onmouseover=" not in html[4].replace("&quot;onmouseover=&quot;", "")
