"""A `--vllm-url` server that cannot read the adapter store is refused at start, with what to mount.

The server here is a scripted HTTP server answering as vLLM answers a LoRA path it cannot read (404,
vLLM's error body): a real vLLM on this machine always sees the store, so a blind one is scripted. The
real path (a vLLM that loads the probe) runs in tests/integration/test_vllm_fleet.py.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

from hotlora_server.settings import Settings
from hotlora_server.vllm.engine import VllmEngine

from support.scripted_server import reply, running
from support.tiny_llama import build_tiny_llama


def test_a_server_that_cannot_read_the_store_is_refused(tmp_path: Path) -> None:
    small = dict(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
    )
    build_tiny_llama(**small).save_pretrained(tmp_path / "base")  # 2 kv heads, as many as attention heads
    store = tmp_path / "store"
    not_found = {
        "error": {
            "message": "Loading lora hotlora-probe failed: No adapter found",
            "type": "NotFoundError",
            "code": 404,
        }
    }
    with running() as vllm:
        vllm.answer(reply(200, {}), reply(404, not_found))  # GET /health, then every later request
        flags = {"home": tmp_path, "model": str(tmp_path / "base"), "adapters_dir": store}
        settings = Settings.build({**flags, "engine": "vllm", "vllm_url": [vllm.url]}, {})
        failed = threading.Event()
        engine = VllmEngine(settings, on_fatal=lambda _: failed.set())
        engine.start()
        assert failed.wait(120), "the engine did not give up"
        engine.stop()
        hits = [(h.method, h.path) for h in vllm.hits]
    assert hits[:2] == [("GET", "/health"), ("POST", "/v1/load_lora_adapter")]
    asked = json.loads(vllm.hits[1].body)
    assert Path(asked["lora_path"]).parent == store / ".probe"  # a folder in the store, by its path
    message = str(engine.error)
    assert "cannot read the adapter store" in message and "No adapter found" in message
    assert vllm.url in message
    assert not engine.is_ready()
    assert not any((store / ".probe").iterdir())  # the probe is removed
