"""Evaluate: a built-in task's score of the base and of the trained adapter as users get them — greedy
replies from a real `hotlora serve` (`served.py`) to every sentence of the task's evaluation lists.

The run's own model is not scored: it is the full-precision base the adapter trained on, while users chat
with the 4-bit base the server serves, and the two differ by points of word accuracy.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from hotlora_adapters import AdapterStore, inspect_adapter

from . import piglatin
from .run import Run
from .served import EvalServer, ServedEvalError, chat_replies, eval_server, serve_command, wait_servable

SERVED_STORE = "served-store"  # in the run's scratch folder: the evaluation server's store
SERVER_LOG = "eval-server.log"


def score_served(run: Run, export: Path) -> None:
    """With a task, serve the saved adapter `export` and score it and the base through that server into
    `run.task_metrics`, and keep both replies to every evaluation sentence side by side (`run.evaluation`).

    A server that fails is reported and recorded instead of the figures: the trained adapter is still
    registered.
    """
    config = run.config
    if config.task is None:
        return
    store = AdapterStore(run.scratch / SERVED_STORE)
    store.register(config.name, export, base=run.spec)
    lora = inspect_adapter(export).config
    command = serve_command(
        base=config.base,
        home=run.home,
        store=store.root,
        device=run.kind,
        max_lora_rank=max([lora.r, *lora.rank_pattern.values()]),
        chat_template=config.chat_template,
    )
    run.out("scoring the base and the adapter on the evaluation lists as served (hotlora serve, greedy)")
    try:
        with eval_server(command, run.scratch / SERVER_LOG) as server:
            wait_servable(server, config.name)
            _score(run, server)
    except ServedEvalError as e:
        run.task_metrics = {"error": str(e)}
        run.out(f"{config.task}: the served evaluation failed, no figures: {e}")


def _score(run: Run, server: EvalServer) -> None:
    training, sentences = piglatin.split_sentences()
    sources = [s.text for s in sentences]
    references = [piglatin.to_pig_latin(s) for s in sources]
    seen = [piglatin.to_pig_latin(s.text) for s in training]
    tokenizer = run.tokenizer
    longest = max(len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in references)
    budget = min(run.config.eval_max_new_tokens, longest + 16)
    replies: dict[str, list[str]] = {}
    metrics: dict[str, Any] = {}
    for who, model in (("base", server.base_id), ("adapter", run.config.name)):
        t0 = time.monotonic()
        replies[who] = chat_replies(server, model, sources, max_tokens=budget)
        score = piglatin.score(replies[who], references, seen)
        metrics[who] = score.as_dict()
        run.out(
            f"  {who}: {score.sentences} sentences in {time.monotonic() - t0:.0f} s: word accuracy "
            f"{score.word_accuracy:.1%} (words seen in training {score.seen_word_accuracy:.1%}, the "
            f"{score.unseen_words} unseen {score.unseen_word_accuracy:.1%}), exact match {score.exact_match:.1%}"
        )
    run.task_metrics = {**metrics, "served": {**server.served(), "max_tokens": budget}}
    run.evaluation = [
        {"input": s, "reference": r, "base": b, "adapter": a}
        for s, r, b, a in zip(sources, references, replies["base"], replies["adapter"], strict=True)
    ]
    b, a = metrics["base"], metrics["adapter"]
    run.out(
        f"{run.config.task}: word accuracy adapter {a['word_accuracy']:.1%} vs base {b['word_accuracy']:.1%}; "
        f"exact match adapter {a['exact_match']:.1%} vs base {b['exact_match']:.1%} "
        f"(served: {server.base_id}, {server.quantization})"
    )
