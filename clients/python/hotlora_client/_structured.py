"""Structured outputs in the SDK: a pydantic model class as `response_format`, and answers parsed into it."""

from __future__ import annotations

import copy
from typing import Any

from pydantic import BaseModel

from . import errors
from .types import ChatCompletion, ModelT, ParsedChatCompletion


def response_format(value: Any) -> Any:
    """`response_format` as the server takes it: a pydantic model class becomes OpenAI's strict
    `json_schema` format (named after the class); anything else goes as given."""
    if isinstance(value, type) and issubclass(value, BaseModel):
        return {
            "type": "json_schema",
            "json_schema": {"name": value.__name__, "schema": strict_schema(value), "strict": True},
        }
    return value


def strict_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema, every object closed (`additionalProperties: false`) unless it says
    otherwise: what OpenAI's strict mode requires, and a grammar then never lets the model add keys."""
    schema = copy.deepcopy(model.model_json_schema())
    pending: list[Any] = [schema]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node:
                node.setdefault("additionalProperties", False)
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)
    return schema


def parsed_completion(model: type[ModelT], completion: ChatCompletion) -> ParsedChatCompletion[ModelT]:
    """`completion` with each choice's text parsed into `model`; `IncompleteOutputError` when a choice ran
    out of tokens (its text stops mid-object)."""
    cut = [choice.index for choice in completion.choices if choice.finish_reason == "length"]
    if cut:
        raise errors.IncompleteOutputError(
            f"choice {cut[0]} reached max_tokens before its JSON was complete; raise max_tokens",
            completion=completion,
        )
    parsed = [model.model_validate_json(choice.message.content or "") for choice in completion.choices]
    return ParsedChatCompletion[model](**completion.model_dump(), parsed_choices=parsed)  # type: ignore[valid-type]
