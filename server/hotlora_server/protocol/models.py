"""`GET /v1/models`: the base and the adapters served on it."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "hotlora"
    root: str
    parent: str | None = None
    quantization: str | None = None
    max_model_len: int | None = None
    kernel: str | None = None  # hotlora: how the base's layers multiply on this machine
    batch_invariant: bool | None = None  # hotlora: whether an output is independent of its batch


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
