"""The vLLM engine's pure parts: LoRA names per store version, fleet routing, and the translation of
requests, chunks and errors between hotlora's shapes and vLLM's (no vLLM needed)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hotlora_adapters import AdapterStore, BaseSpec, check_compatible, inspect_adapter
from hotlora_server.errors import InvalidRequestError, NotFoundError, ServiceUnavailableError
from hotlora_server.settings import GenerationDefaults, Settings
from hotlora_server.types import (
    BlendSpec,
    ChoiceDelta,
    GenerationRequest,
    SamplingParams,
    StructuredOutput,
    Usage,
)
from hotlora_server.vllm.base import VllmBase
from hotlora_server.vllm.child import vllm_command
from hotlora_server.vllm.errors import from_vllm
from hotlora_server.vllm.names import adapter_of, blend_key, lora_name
from hotlora_server.vllm.probe import remove_probe, write_probe
from hotlora_server.vllm.routing import pick
from hotlora_server.vllm.translate import CHAT, COMPLETIONS, events, vllm_request


@dataclass(eq=False)
class Server:
    ready: bool = True
    in_flight: int = 0
    loras: set[str] = field(default_factory=set)

    def has_lora(self, name: str) -> bool:
        return name in self.loras

    @property
    def lora_count(self) -> int:
        return len(self.loras)


def test_each_store_version_gets_its_own_lora_name() -> None:
    first, second = lora_name("piglatin", "v1"), lora_name("piglatin", "v2")
    assert first != second
    assert lora_name("piglatin", "v1") == first  # stable: a loaded name is found again
    assert adapter_of(first) == adapter_of(second) == "piglatin"
    assert adapter_of("smollm2-135m-instruct") is None


def test_blend_names_follow_sources_versions_weights_and_method() -> None:
    blend = BlendSpec((("a", 0.7), ("b", 0.3)))
    key = blend_key(blend, ["1", "2"])
    assert key == blend_key(blend, ["1", "2"])
    assert key != blend_key(blend, ["1", "3"])  # a source re-registered
    assert key != blend_key(BlendSpec((("a", 0.6), ("b", 0.4))), ["1", "2"])
    assert key != blend_key(BlendSpec(blend.components, method="svd"), ["1", "2"])
    assert adapter_of(key) is None


def test_affinity_prefers_a_server_that_has_the_lora() -> None:
    idle, busy_with_it = Server(), Server(in_flight=3, loras={"a@1"})
    assert pick([idle, busy_with_it], "a@1") is busy_with_it


def test_least_loaded_takes_a_lora_nobody_has_and_the_base() -> None:
    busy, idle = Server(in_flight=2, loras={"a@1"}), Server(in_flight=1)
    assert pick([busy, idle], "b@1") is idle
    assert pick([busy, idle], None) is idle


def test_a_new_lora_goes_where_fewest_are_loaded() -> None:
    full, empty = Server(loras={"a@1", "b@1"}), Server()
    assert pick([full, empty], "c@1") is empty


def test_failed_and_unready_servers_are_skipped() -> None:
    down, failed, left = Server(ready=False, loras={"a@1"}), Server(loras={"a@1"}), Server(in_flight=5)
    assert pick([down, failed, left], "a@1", exclude={failed}) is left
    assert pick([down, failed], "a@1", exclude={failed}) is None


def test_chat_request_asks_vllm_for_a_stream_with_usage_and_the_lora() -> None:
    request = GenerationRequest(
        request_id="r",
        model="piglatin",
        sampling=SamplingParams(max_tokens=5, temperature=0.0, stop=("\n",), logprobs=True, top_logprobs=2),
        messages=({"role": "user", "content": "hi"},),
        structured=StructuredOutput(json.dumps({"type": "object"})),
    )
    path, body = vllm_request(request, "piglatin@abc")
    assert path == CHAT
    assert body["model"] == "piglatin@abc" and body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert (body["max_tokens"], body["temperature"], body["stop"]) == (5, 0.0, ["\n"])
    assert (body["logprobs"], body["top_logprobs"]) == (True, 2)
    assert body["response_format"]["json_schema"]["schema"] == {"type": "object"}
    assert "top_p" not in body  # not given: vLLM applies the model's default


def test_completion_request_and_tool_call_arguments_go_back_as_text() -> None:
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": {"x": 1}}}
    chat = GenerationRequest(
        request_id="r",
        model="m",
        sampling=SamplingParams(),
        messages=({"role": "assistant", "content": "", "tool_calls": [call]},),
    )
    _, body = vllm_request(chat, "m")
    assert body["messages"][0]["tool_calls"][0]["function"]["arguments"] == '{"x": 1}'
    path, body = vllm_request(
        GenerationRequest(
            request_id="r", model="m", sampling=SamplingParams(logprobs=True, top_logprobs=1), prompt="p"
        ),
        "m",
    )
    assert (path, body["prompt"], body["logprobs"]) == (COMPLETIONS, "p", 1)


def test_chunks_become_deltas_and_usage() -> None:
    role = {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
    assert events(role) == []
    text = {"choices": [{"index": 1, "delta": {"content": "Hi"}, "finish_reason": "stop"}]}
    assert events(text) == [ChoiceDelta(1, "Hi", [], "stop")]
    legacy = {
        "choices": [
            {
                "index": 0,
                "text": "ab",
                "finish_reason": "length",
                "logprobs": {
                    "tokens": ["a", "b"],
                    "token_logprobs": [-0.5, -1.0],
                    "top_logprobs": [{"a": -0.5}, {"b": -1.0}],
                },
            }
        ]
    }
    [delta] = events(legacy)
    assert (delta.text, delta.finish_reason, [t.token for t in delta.logprobs]) == (
        "ab",
        "length",
        ["a", "b"],
    )
    assert delta.logprobs[0].top_logprobs[0].logprob == -0.5
    assert events({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}) == [Usage(3, 2)]


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (
            400,
            {"error": {"message": "too long", "type": "BadRequestError", "param": "max_tokens", "code": 400}},
            InvalidRequestError,
        ),
        (
            400,
            {"object": "error", "message": "old shape", "type": "BadRequestError", "code": 400},
            InvalidRequestError,
        ),
        (404, {"error": {"message": "no such LoRA", "type": "NotFoundError", "code": 404}}, NotFoundError),
        (
            500,
            {"error": {"message": "boom", "type": "InternalServerError", "code": 500}},
            ServiceUnavailableError,
        ),
    ],
)
def test_vllm_errors_become_hotloras(status: int, body: dict[str, object], kind: type[Exception]) -> None:
    error = from_vllm(status, json.dumps(body).encode(), what="generating")
    assert type(error) is kind
    inner = body.get("error", body)
    assert isinstance(inner, dict)
    assert str(inner["message"]) in error.message


def test_engine_settings_go_together(tmp_path: Path) -> None:
    def settings(**flags: object) -> Settings:
        return Settings.build({"home": tmp_path, **flags}, {})

    fleet = settings(engine="vllm", vllm_url=["http://10.0.0.5:8000/", "http://10.0.0.6:8000,http://h:1"])
    assert fleet.vllm_url == ("http://10.0.0.5:8000", "http://10.0.0.6:8000", "http://h:1")
    assert fleet.engine_problem() is None
    assert "either --vllm-python" in (settings(engine="vllm").engine_problem() or "")
    assert "need --engine vllm" in (settings(vllm_url=["http://h:1"]).engine_problem() or "")
    with pytest.raises(ValueError, match="not a server URL"):
        settings(engine="vllm", vllm_url=["h:1/v1"])


def test_the_child_gets_hotloras_lora_limits_as_vllms_flags(tmp_path: Path) -> None:
    settings = Settings.build(
        {"home": tmp_path, "engine": "vllm", "vllm_python": "/venv/bin/python", "max_lora_rank": 16},
        {},
    )
    base = VllmBase("base", Path("/models/base"), BaseSpec("llama", {}), {"temperature": 0.2, "top_p": 0.9})
    command = vllm_command(settings, base, 4321)
    assert command[:3] == ["/venv/bin/python", "-m", "vllm.entrypoints.openai.api_server"]

    def flag(name: str) -> str:
        return command[command.index(name) + 1]

    assert (flag("--model"), flag("--host"), flag("--port")) == ("/models/base", "127.0.0.1", "4321")
    assert flag("--max-lora-rank") == "16" and "--enable-lora" in command
    # the embedded model's card defaults, as the built-in engine applies them; the flag's over them
    assert json.loads(flag("--override-generation-config")) == {"temperature": 0.2, "top_p": 0.9}
    overridden = settings.model_copy(update={"override_generation_config": GenerationDefaults(top_p=0.5)})
    assert json.loads(vllm_command(overridden, base, 1)[-1]) == {"temperature": 0.2, "top_p": 0.5}
    no_defaults = settings.model_copy(update={"generation_config": "vllm"})
    assert "--override-generation-config" not in vllm_command(no_defaults, base, 1)


def test_the_store_probe_is_a_valid_lora_for_the_base(tmp_path: Path) -> None:
    """What a `--vllm-url` server is asked to load at start: a LoRA that fits the served base."""
    spec = BaseSpec(
        "llama",
        {
            "model.embed_tokens": (64, 16),
            "model.layers.0.self_attn.q_proj": (16, 16),
            "model.layers.0.mlp.down_proj": (16, 32),
        },
    )
    folder = write_probe(tmp_path, spec)
    assert folder.parent == tmp_path / ".probe"
    files = inspect_adapter(folder)
    check_compatible(files, spec)  # raises on any mismatch
    assert files.config.r == 1
    assert AdapterStore(tmp_path).list() == []  # hidden: never an adapter of the store
    remove_probe(folder)
    assert not folder.exists()
