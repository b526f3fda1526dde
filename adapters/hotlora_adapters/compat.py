"""Does an adapter fit a base model? Judged by architecture and tensor shapes, never by names.

`base_model_name_or_path` in a config is wherever the trainer's base happened to live (a hub id, a temp
folder, null), so it proves nothing; the shapes prove everything PEFT will need. Every mismatch is
collected and reported at once, and an adapter that does not fit is refused before any weight is loaded,
so it is never half-applied.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property

from .errors import IncompatibleAdapterError
from .peft_config import AdapterConfig
from .peft_files import AdapterFiles
from .targets import is_targeted
from .tensor_keys import TensorRole, parse_tensor_key

FINGERPRINT_LENGTH = 16


@dataclass(frozen=True, eq=True)
class BaseSpec:
    """The shape of a base model as PEFT sees it, computed once by whoever loads the base.

    `module_shapes` maps each linear/embedding module's name (as in `named_modules()`, e.g.
    `model.layers.0.self_attn.q_proj`) to `(out_features, in_features)` for linear layers and
    `(num_embeddings, embedding_dim)` for embeddings — both are the module's logical weight shape,
    also for a 4-bit base whose stored weight is packed.
    """

    architecture: str
    module_shapes: Mapping[str, tuple[int, int]]
    # the transformers module folder of the base's class, what PEFT's `auto_mapping` records: `gemma3`
    # for model type `gemma3_text` (not fingerprinted: adapters registered before it keep their prints)
    library: str = ""

    def __post_init__(self) -> None:
        shapes = {str(name): (int(shape[0]), int(shape[1])) for name, shape in self.module_shapes.items()}
        object.__setattr__(self, "module_shapes", shapes)

    def __hash__(self) -> int:
        return hash(self.fingerprint())

    @cached_property
    def parameter_count(self) -> int:
        """Values in the described modules' weights: the most any adapter of this base needs to hold."""
        return sum(rows * cols for rows, cols in self.module_shapes.values())

    def fingerprint(self) -> str:
        """A stable hex digest of the architecture and every module shape: equal bases, equal prints.

        It fingerprints structure, not weights: two fine-tunes of one base share it (by design —
        an adapter trained on one serves the other as far as shapes go).
        """
        return self._fingerprint

    @cached_property
    def _fingerprint(self) -> str:
        payload = json.dumps(
            [self.architecture, sorted([name, list(shape)] for name, shape in self.module_shapes.items())],
            separators=(",", ":"),
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:FINGERPRINT_LENGTH]


def check_compatible(files: AdapterFiles, base: BaseSpec, *, max_rank: int | None = None) -> None:
    """Raise one `IncompatibleAdapterError` listing every way `files` does not fit `base` (and a server
    that serves ranks up to `max_rank`)."""
    mismatches = find_mismatches(files, base, max_rank=max_rank)
    if mismatches:
        raise IncompatibleAdapterError(mismatches, subject=f"adapter at {files.path}")


def find_mismatches(files: AdapterFiles, base: BaseSpec, *, max_rank: int | None = None) -> list[str]:
    """Every way `files` does not fit `base`, one line each, in module order (empty when it fits).

    Size limits come first: PEFT allocates every LoRA layer at the config's rank before it reads a weight,
    so a small file declaring a huge rank, or weights larger than the base itself, must be refused before
    anything is loaded. `max_rank` (the server's `--max-lora-rank`) caps the rank; None: no cap.
    """
    config = files.config
    mismatches = _size_mismatches(files, base, max_rank)
    arch = config.architecture
    if arch is not None and _norm_arch(arch) not in {_norm_arch(base.architecture), _norm_arch(base.library)}:
        mismatches.append(
            f"the adapter was made for a {arch!r} model (adapter_config.json auto_mapping), "
            f"the base is {base.architecture!r}"
        )

    groups: dict[str, dict[TensorRole, list[int]]] = {}
    unknown: list[str] = []
    for key, shape in files.tensor_shapes.items():
        parsed = parse_tensor_key(key)
        if parsed is None:
            unknown.append(key)
        else:
            groups.setdefault(parsed.module, {})[parsed.role] = shape

    for module in sorted(groups, key=natural_key):
        mismatches += _module_mismatches(module, groups[module], base.module_shapes.get(module), config)
    mismatches += [f"{key}: not a tensor name PEFT writes for a LoRA adapter" for key in sorted(unknown)]

    lora_modules = {m for m, roles in groups.items() if any(role.is_lora for role in roles)}
    if not lora_modules:
        mismatches.append("the adapter holds no LoRA weights")
    mismatches += _target_mismatches(config, lora_modules, base)
    return mismatches


def _size_mismatches(files: AdapterFiles, base: BaseSpec, max_rank: int | None) -> list[str]:
    out: list[str] = []
    ranks = [files.config.max_rank]
    ranks += [
        shape[0]
        for key, shape in files.tensor_shapes.items()
        if (parsed := parse_tensor_key(key)) is not None and parsed.role in _RANK_ROWS and shape
    ]
    if max_rank is not None and max(ranks) > max_rank:
        out.append(
            f"rank {max(ranks)} is above this server's limit of {max_rank} (--max-lora-rank); "
            "retrain with a lower r, or start the server with a higher --max-lora-rank"
        )
    values = sum(math.prod(shape) for shape in files.tensor_shapes.values())
    if values > base.parameter_count:
        out.append(
            f"the weights hold {values:,} values, more than the base model's own {base.parameter_count:,}: "
            "no adapter of this base needs that many"
        )
    return out


_RANK_ROWS = frozenset({TensorRole.LORA_A, TensorRole.EMBEDDING_A})  # their first dimension is the rank


def natural_key(name: str) -> list[int | str]:
    """Sort key putting `layers.2` before `layers.10`."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _module_mismatches(
    module: str, roles: dict[TensorRole, list[int]], base_shape: tuple[int, int] | None, config: AdapterConfig
) -> list[str]:
    has_lora = any(role.is_lora for role in roles)
    if base_shape is None:
        if (
            not has_lora
            and TensorRole.BASE_WEIGHT not in roles
            and TensorRole.TOKEN_DELTA not in roles
            and _in_modules_to_save(config, module)
        ):
            return []  # a fully trained module of a kind BaseSpec does not describe (e.g. a norm)
        return [f"{module}: the base model has no such linear or embedding module"]
    out: list[str] = []
    rows, cols = base_shape
    if has_lora:
        out += _lora_mismatches(module, roles, base_shape, config)
    for role in (TensorRole.BASE_WEIGHT, TensorRole.FULL_WEIGHT):
        if role in roles and roles[role] != [rows, cols]:
            out.append(f"{module}: {role.value} has shape {roles[role]}, the base module's is {[rows, cols]}")
    if TensorRole.FULL_BIAS in roles and roles[TensorRole.FULL_BIAS] != [rows]:
        out.append(f"{module}: bias has shape {roles[TensorRole.FULL_BIAS]}, expected {[rows]}")
    delta = roles.get(TensorRole.TOKEN_DELTA)
    if delta is not None and (len(delta) != 2 or delta[1] != cols):
        out.append(f"{module}: trainable token delta has shape {delta}, expected [n_tokens, {cols}]")
    indices = config.trainable_token_indices
    if delta is not None and isinstance(indices, list) and indices and max(indices) >= rows:
        out.append(f"{module}: trainable token index {max(indices)} is outside the base vocabulary of {rows}")
    return out


def _lora_mismatches(
    module: str, roles: dict[TensorRole, list[int]], base_shape: tuple[int, int], config: AdapterConfig
) -> list[str]:
    rows, cols = base_shape
    embedding = TensorRole.EMBEDDING_A in roles or TensorRole.EMBEDDING_B in roles
    if embedding and (TensorRole.LORA_A in roles or TensorRole.LORA_B in roles):
        return [f"{module}: has both linear (lora_A/lora_B) and embedding (lora_embedding_A/B) LoRA weights"]
    # linear base weight is (out, in): A [r, in], B [out, r]; embedding is (num, dim): A [r, num], B [dim, r]
    if embedding:
        a_role, b_role = TensorRole.EMBEDDING_A, TensorRole.EMBEDDING_B
    else:
        a_role, b_role = TensorRole.LORA_A, TensorRole.LORA_B
    a_in, b_out = (rows, cols) if embedding else (cols, rows)
    a_dim_name, b_dim_name = (
        ("num_embeddings", "embedding_dim") if embedding else ("in_features", "out_features")
    )
    a, b = roles.get(a_role), roles.get(b_role)
    out: list[str] = []
    for role, shape in ((a_role, a), (b_role, b)):
        if shape is None:
            out.append(f"{module}: {role.value} is missing")
        elif len(shape) != 2:
            out.append(f"{module}: {role.value} has shape {shape}, expected a matrix")
    if out:
        return out
    assert a is not None and b is not None
    if a[1] != a_in:
        out.append(f"{module}: {a_role.value} has shape {a}, expected {[a[0], a_in]} ({a_dim_name} {a_in})")
    if b[0] != b_out:
        out.append(f"{module}: {b_role.value} has shape {b}, expected {[b_out, b[1]]} ({b_dim_name} {b_out})")
    if a[0] != b[1]:
        out.append(f"{module}: rank {a[0]} in {a_role.value} but {b[1]} in {b_role.value}")
    elif a[0] != (expected := config.rank_for(module)):
        out.append(f"{module}: the weights have rank {a[0]}, adapter_config.json gives r={expected}")
    magnitude = roles.get(TensorRole.MAGNITUDE)
    if magnitude is not None and magnitude != [b_out]:
        out.append(f"{module}: DoRA magnitude has shape {magnitude}, expected {[b_out]}")
    if magnitude is None and config.use_dora:
        out.append(f"{module}: use_dora is set but the DoRA magnitude vector is missing")
    bias = roles.get(TensorRole.LORA_B_BIAS)
    if bias is not None and bias != [b_out]:
        out.append(f"{module}: lora_B.bias has shape {bias}, expected {[b_out]}")
    return out


def _target_mismatches(config: AdapterConfig, lora_modules: set[str], base: BaseSpec) -> list[str]:
    """PEFT silently drops weights of untargeted modules and leaves targeted ones without weights as no-ops."""
    out: list[str] = []
    for module in sorted(lora_modules & base.module_shapes.keys(), key=natural_key):
        if is_targeted(config, module) is False:
            out.append(
                f"{module}: has LoRA weights but target_modules does not select it (PEFT would drop them)"
            )
    for module in sorted(base.module_shapes.keys() - lora_modules, key=natural_key):
        if is_targeted(config, module) is True:
            out.append(
                f"{module}: selected by target_modules but the adapter has no weights for it "
                "(made for a base with other modules or more/fewer layers?)"
            )
    return out


def _in_modules_to_save(config: AdapterConfig, module: str) -> bool:
    return any(module == m or module.endswith("." + m) for m in config.modules_to_save or ())


def _norm_arch(name: str) -> str:
    return name.lower().replace("-", "_")
