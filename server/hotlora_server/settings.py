"""One typed settings object, built once from command-line flags and `HOTLORA_*` environment variables.

Nothing reads the environment at import time: `Settings.build` takes the environment as an argument, so
tests and embedders construct settings explicitly.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ByteSize, ConfigDict, Field

from hotlora_adapters import default_home_dir, default_store_dir

EMBEDDED_MODEL_NAME = "smollm2-135m-instruct"

Quantize = Literal["nf4", "fp4", "int8", "none"]
Device = Literal["auto", "cpu", "cuda"]
DType = Literal["auto", "float32", "bfloat16", "float16"]


_PATH_LISTS = {"allow_adapter_dir"}  # list settings: `os.pathsep`-separated in the environment


class Settings(BaseModel):
    """Everything `hotlora serve` can be told; every field also reads `HOTLORA_<FIELD>`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str | None = Field(None, description="HF folder, GGUF file or hub id; None: the embedded SmolLM2")
    served_model_name: str | None = None
    quantize: Quantize = "nf4"
    device: Device = "auto"
    dtype: DType = "auto"
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    api_key: str | None = None
    home: Path
    adapters_dir: Path
    allow_adapter_dir: tuple[Path, ...] = ()
    max_loaded_adapters: int = Field(8, ge=1)
    max_blend_rank: int = Field(256, ge=1, description="largest rank of a blend (`cat` adds its sources' ranks)")
    merge_policy: Literal["auto", "never", "always"] = "never"
    max_n: int = Field(8, ge=1)
    max_num_seqs: int = Field(32, ge=1, description="rows decoded together in the running batch")
    max_num_batched_tokens: int = Field(512, ge=16, description="prompt tokens prefilled per batch step")
    kv_cache_memory_bytes: ByteSize = Field(
        ByteSize(4 * 2**30), gt=0, description="bytes the running batch's KV cache may reserve (vLLM's name)"
    )
    cpu_prefill: Literal["bf16", "4bit"] = Field(
        "bf16", description="how a 4-bit base prefills on a CPU with native bf16 (see engine/prefill_gemm.py)"
    )
    cpu_prefill_cache_gb: float = Field(
        1.0, ge=0, description="GiB of dequantized bf16 weights kept for the bf16 CPU prefill (0: dequantize each time)"
    )
    cpu_kernels: bool = Field(
        True, description="the CPU's fixed-order kernels, compiled once (batch invariance needs them; engine/cpu)"
    )
    cpu_4bit: Literal["auto", "bitsandbytes", "hotlora"] = Field(
        "auto", description="4-bit layers on a CPU: bitsandbytes' fused kernel or hotlora's (auto: the fast one)"
    )
    enable_prefix_caching: bool = Field(True, description="reuse the KV of prompt prefixes already computed")
    max_queue: int = Field(64, ge=1, description="requests waiting for the running batch before 429")
    max_model_len: int | None = Field(None, ge=16)
    max_body_bytes: int = Field(16 * 2**20, ge=1024, description="largest request body; beyond it 413")
    metrics_public: bool = Field(False, description="serve /metrics without the API key")
    shutdown_timeout: float = Field(30.0, ge=0, description="seconds SIGTERM waits for in-flight requests")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = "text"

    @property
    def models_dir(self) -> Path:
        """Where converted models (the embedded GGUF as safetensors) are cached."""
        return self.home / "models"

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
            if env_value not in (None, ""):
                values[name] = env_value.split(os.pathsep) if name in _PATH_LISTS else env_value
            if flags.get(name) is not None:
                values[name] = flags[name]
        home = Path(values["home"]).expanduser() if values.get("home") else default_home_dir(env)
        values["home"] = home
        store = values.get("adapters_dir") or default_store_dir({**env, "HOTLORA_HOME": str(home)})
        values["adapters_dir"] = Path(store).expanduser()
        return cls.model_validate(values)
