"""hotlora's extension: blends of stored adapters, asked for per request (`adapters`, or a model string
such as `a*0.7+b*0.3`) or saved as a new adapter. Which methods exist and which take `density` is the
registry's (`blend_methods.py`).

A blend is parsed once, by the validator of the body that carries it, into the `BlendSpec` the engine
runs: the serving layer reads it from the body's `blend` and never parses the string again.
"""

from __future__ import annotations

import math
from typing import Annotated

from pydantic import BaseModel, Field, PrivateAttr

from hotlora_adapters import validate_adapter_name

from ..blend_methods import DEFAULT_METHOD, DENSITY_METHODS, METHODS, BlendMethod
from ..types import BlendSpec
from .common import AdapterName, _Strict

Density = Annotated[float, Field(gt=0.0, le=1.0)]
MAX_BLEND_COMPONENTS = 8
# a blend weight scales its adapter's change to the base; far beyond this the sums overflow (NaN output)
MAX_BLEND_WEIGHT = 10.0


class BlendComponent(_Strict):
    name: AdapterName
    weight: float = 1.0


BlendComponents = Annotated[
    list[BlendComponent], Field(min_length=1, max_length=MAX_BLEND_COMPONENTS, fail_fast=True)
]


class _BlendFields(BaseModel):
    """hotlora's extension: blend stored adapters per request (`extra_body` in the `openai` SDK)."""

    adapters: BlendComponents | None = None
    blend_method: BlendMethod | None = None
    density: Density | None = None
    _blend: BlendSpec | None = PrivateAttr(default=None)

    @property
    def blend(self) -> BlendSpec | None:
        """The blend this request asks for, as its validator parsed it; None for a plain model id."""
        return self._blend

    def _parse_blend(self, model: str) -> None:
        """Called by the body's validator: the blend of the `adapters` field, or of an `a*0.7+b*0.3` model
        string (a malformed blend is a 400 like any other invalid field)."""
        components = (
            [(c.name, c.weight) for c in self.adapters] if self.adapters else parse_blend_model(model)
        )
        if components is None:
            if self.blend_method is not None or self.density is not None:
                raise ValueError("`blend_method` and `density` apply only to a blend of adapters")
            return
        self._blend = make_blend(components, self.blend_method or DEFAULT_METHOD, self.density)


def parse_blend_model(model: str) -> list[tuple[str, float]] | None:
    """`"piglatin*0.7+yoda*0.3"` → [("piglatin", 0.7), ("yoda", 0.3)]; None for a plain model id.

    A weight defaults to 1 (`"a+b"`). Adapter names cannot contain `*` or `+`, so this is unambiguous.
    """
    if "*" not in model and "+" not in model:
        return None
    components: list[tuple[str, float]] = []
    for part in model.split("+"):
        name, star, weight = part.strip().partition("*")
        try:
            value = float(weight) if star else 1.0
        except ValueError:
            raise ValueError(f"blend `{model}`: weight `{weight}` of `{name}` is not a number") from None
        components.append((name.strip(), value))
    return components


def make_blend(components: list[tuple[str, float]], method: BlendMethod, density: float | None) -> BlendSpec:
    """Validate a blend: valid, distinct adapter names, bounded weights, `density` where the method needs it."""
    if not components or len(components) > MAX_BLEND_COMPONENTS:
        raise ValueError(f"a blend combines 1 to {MAX_BLEND_COMPONENTS} adapters")
    names = [validate_adapter_name(name) for name, _ in components]
    if len(set(names)) != len(names):
        raise ValueError("each adapter may appear only once in a blend")
    for name, weight in components:
        if not math.isfinite(weight):
            raise ValueError(f"the weight of `{name}` must be a finite number")
        if abs(weight) > MAX_BLEND_WEIGHT:
            raise ValueError(
                f"the weight of `{name}` must be between -{MAX_BLEND_WEIGHT:g} and {MAX_BLEND_WEIGHT:g} "
                f"(got {weight:g}): a weight scales the adapter's change to the base model"
            )
    if all(weight == 0 for _, weight in components):
        raise ValueError("at least one blend weight must be non-zero")
    needs_density = METHODS[method].needs_density
    if needs_density and density is None:
        raise ValueError(
            f"blend method `{method}` needs `density` (the fraction of weights kept, 0 < density <= 1)"
        )
    if not needs_density and density is not None:
        raise ValueError(f"`density` applies only to the blend methods {', '.join(DENSITY_METHODS)}")
    return BlendSpec(components=tuple(components), method=method, density=density)
