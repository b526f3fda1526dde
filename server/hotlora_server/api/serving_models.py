"""`GET /v1/models` and `GET /v1/models/{id}` (vLLM's `serving_models.py`): the engine's models as cards."""

from __future__ import annotations

from .. import protocol as p
from ..errors import NotFoundError
from ..types import EngineClient, ModelInfo


def _card(info: ModelInfo, base: str) -> p.ModelCard:
    return p.ModelCard(
        id=info.id,
        created=info.created,
        root=base,
        parent=info.parent,
        quantization=info.quantization,
        max_model_len=info.context_length,
        kernel=info.kernel,
        batch_invariant=info.batch_invariant,
    )


async def list_models(engine: EngineClient) -> p.ModelList:
    base = engine.served_model_name
    return p.ModelList(data=[_card(m, base) for m in await engine.list_models()])


async def get_model(engine: EngineClient, model_id: str) -> p.ModelCard:
    models = await engine.list_models()
    for info in models:
        if info.id == model_id:
            return _card(info, engine.served_model_name)
    known = ", ".join(m.id for m in models)
    raise NotFoundError(f"The model '{model_id}' does not exist. Available models: {known}", param="model")
