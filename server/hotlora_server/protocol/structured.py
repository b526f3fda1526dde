"""`response_format`: OpenAI's structured outputs, on chat and (as vLLM accepts it) text completions.

The shapes are checked here; whether a schema can be enforced is the grammar engine's to say, in a worker
thread (a 400 naming the problem), as compiling a schema is work out of proportion to its bytes.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import Field

from ..types import StructuredOutput
from .common import Text, _Strict


class ResponseFormatText(_Strict):
    type: Literal["text"]


class ResponseFormatJsonObject(_Strict):
    """Any JSON object."""

    type: Literal["json_object"]


class JsonSchema(_Strict):
    name: Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]
    description: Text | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")  # none: any JSON object
    strict: bool | None = None  # the output always follows the schema, strict or not


class ResponseFormatJsonSchema(_Strict):
    type: Literal["json_schema"]
    json_schema: JsonSchema


ResponseFormat = Annotated[
    ResponseFormatText | ResponseFormatJsonObject | ResponseFormatJsonSchema, Field(discriminator="type")
]


def structured_output(response_format: ResponseFormat | None) -> StructuredOutput | None:
    """The engine's grammar for `response_format` (None: free text). The schema keeps its key order, which
    is the order the properties are generated in."""
    if isinstance(response_format, ResponseFormatJsonObject):
        return StructuredOutput()
    if isinstance(response_format, ResponseFormatJsonSchema):
        schema = response_format.json_schema.schema_
        return StructuredOutput(None if schema is None else json.dumps(schema, separators=(",", ":")))
    return None
