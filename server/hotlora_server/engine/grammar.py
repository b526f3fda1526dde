"""Structured outputs: a JSON schema compiled into a grammar (llguidance), and one matcher per row.

llguidance was chosen by measurement over xgrammar and outlines-core (docs/performance.md, "Structured
outputs"): its mask costs little beside a decode step, a new schema compiles without a noticeable wait,
it refuses the schema features it cannot enforce (`not`, `if`, `uniqueItems`, ...) and unsatisfiable
schemas instead of ignoring them, and it depends on nothing.

`GrammarCompiler.compile` runs in worker threads (`Engine._prepare`): a schema's compilation and the 400
for a bad one never hold the event loop or the engine thread. Compiled grammars are cached by schema text
(LRU, bounded). The engine thread gives each row its own `RowGrammar` (a copy of the grammar's fresh
matcher), which masks that row's logits and advances with the row's own tokens only, so a row's output
does not depend on its batch.
"""

from __future__ import annotations

import copy
import json
import threading
from collections import OrderedDict
from collections.abc import Collection
from typing import TYPE_CHECKING

import llguidance
import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from ..errors import HotloraError, InvalidRequestError, UnsupportedSchemaError
from ..types import StructuredOutput

if TYPE_CHECKING:
    from llguidance._lib import JsonCompileOptions  # in the type stub only

MAX_SCHEMA_PROPERTIES = 1000  # over all of a schema's objects; compiling optional ones costs their square
GRAMMAR_CACHE_SIZE = 64  # compiled schemas kept, each with its start matcher
# One line, `json.dumps`'s separators, no free whitespace: a small model allowed free whitespace tends to
# emit it until its token budget ends.
JSON_OPTIONS: JsonCompileOptions = {
    "whitespace_flexible": False,
    "item_separator": ", ",
    "key_separator": ": ",
}
ANY_OBJECT = '{"type": "object"}'  # `response_format: {"type": "json_object"}`
_NEG_INF_BITS = np.array(-np.inf, dtype=np.float32).view(np.int32)


class Grammar:
    """A compiled schema: a matcher in its start state, copied for each row that decodes under it."""

    def __init__(self, start: llguidance.LLMatcher, vocab_size: int) -> None:
        self._start = start
        self._vocab_size = vocab_size

    def matcher(self) -> RowGrammar:
        """A new row's matcher (in the engine thread; the start state is only ever copied)."""
        return RowGrammar(self._start.deep_copy(), self._vocab_size)


class RowGrammar:
    """One row's grammar state: which tokens may come next, and whether the grammar is complete."""

    def __init__(self, matcher: llguidance.LLMatcher, vocab_size: int) -> None:
        self._matcher = matcher
        self._bitmask = np.zeros((vocab_size + 31) // 32, dtype=np.int32)
        self._keep = np.empty(vocab_size, dtype=np.int32)

    @property
    def done(self) -> bool:
        """The grammar is complete and nothing may follow but EOS: the row has its answer."""
        return bool(self._matcher.is_stopped())

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """`logits` (one row, float32, on the CPU) with every token the grammar forbids next at -inf (EOS
        included until the grammar may end), as a new tensor."""
        self._matcher.unsafe_compute_mask_ptr(self._bitmask.ctypes.data, self._bitmask.nbytes)
        self._check()
        return torch.from_numpy(apply_bitmask(logits.numpy(), self._bitmask, self._keep))

    def advance(self, token: int) -> None:
        """Move past the token the row sampled (one the mask allowed)."""
        if not self._matcher.consume_token(token):
            self._check()
            raise HotloraError(f"internal error: the grammar refused token {token}, which its mask allowed")

    def _check(self) -> None:
        if self._matcher.is_error():
            raise HotloraError(f"structured output failed: {_one_line(self._matcher.get_error())}")


def apply_bitmask(logits: np.ndarray, bitmask: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """A copy of `logits` (float32) with -inf wherever `bitmask` (a bit per token, least significant bit
    first, the layout every grammar library shares) has a 0; `keep` is scratch space of the logits' length.

    A branch-free bit select on the floats' bit patterns, which costs the same for any mask: numpy's and
    torch's masked writes slow down with how mixed the mask is (docs/performance.md).
    """
    bits = np.unpackbits(bitmask.view(np.uint8), count=logits.shape[-1], bitorder="little")
    np.negative(bits, out=keep, dtype=np.int32, casting="unsafe")  # all ones where allowed, else 0
    out = logits.view(np.int32) & keep
    np.invert(keep, out=keep)
    np.bitwise_and(keep, _NEG_INF_BITS, out=keep)
    np.bitwise_or(out, keep, out=out)
    return out.view(np.float32)


class GrammarCompiler:
    """Compiles `StructuredOutput`s for one model's tokenizer; safe to call from any thread."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        vocab_size: int,
        stop_ids: Collection[int],
        cache_size: int = GRAMMAR_CACHE_SIZE,
    ) -> None:
        # llguidance reads the tokenizer's JSON; taken now, in the thread that owns the tokenizer
        self._tokenizer_json = _tokenizer_json(tokenizer)
        self._vocab_size = vocab_size
        self._eos = sorted(stop_ids)
        self._cache: OrderedDict[StructuredOutput, Grammar] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self._lltokenizer: llguidance.LLTokenizer | None = None

    def compile(self, structured: StructuredOutput) -> Grammar:
        """The grammar for `structured`; `UnsupportedSchemaError` (a 400) naming what is wrong with it."""
        with self._lock:
            grammar = self._cache.get(structured)
            if grammar is not None:
                self._cache.move_to_end(structured)
                return grammar
        grammar = self._compile(structured.json_schema or ANY_OBJECT)
        with self._lock:
            self._cache[structured] = grammar
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return grammar

    def _compile(self, schema: str) -> Grammar:
        try:
            parsed = json.loads(schema)
        except (ValueError, RecursionError) as exc:  # json.JSONDecodeError is a ValueError
            raise UnsupportedSchemaError(f"the JSON schema is not valid JSON: {exc}") from None
        if not isinstance(parsed, dict):
            raise UnsupportedSchemaError("the JSON schema must be an object")
        properties = _count_properties(parsed)
        if properties > MAX_SCHEMA_PROPERTIES:
            raise UnsupportedSchemaError(
                f"the JSON schema has {properties} properties; at most {MAX_SCHEMA_PROPERTIES} are allowed"
            )
        try:
            text = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=JSON_OPTIONS)
        except ValueError as exc:
            raise UnsupportedSchemaError(f"the JSON schema is invalid: {exc}") from None
        start = llguidance.LLMatcher(self._tokenizer(), text, log_level=0)
        if start.is_error():
            raise UnsupportedSchemaError(f"the JSON schema is not supported: {_one_line(start.get_error())}")
        # the first mask builds tables every copy shares: here, not in a decode step
        scratch = np.zeros((self._vocab_size + 31) // 32, dtype=np.int32)
        start.unsafe_compute_mask_ptr(scratch.ctypes.data, scratch.nbytes)
        return Grammar(start, self._vocab_size)

    def _tokenizer(self) -> llguidance.LLTokenizer:
        """Built on first use (it takes a while, and most servers never see a schema)."""
        if self._tokenizer_json is None:
            raise InvalidRequestError(
                "structured outputs need a fast (Rust) tokenizer, which this model does not have",
                param="response_format",
            )
        with self._lock:
            if self._lltokenizer is None:
                self._lltokenizer = llguidance.LLTokenizer(
                    self._tokenizer_json, n_vocab=self._vocab_size, eos_token=self._eos
                )
            return self._lltokenizer


def _tokenizer_json(tokenizer: PreTrainedTokenizerBase) -> str | None:
    """The fast tokenizer's definition without padding or truncation; None for a slow tokenizer."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    backend = copy.copy(backend)
    backend.no_padding()
    backend.no_truncation()
    return str(backend.to_str())


def _count_properties(schema: dict[str, object]) -> int:
    """The properties of every object the schema describes, counted in one pass without recursion."""
    count = 0
    pending: list[object] = [schema]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            properties = node.get("properties")
            if isinstance(properties, dict):
                count += len(properties)
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)
    return count


def _one_line(message: str, limit: int = 500) -> str:
    """llguidance's message (a regex error spans lines, with a caret under the place) on one line."""
    text = " ".join(message.split()) or "unknown reason"
    return text if len(text) <= limit else text[: limit - 3] + "..."
