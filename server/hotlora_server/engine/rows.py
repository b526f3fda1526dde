"""A request and its rows as the scheduler carries them: `Job` is one request, `Row` one of its `n`
choices, which turns each sampled token into text, stop checks and events for its client.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from ..errors import HotloraError
from ..types import (
    ChoiceDelta,
    FinishReason,
    GenerationEvent,
    GenerationRequest,
    TokenLogprob,
    TopLogprob,
)
from .grammar import Grammar
from .loader import LoadedModel
from .sampling import RowSampler, logprobs_of
from .text import IncrementalDetokenizer, StopMatcher, token_bytes

log = logging.getLogger(__name__)


@dataclass
class Job:
    """One request: its prompt, what it may generate, and where its events go."""

    request: GenerationRequest
    prompt_ids: list[int]
    max_new_tokens: int
    emit: Callable[[GenerationEvent | HotloraError], None]
    cancelled: threading.Event = field(default_factory=threading.Event)
    key: str | None = None  # the pinned PEFT adapter key, once admitted
    cache: DynamicCache | None = None  # its own cache while prefilling
    prefilled: int = 0  # prompt tokens run so far
    rows: list[Row] = field(default_factory=list)
    failed: bool = False
    grammar: Grammar | None = None  # structured output: each row decodes under its own copy

    @property
    def reach(self) -> int:
        """Tokens a row of this request may hold at its end: its prompt and all it may generate."""
        return len(self.prompt_ids) + self.max_new_tokens

    @property
    def done(self) -> bool:
        """Nothing more to generate: failed, cancelled, or every started row finished."""
        return (
            self.failed
            or self.cancelled.is_set()
            or (bool(self.rows) and all(row.finished for row in self.rows))
        )


class Row:
    """One choice being generated: sampler, detokenizer and stop matcher of a single row."""

    def __init__(self, index: int, job: Job, loaded: LoadedModel, stop_ids: frozenset[int]) -> None:
        self.index = index
        self.job = job
        grammar = job.grammar.matcher() if job.grammar is not None else None
        self.sampler = RowSampler.create(job.request.sampling, index, job.prompt_ids, stop_ids, grammar)
        self.detok = IncrementalDetokenizer(loaded.tokenizer)
        self.stops = StopMatcher(job.request.sampling.stop)
        self.generated = 0
        self.last_token = -1
        self.finished = False

    def step(self, token: int, logits: torch.Tensor, loaded: LoadedModel, stop_ids: frozenset[int]) -> None:
        """Account for one sampled token and emit its text; set `finished` when the row is done."""
        self.generated += 1
        self.last_token = token
        params = self.job.request.sampling
        grammar = self.sampler.grammar
        if token in stop_ids and not params.ignore_eos:
            self._emit(self.detok.flush(), [], finish="stop", flush=True)
            return
        logprobs = self._logprobs(token, logits, loaded) if params.logprobs else []
        piece = self.detok.add(token)
        # as vLLM: stop sequences count once the row has more than `min_tokens` tokens
        text, hit = self.stops.feed(piece) if self.generated > params.min_tokens else (piece, False)
        if hit:
            self._emit(text, logprobs, finish="stop")
        elif grammar is not None and grammar.done:  # the answer is complete: no EOS to wait for
            self._emit(text, logprobs, finish="stop", flush=True)
        elif self.generated >= self.job.max_new_tokens:
            self._emit(text, logprobs, finish="length", flush=True)
        elif text or logprobs:
            self._emit(text, logprobs)

    def _emit(
        self,
        text: str,
        logprobs: list[TokenLogprob],
        finish: FinishReason | None = None,
        flush: bool = False,
    ) -> None:
        if flush:
            tail, hit = self.stops.feed(self.detok.flush())
            text += tail if hit else tail + self.stops.flush()
        self.finished = finish is not None
        self.job.emit(ChoiceDelta(index=self.index, text=text, logprobs=logprobs, finish_reason=finish))

    def _logprobs(self, token: int, logits: torch.Tensor, loaded: LoadedModel) -> list[TokenLogprob]:
        tok = loaded.tokenizer
        value, alternatives = logprobs_of(logits, token, self.job.request.sampling.top_logprobs)

        def piece(token_id: int) -> tuple[str, list[int]]:
            raw = token_bytes(tok, token_id)
            return raw.decode("utf-8", errors="replace"), list(raw)

        text, raw = piece(token)
        top = [
            TopLogprob(token=t, logprob=lp, bytes=b)
            for (t, b), lp in ((piece(i), lp) for i, lp in alternatives)
        ]
        return [TokenLogprob(token=text, logprob=value, bytes=raw, top_logprobs=top)]


def jobs_of(rows: list[Row]) -> list[Job]:
    """The requests `rows` belong to, each once, in row order."""
    return list({id(row.job): row.job for row in rows}.values())


def internal_error(job: Job, exc: Exception) -> HotloraError:
    """Log why `job` failed; the error its client gets (a `HotloraError` already says what went wrong)."""
    log.error(
        "request failed: %s: %s",
        type(exc).__name__,
        exc,
        exc_info=exc,
        extra={"request_id": job.request.request_id},
    )
    if isinstance(exc, HotloraError):
        return exc
    return HotloraError(f"internal error while generating: {type(exc).__name__}: {exc}")
