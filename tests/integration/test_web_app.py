"""The web app in a real browser: Debian's headless Chromium, driven by Playwright, against the real
`hotlora serve` (SmolLM2, an API key, a real PEFT adapter in its store under two names).

A chat streams its answer; compare streams the base and an adapter side by side; a blend slider changes
the model the request names; a tiny fine-tuning job started from the Train tab succeeds and opens in the
playground; a page without the key asks for it. Screenshots go to `$HOTLORA_TEST_ARTIFACTS/web-app`
(default: a pytest temporary folder; the path is written in the test log).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from support.live_server import (
    ADAPTER,
    API_KEY,
    BASE_ID,
    RunningServer,
    own_home,
    start_server,
    stop_server,
)
from support.trainer_data import chat_row

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ADAPTERS = ("smol-a", "smol-b")
TRAINING = [
    chat_row("The birch canoe slid on the smooth planks.", "ethay irchbay anoecay idslay onway ethay."),
    chat_row("Glue the sheet to the dark blue background.", "ueglay ethay eetshay otay ethay arkday."),
    chat_row("These days a chicken leg is a rare dish.", "esethay aysday away ickenchay eglay isway."),
    chat_row("Rice is often served in round bowls.", "iceray isway oftenway ervedsay inway oundray."),
]
ANSWERED = 180_000  # ms: a CPU answer of a few dozen tokens, with the model shared by parallel streams


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, hotlora_home: Path, adapter_store: Path
) -> Iterator[RunningServer]:
    """One server for the module, with its own home (store, jobs) holding the session's random adapter
    under two names (a blend of the two is a blend like any)."""
    home = own_home(tmp_path_factory.mktemp("web-app-home"), hotlora_home)
    for name in ADAPTERS:
        shutil.copytree(adapter_store / ADAPTER, home / "adapters" / name)
    args = ["--home", str(home), "--api-key", API_KEY, "--fine-tuning-threads", "1"]
    running = start_server(args, home / "server.log")
    try:
        yield running
    finally:
        stop_server(running)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not os.access(CHROMIUM, os.X_OK):
        if os.geteuid() == 0:  # it can be installed here, so a missing browser is a failure, not a skip
            pytest.fail(f"no Chromium at {CHROMIUM}: apt-get install chromium (scripts/dev.sh test does it)")
        pytest.skip(f"no Chromium at {CHROMIUM}, and only root can install it (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Path:
    root = os.environ.get("HOTLORA_TEST_ARTIFACTS")
    folder = Path(root) / "web-app" if root else tmp_path_factory.mktemp("web-app-screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled():  # in the test log even when the tests pass
        print(f"\nweb app screenshots: {folder}")
    return folder


@pytest.fixture
def page(
    browser: Any, server: RunningServer, screenshots: Path, request: pytest.FixtureRequest
) -> Iterator[Any]:
    """The web app in a fresh tab that already holds the API key (as after the key dialog); a screenshot of
    how it ended is saved, pass or fail."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.add_init_script(f"sessionStorage.setItem('hotlora.apiKey', {json.dumps(API_KEY)})")
    tab = context.new_page()
    tab.goto(server.base_url)
    expect(tab.locator("#base")).to_have_text(BASE_ID, timeout=60_000)
    try:
        yield tab
    finally:
        tab.screenshot(path=str(screenshots / f"{request.node.name}.png"), full_page=True)
        context.close()


def answer_text(answer: Any) -> str:
    expect(answer).to_have_attribute("data-done", "true", timeout=ANSWERED)
    assert not answer.locator(".error").count(), answer.locator(".error").inner_text()
    return str(answer.locator(".content").inner_text())


def test_a_chat_streams_its_answer(page: Any) -> None:
    chat = page.locator("#chat")
    assert page.locator("#base").inner_text() == BASE_ID
    chat.locator(".system").fill("You are a helpful assistant.")
    chat.locator(".max-tokens").fill("24")
    chat.locator(".prompt").fill("What is the capital of France?")
    with page.expect_response("**/v1/chat/completions") as response:
        chat.locator(".send").click()
    body = response.value.request.post_data_json
    assert body["model"] == BASE_ID and body["stream"] is True and body["max_tokens"] == 24
    assert body["messages"][0] == {"role": "system", "content": "You are a helpful assistant."}
    assert response.value.headers["content-type"].startswith("text/event-stream")
    assert answer_text(chat.locator(".message.assistant .answer").last).strip()
    assert "tokens" in chat.locator(".message.assistant .meta").last.inner_text()


def test_compare_streams_the_base_and_adapters_side_by_side(page: Any) -> None:
    page.locator("nav [data-tab=compare]").click()
    compare = page.locator("#compare")
    columns = compare.locator(".column")
    assert columns.count() == 2
    compare.locator(".third").click()
    models = [BASE_ID, *ADAPTERS]  # each new column starts on another model
    assert [columns.nth(i).locator(".model-string").inner_text() for i in range(3)] == models
    compare.locator(".temperature").fill("0")
    compare.locator(".max-tokens").fill("16")
    compare.locator(".prompt").fill("Name three colours.")
    sent: list[str] = []
    page.on(
        "request",
        lambda r: sent.append(r.post_data_json["model"]) if r.url.endswith("/completions") else None,
    )
    compare.locator(".run").click()
    texts = [answer_text(columns.nth(i).locator(".answer")) for i in range(3)]
    assert sorted(sent) == sorted(models)
    assert all(t.strip() for t in texts) and texts[0] != texts[1], texts
    assert texts[1] == texts[2], texts  # the same weights under two names: the same greedy answer


def test_a_blend_slider_sets_the_weight_the_request_sends(page: Any) -> None:
    chat = page.locator("#chat")
    chat.locator(".model-select").select_option(label="Blend of adapters…")
    slider = chat.locator(f"input[data-adapter='{ADAPTERS[0]}']")
    slider.focus()
    for _ in range(10):  # 0 → 0.5 in steps of 0.05, as a user does with the arrow keys
        page.keyboard.press("ArrowRight")
    chat.locator(f"input[data-adapter='{ADAPTERS[1]}']").focus()
    for _ in range(4):
        page.keyboard.press("ArrowLeft")
    blend = f"{ADAPTERS[0]}*0.5+{ADAPTERS[1]}*-0.2"
    assert chat.locator(".model-string").inner_text() == blend
    chat.locator(".max-tokens").fill("16")
    chat.locator(".prompt").fill("Say hello.")
    with page.expect_request("**/v1/chat/completions") as sent:
        chat.locator(".send").click()
    assert sent.value.post_data_json["model"] == blend
    assert answer_text(chat.locator(".answer").last).strip()
    assert blend in chat.locator(".message.assistant .role").last.inner_text()


def test_a_job_trained_from_the_train_tab_opens_in_the_playground(page: Any, tmp_path: Path) -> None:
    page.locator("nav [data-tab=train]").click()
    train = page.locator("#train")
    data = "".join(json.dumps(row) + "\n" for row in TRAINING).encode()
    train.locator(".file").set_input_files(
        {"name": "pig.jsonl", "mimeType": "application/jsonl", "buffer": data}
    )
    train.locator(".upload").click()
    expect(train.locator(".uploaded")).to_contain_text("file-")
    train.locator(".suffix").fill("web")
    train.locator(".n-epochs").fill("1")
    train.locator(".batch-size").fill("2")
    train.locator(".lr-multiplier").fill("25")
    train.locator(".max-steps").fill("2")  # a few steps: seconds, not minutes
    train.locator(".max-length").fill("96")
    with page.expect_response("**/v1/fine_tuning/jobs") as created:
        train.locator(".start").click()
    job = created.value.json()
    assert created.value.request.post_data_json["hotlora"] == {"max_steps": 2, "max_length": 96}
    status = train.locator(".job-status")
    expect(status).to_have_class(re.compile(r"\b(succeeded|failed|cancelled)\b"), timeout=600_000)
    assert status.inner_text() == "succeeded", train.locator(".job").inner_text()
    assert train.locator("svg.chart circle.train").count() >= 1  # the live loss curve, from the events
    model = f"ft-web-{job['id'].rsplit('-', 1)[-1][:8]}"

    train.locator(".open-chat").click()
    chat = page.locator("#chat")
    assert chat.is_visible()
    expect(chat.locator(".model-string")).to_have_text(model)
    chat.locator(".max-tokens").fill("16")
    chat.locator(".prompt").fill("A large size in stockings is hard to sell.")
    chat.locator(".send").click()
    assert answer_text(chat.locator(".answer").last).strip()

    page.locator("nav [data-tab=adapters]").click()
    page.locator(f"#adapters tr[data-adapter='{model}']").click()
    page.locator("#adapters .loss svg.chart circle.train").first.wait_for()  # drawn from its training log


def test_the_adapters_tab_manages_the_store_and_shows_api_errors(page: Any, server: RunningServer) -> None:
    page.on("dialog", lambda dialog: dialog.accept())  # the confirmation before a delete
    page.locator("nav [data-tab=adapters]").click()
    tab = page.locator("#adapters")
    row = tab.locator(f"tr[data-adapter='{ADAPTERS[1]}']")
    row.click()
    expect(tab.locator(".detail h3")).to_have_text(ADAPTERS[1])
    expect(tab.locator(".loss")).to_contain_text("no training log")  # copied in, not trained here
    tab.locator(".detail .unload").click()
    expect(row.locator(".status")).to_have_text("disabled")
    tab.locator(".detail .load").click()
    expect(row.locator(".status")).to_have_text("resident")

    save = tab.locator(".save-blend")
    save.locator(".model-select").select_option(label="Blend of adapters…")
    save.locator(f"input[data-adapter='{ADAPTERS[0]}']").focus()
    for _ in range(10):
        page.keyboard.press("ArrowRight")
    body = {"name": "Bad Name", "adapters": [{"name": ADAPTERS[0], "weight": 0.5}], "method": "cat"}
    refused = httpx.post(
        f"{server.v1}/adapters/blend", json=body, headers={"Authorization": f"Bearer {API_KEY}"}
    )
    assert refused.status_code == 400
    save.locator(".blend-name").fill("Bad Name")
    save.locator("button.primary").click()
    expect(page.locator("#errors .error span").last).to_have_text(refused.json()["error"]["message"])

    save.locator(".blend-name").fill("half-smol")
    with page.expect_response("**/v1/adapters/blend") as saved:
        save.locator("button.primary").click()
    assert saved.value.status == 200 and saved.value.request.post_data_json["adapters"] == body["adapters"]
    blend_row = tab.locator("tr[data-adapter='half-smol']")
    expect(blend_row).to_contain_text("blend")
    blend_row.click()
    tab.locator(".detail .delete").click()
    expect(blend_row).to_have_count(0)
    assert (
        httpx.get(
            f"{server.v1}/adapters/half-smol", headers={"Authorization": f"Bearer {API_KEY}"}
        ).status_code
        == 404
    )


def test_a_page_without_the_key_asks_for_it(browser: Any, server: RunningServer, screenshots: Path) -> None:
    context = browser.new_context()
    page = context.new_page()
    try:
        page.goto(server.base_url)
        dialog = page.locator("#key-dialog")
        dialog.wait_for(state="visible")
        assert "Missing API key" in page.locator("#key-message").inner_text()
        page.locator("#key-input").fill("wrong-key")
        page.keyboard.press("Enter")
        expect(page.locator("#key-message")).to_contain_text("Incorrect API key")
        assert dialog.is_visible()  # the API's own message, asked again
        page.screenshot(path=str(screenshots / "key-dialog.png"))
        page.locator("#key-input").fill(API_KEY)
        page.keyboard.press("Enter")
        expect(page.locator("#base")).to_have_text(BASE_ID)
        assert not dialog.is_visible()
        assert page.evaluate("sessionStorage.getItem('hotlora.apiKey')") == API_KEY
    finally:
        context.close()
