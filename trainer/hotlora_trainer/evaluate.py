"""Evaluate: a built-in task's score of the base before training and of the adapter after, from greedy
generations (chat prompts in, replies out, batched with left padding) on the task's evaluation lists."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from . import piglatin
from .encoding import render_chat
from .run import Run


def score_base(run: Run) -> None:
    """With a task, score the loaded base (before LoRA wraps it) into `run.task_metrics["base"]`, and
    keep its replies for the side-by-side comparison the training log holds."""
    if run.config.task is None:
        return
    run.out("evaluating the base model on the evaluation lists (greedy)")
    run.task_metrics["base"], run.base_replies = _score_task(run)


def score_adapter(run: Run) -> None:
    """With a task, score the trained adapter and compare with the base: the figures, and both replies to
    every evaluation sentence side by side (`run.evaluation`), so a person can read where they differ."""
    if run.config.task is None:
        return
    run.out("evaluating the adapter on the evaluation lists (greedy)")
    run.task_metrics["adapter"], replies = _score_task(run)
    _, sentences = piglatin.split_sentences()
    run.evaluation = [
        {"input": s.text, "reference": piglatin.to_pig_latin(s.text), "base": base, "adapter": adapter}
        for s, base, adapter in zip(sentences, run.base_replies, replies, strict=True)
    ]
    b, a = run.task_metrics["base"], run.task_metrics["adapter"]
    run.out(
        f"{run.config.task}: word accuracy adapter {a['word_accuracy']:.1%} vs base {b['word_accuracy']:.1%}; "
        f"exact match adapter {a['exact_match']:.1%} vs base {b['exact_match']:.1%}"
    )


def _score_task(run: Run) -> tuple[dict[str, Any], list[str]]:
    model, tokenizer = run.model, run.tokenizer
    training, sentences = piglatin.split_sentences()
    sources = [s.text for s in sentences]
    references = [piglatin.to_pig_latin(s) for s in sources]
    longest = max(len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in references)
    budget = min(run.config.eval_max_new_tokens, longest + 16)
    t0 = time.monotonic()
    # decoding reads every weight once per step whatever the batch: few large batches are fastest
    on_cuda = next(model.parameters()).device.type == "cuda"
    replies = generate_replies(
        model, tokenizer, sources, max_new_tokens=budget, batch_size=len(sources) if on_cuda else 40
    )
    score = piglatin.score(replies, references, [piglatin.to_pig_latin(s.text) for s in training])
    run.out(
        f"  {score.sentences} sentences in {time.monotonic() - t0:.0f} s: word accuracy {score.word_accuracy:.1%} "
        f"(words seen in training {score.seen_word_accuracy:.1%}, the {score.unseen_words} unseen "
        f"{score.unseen_word_accuracy:.1%}), exact match {score.exact_match:.1%}"
    )
    return score.as_dict(), replies


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
    prompts = [
        render_chat(tokenizer, [{"role": "user", "content": m}], add_generation_prompt=True)
        for m in user_messages
    ]
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
