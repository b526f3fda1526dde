"""How the base model may be placed: the device, the compute dtype and the quantization, by name.

Names only, no torch: the server's settings and the trainer's config validate them without loading the
model stack, and `base_model` (`pick_device`, `pick_dtype`, `quantization_config`) turns them into torch's.
"""

from __future__ import annotations

from typing import Literal

Device = Literal["auto", "cpu", "cuda"]  # auto: CUDA when present
DType = Literal["auto", "float32", "bfloat16", "float16"]  # auto: bfloat16 on CUDA, float32 on a CPU
Quantize = Literal["nf4", "fp4", "int8", "none"]  # bitsandbytes 4-bit (NF4, FP4), 8-bit, or none
