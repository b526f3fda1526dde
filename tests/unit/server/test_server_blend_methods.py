"""The blend-method registry (`hotlora_server.blend_methods`): one list, kept equal to the client SDK's and
true to what PEFT's `add_weighted_adapter` does with each method."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, get_args, get_type_hints

import pytest

from hotlora_server import blend_methods as bm


def test_the_client_offers_the_servers_methods() -> None:
    # the client speaks only HTTP and cannot import the registry: its Literal is a copy, pinned here
    from hotlora_client.types import BlendMethod as ClientBlendMethod

    assert get_args(ClientBlendMethod) == bm.BLEND_METHODS


def test_the_registry_is_the_one_list() -> None:
    from hotlora_server import protocol, types

    assert get_args(bm.BlendMethod) == bm.BLEND_METHODS == tuple(bm.METHODS)
    assert types.BlendMethod is bm.BlendMethod and types.DENSITY_METHODS == bm.DENSITY_METHODS
    assert types.BlendSpec(components=(("a", 1.0),)).method == bm.DEFAULT_METHOD
    assert get_args(protocol.BlendSaveRequest.model_fields["method"].annotation) == bm.BLEND_METHODS


@pytest.mark.parametrize("method", bm.BLEND_METHODS)
def test_density_is_required_exactly_where_the_registry_says(method: str) -> None:
    from hotlora_server.protocol import make_blend

    components = [("a", 0.5), ("b", 0.5)]
    if bm.METHODS[method].needs_density:
        assert make_blend(components, method, 0.5).density == 0.5  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="needs `density`"):
            make_blend(components, method, None)  # type: ignore[arg-type]
    else:
        assert make_blend(components, method, None).method == method  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="applies only to"):
            make_blend(components, method, 0.5)  # type: ignore[arg-type]


def _peft_check(combination_type: str, ranks: list[int]) -> int:
    """The rank PEFT's own check gives a blend of two or more adapters of `ranks` (ValueError if refused)."""
    from peft import LoraConfig
    from peft.tuners.lora.model import LoraModel

    configs = {f"a{i}": LoraConfig(r=r, target_modules=["q_proj"]) for i, r in enumerate(ranks)}
    fake: Any = SimpleNamespace(peft_config=configs, modules=list)
    _, rank, _ = LoraModel._check_add_weighted_adapter(fake, list(configs), combination_type, None)
    return int(rank)


@pytest.mark.parametrize("method", bm.BLEND_METHODS)
def test_each_method_is_what_peft_does(method: str) -> None:
    from peft.tuners.lora.model import LoraModel

    spec = bm.METHODS[method]
    peft_types = get_args(get_type_hints(LoraModel.add_weighted_adapter)["combination_type"])
    assert bm.combination_type(method) in peft_types
    for ranks in ([4, 4, 4], [4, 8], [2, 4, 8]):
        if spec.equal_ranks and len(set(ranks)) > 1:
            with pytest.raises(ValueError, match="same r"):
                _peft_check(spec.combination_type, ranks)
        else:
            assert bm.blend_rank(method, ranks) == _peft_check(spec.combination_type, ranks), ranks
