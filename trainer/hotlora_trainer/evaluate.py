"""Greedy generations for task evaluation: chat prompts in, replies out, batched with left padding."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .encoding import render_chat


def generate_replies(
    model: Any,
    tokenizer: Any,
    user_messages: Sequence[str],
    *,
    max_new_tokens: int,
    batch_size: int = 16,
    progress: Callable[[int, int], None] | None = None,
) -> list[str]:
    """The model's greedy reply to each user message, rendered with the chat template as the server does."""
    import torch

    device = next(p.device for p in model.parameters())
    prompts = [render_chat(tokenizer, [{"role": "user", "content": m}], add_generation_prompt=True) for m in user_messages]
    stop = [tokenizer.eos_token_id]
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(end_of_turn, int) and end_of_turn not in stop and end_of_turn != tokenizer.unk_token_id:
        stop.append(end_of_turn)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    was_training = model.training
    model.eval()
    replies: list[str] = []
    # longest prompts first: rows of a batch are of similar length, so less padding
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    by_index: dict[int, str] = {}
    try:
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            encoded = [tokenizer(prompts[i], add_special_tokens=False)["input_ids"] for i in chunk]
            width = max(len(ids) for ids in encoded)
            input_ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            attention = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, ids in enumerate(encoded):
                input_ids[row, width - len(ids) :] = torch.tensor(ids)
                attention[row, width - len(ids) :] = 1
            with torch.no_grad():
                out = model.generate(
                    input_ids=input_ids.to(device),
                    attention_mask=attention.to(device),
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    eos_token_id=stop,
                    pad_token_id=pad_id,
                )
            for row, i in enumerate(chunk):
                new = out[row, width:].tolist()
                for k, token in enumerate(new):
                    if token in stop:
                        new = new[:k]
                        break
                by_index[i] = tokenizer.decode(new, skip_special_tokens=True).strip()
            if progress is not None:
                progress(min(start + batch_size, len(order)), len(order))
    finally:
        if was_training:
            model.train()
    replies = [by_index[i] for i in range(len(prompts))]
    return replies
