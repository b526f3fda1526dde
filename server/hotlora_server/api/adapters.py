"""Adapter management routes: hotlora's `/v1/adapters` and vLLM's load/unload aliases."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse, Response

from .. import protocol as p
from ..errors import NotFoundError
from ..types import EngineClient
from .openapi import PLAIN_TEXT


def build_adapter_router(engine: EngineClient) -> APIRouter:
    router = APIRouter(prefix="/v1")  # in the route paths: metrics label requests by them

    @router.get("/adapters")
    async def list_adapters() -> p.AdapterList:
        return p.AdapterList(data=[p.AdapterCard.of(info) for info in await engine.list_adapters()])

    @router.get("/adapters/{name}/training_log")
    async def training_log(name: p.AdapterName) -> p.AdapterTrainingLog:
        history = await engine.training_log(name)
        if history is None:
            raise NotFoundError(
                f"adapter '{name}' has no training log (only adapters trained by hotlora have one)",
                param="name",
                code="training_log_not_found",
            )
        return p.AdapterTrainingLog(id=name, log_history=history)

    # `:path` lets a name holding `/` (also sent as `%2F`) reach the name check and get its 400
    @router.get("/adapters/{name:path}")
    async def get_adapter(name: p.AdapterName) -> p.AdapterCard:
        for info in await engine.list_adapters():
            if info.name == name:
                return p.AdapterCard.of(info)
        raise NotFoundError(f"adapter '{name}' is not in the store", param="name", code="adapter_not_found")

    @router.post("/adapters")
    async def load_adapter(body: p.AdapterLoadRequest) -> p.AdapterCard:
        return p.AdapterCard.of(await engine.load_adapter(body.name, body.path))

    @router.delete("/adapters/{name:path}")
    async def unload_adapter(name: p.AdapterName, purge: bool = False) -> p.AdapterDeleted:
        await engine.unload_adapter(name, purge=purge)
        return p.AdapterDeleted(id=name, deleted=purge, status="deleted" if purge else "disabled")

    @router.post("/adapters/blend")
    async def save_blend(body: p.BlendSaveRequest) -> p.AdapterCard:
        return p.AdapterCard.of(await engine.save_blend(body.name, body.blend))

    @router.post("/load_lora_adapter", response_class=Response, responses=PLAIN_TEXT)
    async def vllm_load(body: p.LoadLoraAdapterRequest) -> PlainTextResponse:
        await engine.load_adapter(body.lora_name, body.lora_path)
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' added successfully.")

    @router.post("/unload_lora_adapter", response_class=Response, responses=PLAIN_TEXT)
    async def vllm_unload(body: p.UnloadLoraAdapterRequest) -> PlainTextResponse:
        await engine.unload_adapter(body.lora_name)
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")

    return router
