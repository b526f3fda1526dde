"""Adapter management: hotlora's `/v1/adapters` and vLLM's load/unload bodies, and the cards they answer."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, PrivateAttr, model_validator

from ..blend_methods import DEFAULT_METHOD, BlendMethod
from ..types import AdapterInfo, AdapterStatus, BlendSpec
from .blends import BlendComponents, Density, make_blend
from .common import AdapterName, _Lenient


class AdapterLoadRequest(_Lenient):
    name: AdapterName
    path: Annotated[str, Field(min_length=1)] | None = None


class LoadLoraAdapterRequest(_Lenient):
    """vLLM's `POST /v1/load_lora_adapter`."""

    lora_name: AdapterName
    lora_path: Annotated[str, Field(min_length=1)] | None = None


class UnloadLoraAdapterRequest(_Lenient):
    """vLLM's `POST /v1/unload_lora_adapter`."""

    lora_name: AdapterName


class BlendSaveRequest(_Lenient):
    name: AdapterName
    adapters: BlendComponents
    method: BlendMethod = DEFAULT_METHOD
    density: Density | None = None
    _blend: BlendSpec | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _check_blend(self) -> BlendSaveRequest:
        self._blend = make_blend([(c.name, c.weight) for c in self.adapters], self.method, self.density)
        return self

    @property
    def blend(self) -> BlendSpec:
        """The blend to save, as the validator made it."""
        assert self._blend is not None  # set by the validator
        return self._blend


class AdapterCard(BaseModel):
    id: str
    object: Literal["adapter"] = "adapter"
    status: AdapterStatus
    created: int
    size_bytes: int
    version: str
    manifest: dict[str, Any] | None = None
    error: str | None = None
    rank: int | None = None  # from adapter_config.json: the largest rank, `rank_pattern` included
    target_modules: list[str] | str | None = None  # as adapter_config.json says (names, or one regex)

    @classmethod
    def of(cls, info: AdapterInfo) -> AdapterCard:
        return cls(
            id=info.name,
            status=info.status,
            created=info.created,
            size_bytes=info.size_bytes,
            version=info.version,
            manifest=info.manifest,
            error=info.error,
            rank=info.rank,
            target_modules=info.target_modules,
        )


class AdapterDeleted(BaseModel):
    id: str
    object: Literal["adapter"] = "adapter"
    deleted: bool  # removed from the store (`purge`), not only unloaded and disabled
    status: Literal["disabled", "deleted"]


class AdapterTrainingLog(BaseModel):
    """`GET /v1/adapters/{name}/training_log`: the trainer's `log_history` (TRL's), finite numbers only."""

    object: Literal["adapter.training_log"] = "adapter.training_log"
    id: str
    log_history: list[dict[str, float]]


class AdapterList(BaseModel):
    object: Literal["list"] = "list"
    data: list[AdapterCard]
