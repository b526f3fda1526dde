"""What each tensor name in a PEFT `adapter_model.safetensors` means.

PEFT saves keys as `base_model.model.<module>.<suffix>`, with the adapter's own name stripped
(`lora_A.default.weight` is saved as `lora_A.weight`). The suffix says the tensor's role, and the role
says which dimension must match which dimension of the base module.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

PEFT_KEY_PREFIX = "base_model.model."


class TensorRole(Enum):
    """The role of one saved tensor, by its key suffix."""

    LORA_A = "lora_A.weight"  # [r, in_features]
    LORA_B = "lora_B.weight"  # [out_features, r]
    LORA_B_BIAS = "lora_B.bias"  # [out_features], with lora_bias=True
    EMBEDDING_A = "lora_embedding_A"  # [r, num_embeddings]
    EMBEDDING_B = "lora_embedding_B"  # [embedding_dim, r]
    MAGNITUDE = "lora_magnitude_vector"  # DoRA: [out_features] (embeddings: [embedding_dim])
    TOKEN_DELTA = "token_adapter.trainable_tokens_delta"  # [n_tokens, embedding_dim]
    BASE_WEIGHT = "base_layer.weight"  # a full copy of a targeted embedding (save_embedding_layers)
    FULL_WEIGHT = "weight"  # modules_to_save: a full replacement of the module's weight
    FULL_BIAS = "bias"  # modules_to_save: a full replacement of the module's bias

    @property
    def is_lora(self) -> bool:
        return self in _LORA_ROLES


_LORA_ROLES = frozenset(
    {
        TensorRole.LORA_A,
        TensorRole.LORA_B,
        TensorRole.LORA_B_BIAS,
        TensorRole.EMBEDDING_A,
        TensorRole.EMBEDDING_B,
        TensorRole.MAGNITUDE,
    }
)
# Specific suffixes first: "q_proj.lora_A.weight" must not read as the full weight of "q_proj.lora_A".
_SUFFIXES: list[tuple[str, TensorRole]] = sorted(
    [("." + role.value, role) for role in TensorRole]
    + [(".lora_magnitude_vector.weight", TensorRole.MAGNITUDE)],
    key=lambda pair: -len(pair[0]),
)


@dataclass(frozen=True, slots=True)
class TensorKey:
    """A saved tensor name split into the base module it belongs to and its role."""

    module: str
    role: TensorRole


def parse_tensor_key(key: str) -> TensorKey | None:
    """Split a saved key into (module name in the base model, role); None for a key PEFT would not write."""
    name = key.removeprefix(PEFT_KEY_PREFIX)
    for suffix, role in _SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return TensorKey(module=name[: -len(suffix)], role=role)
    return None


def lora_modules(keys: Iterable[str]) -> set[str]:
    """The base modules that saved keys `keys` hold LoRA weights for."""
    return {
        parsed.module for key in keys if (parsed := parse_tensor_key(key)) is not None and parsed.role.is_lora
    }
