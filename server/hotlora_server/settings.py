"""One typed settings object, built once from command-line flags and `HOTLORA_*` environment variables.

Nothing reads the environment at import time: `Settings.build` takes the environment as an argument, so
tests and embedders construct settings explicitly.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ByteSize, ConfigDict, Field, field_validator

from hotlora_adapters import default_home_dir, default_store_dir
from hotlora_adapters.runtime.placement import Device, DType, Quantize

from .network import HostNames, HttpTokens, Origins, ServerUrls, is_loopback
from .protocol import MinP, PositiveInt, RepetitionPenalty, Temperature, TopK, TopP
from .tools import DEFAULT_TOOL_PARSER, get_tool_parser

EngineKind = Literal["builtin", "vllm"]  # who generates: hotlora's own engine, or vLLM behind hotlora
MergePolicy = Literal["auto", "never", "always"]  # when the engine merges an adapter into the base
AUTO_MERGE_AFTER = 64  # `auto` merges an adapter once it had the whole batch for this many forwards


_PATH_LISTS = {"allow_adapter_dir"}  # list settings: `os.pathsep`-separated in the environment
_EMPTY_IS_AN_ERROR = {"api_key"}  # an empty value is refused rather than read as "not given"


class GenerationDefaults(BaseModel):
    """Sampling defaults of a model's generation config (`generation_config.json`, vLLM's keys and ranges):
    what a request that leaves an option out gets. `--override-generation-config` takes this shape."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)

    temperature: Temperature | None = None
    top_p: TopP | None = None
    top_k: TopK | None = None
    min_p: MinP | None = None
    repetition_penalty: RepetitionPenalty | None = None
    max_new_tokens: PositiveInt | None = None  # caps a request without max_tokens (within the context)

    def given(self) -> dict[str, float | int]:
        return self.model_dump(exclude_none=True)

    def describe(self) -> str:
        return ", ".join(f"{k}={v:g}" for k, v in self.given().items()) or "none"


class Settings(BaseModel):
    """Everything `hotlora serve` can be told: every field is a flag (`--<field>`, its description the
    flag's help, its default shown from here) and also reads `HOTLORA_<FIELD>`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str | None = Field(
        None,
        description="HF model folder, .gguf file or hub id (default: the embedded SmolLM2-135M-Instruct)",
    )
    served_model_name: str | None = Field(
        None, description="id of the base model in the API (default: derived from --model)"
    )
    chat_template: str | None = Field(
        None,
        description="the chat template for models without one (or to replace it): `chatml` (built in), a "
        "Jinja file, or the template itself; train with the same one",
    )
    tool_call_parser: str = Field(
        DEFAULT_TOOL_PARSER,
        description="how chat replies write tool calls, as vLLM's flag: `hermes` "
        '(<tool_call>{"name": ..., "arguments": {...}}</tool_call>, what the fallback prompt for templates '
        "without tool support asks for)",
    )
    engine: EngineKind = Field(
        "builtin",
        description="who generates: hotlora's own engine, or vLLM (a child started from --vllm-python, or "
        "the running servers of --vllm-url) with hotlora as its API and adapter control plane",
    )
    vllm_python: Path | None = Field(
        None,
        description="with --engine vllm: the Python of an environment with vLLM installed (vLLM pins its own "
        "torch); hotlora starts vLLM's OpenAI server with it on a private loopback port",
    )
    vllm_url: ServerUrls = Field(
        (),
        description="with --engine vllm: a running vLLM server (started with --enable-lora and "
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True, reading the adapter store by the same path), repeatable or "
        "comma-separated: a fleet, routed by adapter affinity",
    )
    max_loras: int = Field(4, ge=1, description="with --engine vllm: LoRAs in one vLLM batch, as vLLM's flag")
    gpu_memory_utilization: float | None = Field(
        None,
        gt=0,
        le=1,
        description="with --engine vllm: the share of the device's memory vLLM may take, as vLLM's flag (its "
        "CPU build: the share of RAM; default: vLLM's)",
    )
    vllm_start_timeout: float = Field(
        900.0, gt=0, description="with --engine vllm: seconds a vLLM server may take to become ready"
    )
    quantize: Quantize = Field("nf4", description="weight quantization")
    device: Device = Field("auto", description="where the model runs")
    dtype: DType = Field("auto", description="compute dtype; auto: bfloat16 on CUDA, float32 on CPU")
    host: str = Field(
        "127.0.0.1",
        description="interface to bind: loopback keeps the server on this machine; any other needs --api-key "
        "or --insecure-no-api-key",
    )
    port: int = Field(8000, ge=0, le=65535, description="port")
    api_key: str | None = Field(
        None,
        description="require 'Authorization: Bearer KEY' on every route but /health ($HOTLORA_API_KEY, which "
        "`ps` does not show; an empty key is refused)",
    )
    allowed_hosts: HostNames = Field(
        (),
        description="Host names to answer besides localhost and IP addresses, comma-separated or repeated; "
        "`.example.com` is it and its subdomains, `*` any (without an API key other names get 403: DNS "
        "rebinding)",
    )
    insecure_no_api_key: bool = Field(
        False,
        description="allow a --host beyond loopback without an API key: anyone who can reach the port can use "
        "the server and change or delete its adapters",
    )
    allowed_origins: Origins = Field(
        (),
        description="web origins whose pages may call the API from a browser (CORS, vLLM's flag), "
        "comma-separated, repeated or a JSON list, e.g. https://app.example.com; `*` any (default: none, "
        "CORS off). Requests still need the API key when one is set",
    )
    allowed_methods: HttpTokens = Field(
        ("*",), description="with --allowed-origins: the HTTP methods those pages may use"
    )
    allowed_headers: HttpTokens = Field(
        ("*",), description="with --allowed-origins: the request headers those pages may send"
    )
    home: Path = Field(description="data folder for converted models and adapters ($HOTLORA_HOME)")
    adapters_dir: Path = Field(description="adapter store (default $HOTLORA_HOME/adapters)")
    allow_adapter_dir: tuple[Path, ...] = Field(
        (),
        description="a folder adapters may be loaded from by path (repeatable; the store is always allowed)",
    )
    max_loaded_adapters: int = Field(
        8, ge=1, description="adapters and blends kept in memory at once, least recently used evicted"
    )
    max_lora_rank: int = Field(
        64,
        ge=1,
        le=512,
        description="largest LoRA rank an adapter may have, as vLLM's flag: larger ones are refused before "
        "loading",
    )
    max_blend_rank: int = Field(
        256,
        ge=1,
        description="largest rank a blend may have: 'cat' adds its adapters' ranks, 'svd' keeps the largest; "
        "larger blends are refused with 400",
    )
    merge_policy: MergePolicy = Field(
        "never",
        description="merge an adapter into dense weights for speed: always, auto (once it had the whole batch "
        f"to itself for {AUTO_MERGE_AFTER} steps) or never, so that outputs never depend on merge state",
    )
    max_n: int = Field(8, ge=1, description="largest `n` a request may ask for")
    max_num_seqs: int = Field(
        32, ge=1, description="rows (requests x n) decoded together in the running batch; more wait"
    )
    max_num_batched_tokens: int = Field(
        512,
        ge=16,
        description="prompt tokens prefilled per batch step (cached prefix tokens are free): longer prompts "
        "are prefilled in chunks between decode steps",
    )
    kv_cache_memory_bytes: ByteSize = Field(
        ByteSize(4 * 2**30),
        gt=0,
        description="bytes the running batch's keys and values may take, as an integer or with a unit (8GiB, "
        "500MB); a request waits until its worst case fits",
    )
    cpu_prefill: Literal["bf16", "4bit"] = Field(
        "bf16",
        description="how a 4-bit base prefills on a CPU with native bf16: bf16 through bf16 GEMMs on "
        "dequantized weights (several times faster; keeps a second copy of the 4-bit weights, half a byte "
        "per weight), 4bit through bitsandbytes' 4-bit kernel",
    )
    cpu_prefill_cache_gb: float = Field(
        1.0,
        ge=0,
        description="with --cpu-prefill bf16: GiB of dequantized bf16 weights kept so that a prefill neither "
        "dequantizes nor reorders them, 2 bytes per weight in place of the 4-bit copy; 0 dequantizes at "
        "every prefill",
    )
    cpu_kernels: bool = Field(
        True,
        description="on a CPU: hotlora's fixed-order kernels (4-bit layers where bitsandbytes has no fused "
        "kernel, logits, LoRA deltas), compiled once with the system C and C++ compilers; batch invariance needs "
        "them. Without the compilers, or off, torch and bitsandbytes alone",
    )
    batch_invariant: bool | None = Field(
        None,
        description="a request's output does not depend on what shares its batch: on by default where it "
        "holds (a float32 CPU with the kernels); --batch-invariant refuses to start elsewhere, "
        "--no-batch-invariant takes the device's faster attention",
    )
    cpu_4bit: Literal["auto", "bitsandbytes", "hotlora"] = Field(
        "auto",
        description="4-bit layers on a CPU: bitsandbytes' fused kernel (fast only with AVX512-BF16; elsewhere "
        "it dequantizes every weight at every forward) or hotlora's fixed-order 4-bit kernel; auto: "
        "bitsandbytes where its kernel is fused, else hotlora",
    )
    cpu_decode_threads: int | None = Field(
        None,
        ge=1,
        description="threads a decode step runs on a CPU; default: all of torch's, with a few steps now and "
        "then timed on fewer, and fewer kept while they are faster (when other programs hold cores)",
    )
    enable_prefix_caching: bool = Field(
        True,
        description="reuse the KV cache of prompt prefixes already computed (the system turn, shared context) "
        "across requests of the same adapter",
    )
    max_queue: int = Field(
        64,
        ge=1,
        description="requests that may wait for a place in the running batch; beyond it the server answers 429 "
        "with Retry-After at once",
    )
    max_model_len: int | None = Field(
        None, ge=16, description="cap the context window (default: the model's)"
    )
    generation_config: str = Field(
        "auto",
        min_length=1,
        description="where the sampling defaults of requests that leave them out come from, as vLLM's flag: "
        "`auto` (the model's generation_config.json; the embedded model: its card's temperature 0.2, top_p "
        "0.9), `vllm` (none: temperature 1, top_p 1, ...) or a folder holding a generation_config.json",
    )
    override_generation_config: GenerationDefaults = Field(
        GenerationDefaults(),
        description="sampling defaults over those, as JSON (vLLM's flag): "
        f"{', '.join(GenerationDefaults.model_fields)}, e.g. '{{\"temperature\": 0.7}}'",
    )
    max_body_bytes: ByteSize = Field(
        ByteSize(16 * 2**20),
        ge=1024,
        description="largest request body, in bytes or with a unit (1MiB); larger ones get 413",
    )
    fine_tuning: bool = Field(
        True,
        description="OpenAI's fine-tuning API: upload JSONL files (/v1/files) and train adapters with jobs "
        "(/v1/fine_tuning/jobs), each in a worker process; --no-fine-tuning: those routes are 404",
    )
    max_concurrent_jobs: int = Field(
        1, ge=1, description="fine-tuning jobs that train at once; more wait in the queue"
    )
    fine_tuning_threads: int | None = Field(
        None,
        ge=1,
        description="CPU threads of each training process, which also runs at a lower priority, so that "
        "serving stays responsive (default: half the cores, at least one)",
    )
    max_file_bytes: ByteSize = Field(
        ByteSize(64 * 2**20),
        gt=0,
        description="largest fine-tuning file an upload may hold, in bytes or with a unit (100MB, 1GiB); "
        "larger ones get 413",
    )
    web_app: bool = Field(
        True,
        description="the web app at / (chat playground, compare, adapters, training; it calls the API with "
        "the same key as any client); --no-web-app: / is 404",
    )
    metrics_public: bool = Field(
        False, description="serve /metrics without the API key (for a Prometheus scraper)"
    )
    shutdown_timeout: float = Field(
        30.0, ge=0, description="on SIGTERM, seconds to let in-flight requests finish before exiting"
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="the least severe log lines written"
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="text lines, or one JSON object per line with the request id"
    )

    @field_validator("api_key")
    @classmethod
    def _real_key(cls, key: str | None) -> str | None:
        """An empty key would silently leave every route open; padding could never match a header."""
        if key is not None and not key.strip():
            raise ValueError(
                "an empty API key would leave every route open: give a key (e.g. `openssl rand -hex 32`), "
                "or leave --api-key and HOTLORA_API_KEY unset"
            )
        if key is not None and key != key.strip():
            raise ValueError(
                "the API key starts or ends with whitespace, which no Authorization header carries"
            )
        return key

    @field_validator("tool_call_parser")
    @classmethod
    def _known_parser(cls, name: str) -> str:
        get_tool_parser(name)  # a ValueError naming the parsers there are
        return name

    @field_validator("override_generation_config", mode="before")
    @classmethod
    def _defaults_json(cls, value: Any) -> Any:
        """JSON text from the flag or the environment (`{"temperature": 0.7, "top_p": 0.95}`)."""
        if isinstance(value, str):
            try:
                value = json.loads(value) if value.strip() else {}
            except ValueError as exc:
                raise ValueError(f"not valid JSON ({exc})") from None
            if not isinstance(value, dict):
                raise ValueError('must be a JSON object such as {"temperature": 0.7}')
        return value

    @property
    def host_check(self) -> tuple[str, ...] | None:
        """The `Host` names served besides localhost and IP addresses, or None: any. Without an API key
        the check is always on (DNS rebinding); with one, only when `--allowed-hosts` names hosts."""
        if "*" in self.allowed_hosts or (self.api_key is not None and not self.allowed_hosts):
            return None
        return self.allowed_hosts

    def engine_problem(self) -> str | None:
        """Why the engine settings do not go together, or None."""
        if self.engine == "builtin" and (self.vllm_python is not None or self.vllm_url):
            return "--vllm-python and --vllm-url need --engine vllm"
        if self.engine == "vllm" and (self.vllm_python is None) == (not self.vllm_url):
            return (
                "--engine vllm needs either --vllm-python (hotlora starts vLLM: e.g. .venv-vllm/bin/python, "
                "from ./scripts/dev.sh vllm) or --vllm-url (running vLLM servers), not both"
            )
        return None

    def exposure_problem(self) -> str | None:
        """Why these settings must not be served: listening beyond loopback with no API key, unless
        `--insecure-no-api-key` says so. Checked when serving only (`hotlora fetch` listens nowhere)."""
        if self.api_key is not None or self.insecure_no_api_key or is_loopback(self.host):
            return None
        return (
            f"--host {self.host} makes the server reachable from other machines, and it has no API key: "
            "set one with --api-key or HOTLORA_API_KEY, or pass --insecure-no-api-key to let anyone who "
            f"can reach port {self.port} use it and change its adapters"
        )

    @property
    def models_dir(self) -> Path:
        """Where converted models (the embedded GGUF as safetensors) are cached."""
        return self.home / "models"

    @property
    def fine_tuning_dir(self) -> Path:
        """Where fine-tuning files and the jobs database are kept."""
        return self.home / "fine_tuning"

    @property
    def kernels_dir(self) -> Path:
        """Where kernels compiled for this machine are cached."""
        return self.home / "kernels"

    @classmethod
    def build(cls, flags: Mapping[str, Any], env: Mapping[str, str]) -> Settings:
        """Flags win over `HOTLORA_*` variables, which win over defaults; `None` flags are 'not given'."""
        values: dict[str, Any] = {}
        for name in cls.model_fields:
            env_value = env.get(f"HOTLORA_{name.upper()}")
            if env_value is not None and (env_value or name in _EMPTY_IS_AN_ERROR):
                values[name] = env_value.split(os.pathsep) if name in _PATH_LISTS else env_value
            if flags.get(name) is not None:
                values[name] = flags[name]
        home = Path(values["home"]).expanduser() if values.get("home") else default_home_dir(env)
        values["home"] = home
        store = values.get("adapters_dir") or default_store_dir({**env, "HOTLORA_HOME": str(home)})
        values["adapters_dir"] = Path(store).expanduser()
        return cls.model_validate(values)
