"""The memory terms of training, estimated before any step and measured after.

The estimate adds up, in bytes:

- model weights at the chosen precision: every parameter at the compute dtype's size; with QLoRA the
  quantized linear weights at 4 bits plus one float32 absmax per 64-weight block (0.5 + 4/64 bytes each),
  the rest (embeddings, norms) in float32 as `prepare_model_for_kbit_training` leaves them;
- trainable parameters (the LoRA matrices and any `modules_to_save` copies) and their gradients, in
  float32 (bfloat16 under QLoRA, where TRL casts the adapter to bfloat16);
- optimizer states: Adam keeps 2 per trainable parameter (at the parameter's size), 8-bit Adam 2 bytes;
- activations, the course's formula for a transformer layer (Korthikanti et al., 16-bit activations):
  `L·(34·h·b·s + 5·n_heads·b·s²)` bytes with eager attention, without the `s²` term for SDPA/flash
  attention (the attention matrix is never stored); scaled by `bytes per element / 2` for other dtypes
  (×2 for float32 on a CPU). With gradient checkpointing only each layer's input (`2·h·b·s` bytes per
  layer) is kept, plus one layer's activations while it is recomputed.

TRL computes the loss in tiles without materializing the `b·s·vocab` logits, so they add no term.
Torch-free except for `free_memory` / `peak_memory`, which import torch when called.
"""

from __future__ import annotations

import resource
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field

Optim = str  # "adamw_torch", "adamw_8bit", "paged_adamw_8bit"
BNB_BLOCKSIZE = 64
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs to know about a base model (read from its config, no weights loaded)."""

    n_params: int  # unique parameters (tied embeddings once)
    n_layers: int
    hidden_size: int
    n_heads: int
    vocab_size: int
    quantizable_params: int  # weights of the linear layers bitsandbytes quantizes (all but lm_head)
    linear_modules: Mapping[str, tuple[int, int]] = field(default_factory=dict)  # name -> (out, in)


@dataclass(frozen=True)
class MemoryEstimate:
    """Each term in bytes, and the inputs, for printing beside the measured peak."""

    weights: int
    trainable_params: int  # a count, not bytes
    trainable: int
    gradients: int
    optimizer: int
    activations: int
    n_params: int
    compute_dtype: str
    param_dtype: str
    qlora: bool
    optim: str
    batch_size: int
    seq_len: int
    attention: str
    gradient_checkpointing: bool
    activation_formula: str

    @property
    def total(self) -> int:
        return self.weights + self.trainable + self.gradients + self.optimizer + self.activations

    def as_dict(self) -> dict[str, int | str | bool]:
        return {
            "weights": self.weights,
            "trainable_params": self.trainable_params,
            "trainable": self.trainable,
            "gradients": self.gradients,
            "optimizer": self.optimizer,
            "activations": self.activations,
            "total": self.total,
            "activation_formula": self.activation_formula,
        }

    def describe(self) -> str:
        precision = "4-bit NF4 (QLoRA)" if self.qlora else self.compute_dtype
        opt = "2 bytes/param (8-bit)" if "8bit" in self.optim else f"2 x {self.param_dtype}"
        rows = [
            ("model weights", f"{_count(self.n_params)} params at {precision}", self.weights),
            ("trainable params", f"{_count(self.trainable_params)} in {self.param_dtype}", self.trainable),
            ("gradients", f"{_count(self.trainable_params)} in {self.param_dtype}", self.gradients),
            ("optimizer states", f"{self.optim}: {opt}", self.optimizer),
            ("activations", self.activation_formula, self.activations),
        ]
        width = max(len(r[1]) for r in rows)
        head = (
            f"memory estimate (batch {self.batch_size} x {self.seq_len} tokens, {self.compute_dtype} compute, "
            f"{self.attention} attention{', gradient checkpointing' if self.gradient_checkpointing else ''}):"
        )
        lines = [head] + [f"  {name:<17} {what:<{width}}  {fmt_bytes(n):>10}" for name, what, n in rows]
        lines.append(f"  {'total':<17} {'':<{width}}  {fmt_bytes(self.total):>10}")
        return "\n".join(lines)


def estimate(
    shape: ModelShape,
    *,
    trainable_params: int,
    batch_size: int,
    seq_len: int,
    compute_dtype: str = "float32",
    qlora: bool = False,
    optim: Optim = "adamw_torch",
    attention: str = "sdpa",
    gradient_checkpointing: bool = False,
) -> MemoryEstimate:
    """The training memory estimate; see the module docstring for every term."""
    compute_bytes = DTYPE_BYTES[compute_dtype]
    if qlora:
        quantized = shape.quantizable_params
        weights = round(quantized * (0.5 + 4 / BNB_BLOCKSIZE)) + (shape.n_params - quantized) * 4
        param_dtype = "bfloat16"
    else:
        weights = shape.n_params * compute_bytes
        param_dtype = "float32"
    param_bytes = DTYPE_BYTES[param_dtype]
    trainable = trainable_params * param_bytes
    gradients = trainable_params * param_bytes
    optimizer = trainable_params * (2 if "8bit" in optim else 2 * param_bytes)

    L, h, a, b, s = shape.n_layers, shape.hidden_size, shape.n_heads, batch_size, seq_len  # noqa: N806
    eager = attention == "eager"
    per_layer = 34 * h * b * s + (5 * a * b * s * s if eager else 0)
    scale = compute_bytes / 2
    term = "L·(34·h·b·s + 5·n_heads·b·s²)" if eager else "L·34·h·b·s"
    if gradient_checkpointing:
        activations = round((L * 2 * h * b * s + per_layer) * scale)
        layer = "(34·h·b·s + 5·n_heads·b·s²)" if eager else "34·h·b·s"
        formula = f"L·2·h·b·s + {layer}"
    else:
        activations = round(L * per_layer * scale)
        formula = term
    if scale != 1:
        formula += f" ×{scale:g}"
    return MemoryEstimate(
        weights=weights,
        trainable_params=trainable_params,
        trainable=trainable,
        gradients=gradients,
        optimizer=optimizer,
        activations=activations,
        n_params=shape.n_params,
        compute_dtype=compute_dtype,
        param_dtype=param_dtype,
        qlora=qlora,
        optim=optim,
        batch_size=b,
        seq_len=s,
        attention=attention,
        gradient_checkpointing=gradient_checkpointing,
        activation_formula=formula,
    )


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError  # unreachable


def _count(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e5 else f"{n:,}"


def free_memory(device: str) -> int | None:
    """Free memory where training runs: CUDA's free device memory, else the system's MemAvailable."""
    if device == "cuda":
        import torch

        return int(torch.cuda.mem_get_info()[0])
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_peak(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats()


def peak_memory(device: str) -> int:
    """The measured peak: CUDA's peak allocated bytes, else this process's peak resident set size."""
    if device == "cuda":
        import torch

        return int(torch.cuda.max_memory_allocated())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def current_rss() -> int:
    """This process's resident set size now (Linux), for context beside the CPU peak."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            pages = int(f.read().split()[1])
        return pages * resource.getpagesize()
    except OSError:
        return 0
