"""Logits with the same bits for a row at any row count (CPU, float32 output layer).

`linear` on the `[vocab, hidden]` weight runs BLAS's `x @ W.T`, which gives a row other bits below
`MIN_ROWS` rows than from there on, so a request's logits depended on how many rows shared its step; it
is also slow there (measured on SmolLM2's 49152 x 576: 14 rows 31.5 ms, 16 rows 13.9 ms). `x @ Wt` on a
transposed copy of the weight gives a row the bits `x @ W.T` gives from `MIN_ROWS` rows on, for any row
count from two (a single row is padded to two), and takes 11.7 ms for 14 rows; so fewer rows take the
copy, more the weight itself (in the server the copy's 16-row GEMM was the slower: 13.2 vs 10.3 ms).
The copy is separate because SmolLM2 ties this weight to its input embedding, whose lookups need the
`[vocab, hidden]` layout (reading the transposed one cost a 16-row decode step 4 ms, measured); its price
is the layer's size again (113 MB here). Measured in-process, alternating per wave (two runs): the logits
of a 15-prompt prefill group 31–33 → 13–14 ms, of a one-row decode step 4.7–5.4 → 6.9–7.3 ms (the price
of the padded row), of a 16-row step unchanged.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch

from .lora_stack import MIN_ROWS


class RowInvariantLogits:
    """A linear output layer's forward: below `MIN_ROWS` rows through a transposed copy of its weight.

    The copy is taken once: the server never writes base weights (merging swaps in other modules).
    """

    def __init__(self, module: torch.nn.Linear) -> None:
        self.module = module
        self.weight_t = module.weight.detach().T.contiguous()

    def __deepcopy__(self, memo: dict[int, Any]) -> Callable[[torch.Tensor], torch.Tensor]:
        """A copy of the layer gets the plain forward: PEFT copies it for an adapter with its own `lm_head`
        (`modules_to_save`) and loads that adapter's weight into the copy, of which this copy knows nothing."""
        module = copy.deepcopy(self.module, memo)
        return type(module).forward.__get__(module)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        count = rows.shape[0]
        if count >= MIN_ROWS:
            out = torch.nn.functional.linear(rows, self.module.weight)
        else:
            if count == 1:  # BLAS multiplies a single row by yet another kernel
                rows = torch.nn.functional.pad(rows, (0, 0, 0, 1))
            out = torch.mm(rows, self.weight_t)[:count]
        if self.module.bias is not None:
            out = out + self.module.bias
        return out.view(*x.shape[:-1], -1)


def install(model: torch.nn.Module) -> bool:
    """Route `model`'s output layer through `RowInvariantLogits`; False where it does not apply (no linear
    output layer, not on CPU, or not float32)."""
    head = model.get_output_embeddings()  # type: ignore[operator]
    if not isinstance(head, torch.nn.Linear) or head.weight.device.type != "cpu" or head.weight.dtype != torch.float32:
        return False
    head.forward = RowInvariantLogits(head)  # type: ignore[method-assign]
    return True
