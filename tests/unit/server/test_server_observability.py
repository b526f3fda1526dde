"""`/metrics` in Prometheus format, its auth, request ids and the access log (tiny model, real app)."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from support.tiny_server import API_KEY, TINY_NAME

CHAT = {
    "model": TINY_NAME,
    "messages": [{"role": "user", "content": "count to three"}],
    "max_tokens": 6,
    "temperature": 0,
}


def scrape(
    client: Any, headers: dict[str, str] | None = None
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of `/metrics` as {(name, sorted labels): value}."""
    response = client.get("/metrics", headers=headers or {})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def test_metrics_count_requests_tokens_and_latencies(client: Any) -> None:
    before = scrape(client)
    response = client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 200
    usage = response.json()["usage"]
    after = scrape(client)

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta("hotlora_requests_total", endpoint="/v1/chat/completions", status="200") == 1
    assert delta("hotlora_prompt_tokens_total") == usage["prompt_tokens"]
    assert delta("hotlora_generation_tokens_total") == usage["completion_tokens"]
    assert delta("hotlora_time_to_first_token_seconds_count") == 1
    assert delta("hotlora_inter_token_latency_seconds_count") == usage["completion_tokens"] - 1
    assert delta("hotlora_decode_steps_total") >= usage["completion_tokens"] - 1
    assert (
        delta("hotlora_prefill_tokens_total") + delta("hotlora_prefix_cache_hit_tokens_total")
        == usage["prompt_tokens"]
    )
    # nothing in flight once the response is back: the engine thread sets the gauges after the step that
    # sent the last token, which may end after the response is out
    gauges = ("hotlora_requests_running", "hotlora_requests_waiting", "hotlora_batch_rows")
    deadline = time.monotonic() + 10
    while any(after[(g, ())] for g in gauges) and time.monotonic() < deadline:
        time.sleep(0.05)
        after = scrape(client)
    assert [after[(g, ())] for g in gauges] == [0, 0, 0]
    assert after[("hotlora_adapters_resident", ())] >= 0
    assert after[("process_resident_memory_bytes", ())] > 0


def test_unmatched_paths_share_one_label(client: Any) -> None:
    """Random paths (scanners, fuzzers) must not create a series each."""
    client.get("/no/such/path/123")
    client.get("/no/such/path/456")
    labels = {
        dict(labels).get("endpoint") for name, labels in scrape(client) if name == "hotlora_requests_total"
    }
    assert "unmatched" in labels and not any(label and "no/such" in label for label in labels)


def test_metrics_need_the_key_unless_public(keyed_client: Any, tiny_engine: Any, openai_error: Any) -> None:
    from fastapi.testclient import TestClient

    from hotlora_server.api import create_app

    openai_error(keyed_client.get("/metrics"), 401)
    scrape(keyed_client, {"Authorization": f"Bearer {API_KEY}"})
    with TestClient(create_app(tiny_engine, api_key=API_KEY, metrics_public=True)) as public:
        scrape(public)
        openai_error(public.get("/v1/models"), 401)  # only /metrics is opened


def test_with_a_key_only_health_is_open(keyed_client: Any, openai_error: Any) -> None:
    key = {"Authorization": f"Bearer {API_KEY}"}
    for path in ("/openapi.json", "/metrics", "/v1/models", "/v1/adapters"):
        openai_error(keyed_client.get(path), 401)
        assert keyed_client.get(path, headers=key).status_code == 200, path
    assert keyed_client.get("/openapi.json", headers=key).json()["paths"]["/v1/chat/completions"]
    for page in ("/docs", "/redoc"):  # they could not send the key to fetch the schema
        assert keyed_client.get(page, headers=key).status_code == 404
    assert keyed_client.get("/health").status_code == 200


def test_every_response_carries_a_request_id(client: Any, openai_error: Any) -> None:
    ok = client.post("/v1/chat/completions", json=CHAT)
    rid = ok.headers["x-request-id"]
    assert len(rid) == 32 and ok.json()["id"] == f"chatcmpl-{rid}"
    failed = client.post("/v1/chat/completions", json={**CHAT, "model": "nope"})
    openai_error(failed, 404)
    assert failed.headers["x-request-id"] not in ("", rid)


def test_a_sane_client_request_id_is_kept_and_a_hostile_one_replaced(client: Any) -> None:
    kept = client.post(
        "/v1/completions",
        json={"model": TINY_NAME, "prompt": "hi", "max_tokens": 2},
        headers={"X-Request-ID": "trace-42.a:b"},
    )
    assert kept.headers["x-request-id"] == "trace-42.a:b" and kept.json()["id"] == "cmpl-trace-42.a:b"
    for hostile in (b"has space", b"x" * 129, "a\u00e9b".encode(), b"a\\nb", b"<script>"):
        response = client.get("/health", headers={"X-Request-ID": hostile})
        assert len(response.headers["x-request-id"]) == 32, hostile


def test_access_log_has_the_request_id_and_never_the_key(
    keyed_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from hotlora_server.logs import JsonFormatter

    caplog.set_level(logging.INFO)
    good = keyed_client.post(
        "/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {API_KEY}"}
    )
    bad = keyed_client.get("/v1/models", headers={"Authorization": "Bearer sk-wrong-guess"})
    assert good.status_code == 200 and bad.status_code == 401
    access = [r for r in caplog.records if r.name == "hotlora.access"]
    by_id = {r.request_id: r for r in access}  # type: ignore[attr-defined]
    line = by_id[good.headers["x-request-id"]]
    assert (line.method, line.path, line.status) == ("POST", "/v1/chat/completions", 200)  # type: ignore[attr-defined]
    assert by_id[bad.headers["x-request-id"]].status == 401  # type: ignore[attr-defined]
    as_json = json.loads(JsonFormatter().format(line))
    assert as_json["request_id"] == good.headers["x-request-id"] and as_json["status"] == 200
    assert as_json["duration_ms"] > 0 and as_json["logger"] == "hotlora.access"
    text = caplog.text + "".join(JsonFormatter().format(r) for r in caplog.records)
    assert API_KEY not in text and "sk-wrong-guess" not in text
