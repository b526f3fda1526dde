"""Weights as a GGUF file holds them once dequantized, for the kernels that read them in that form."""

from __future__ import annotations

import torch


def q8_0(n: int, k: int, seed: int) -> torch.Tensor:
    """A float32 `[n, k]` weight as a GGUF Q8_0 weight dequantizes: int8 values times an fp16 scale per 32,
    the largest value of each block 127 (as Q8_0 quantizes), one block all zeros."""
    values = torch.randint(-126, 127, (n, k // 32, 32), generator=torch.Generator().manual_seed(seed)).float()
    values[:, :, 0] = 127.0 * torch.where(
        torch.rand(n, k // 32, generator=torch.Generator().manual_seed(seed + 1)) < 0.5, -1.0, 1.0
    )
    values[0, 0] = 0.0
    scales = (
        (torch.rand(n, k // 32, 1, generator=torch.Generator().manual_seed(seed + 2)) / 100).half().float()
    )
    return (values * scales).reshape(n, k)
