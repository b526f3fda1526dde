"""The engine contract: what the HTTP layer hands the engine and what it gets back.

Plain dataclasses and a Protocol, no torch: the API depends on this module only, so it can be imported
(and tested) without the model stack, and the engine behind it can change shape freely.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

# the blend methods are the registry's (blend_methods.py); the names stay importable from here
from .blend_methods import BLEND_METHODS, DEFAULT_METHOD, DENSITY_METHODS, BlendMethod  # noqa: F401

FinishReason = Literal["stop", "length"]  # a chat reply that made tool calls says so itself (protocol.chat)

TemplateMessage = dict[str, Any]
"""A chat message as chat templates take it: `role` and `content`, and OpenAI's `tool_calls` (arguments as
an object) or `tool_call_id`."""
TemplateTool = dict[str, Any]
"""A tool as chat templates take it: `{"type": "function", "function": {"name", "description", "parameters"}}`."""


@dataclass(frozen=True)
class SamplingParams:
    """Per-row decoding options, already validated by the protocol layer.

    `None` in `temperature`, `top_p`, `top_k`, `min_p` and `repetition_penalty` means "not given": the
    engine takes the model's default (its generation config, `with_defaults`), else the neutral value
    (1, 1, off, 0, 1).
    """

    max_tokens: int | None = None  # None: the model's default, else up to the end of the context window
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None  # vLLM's: 0 or -1 is off
    min_p: float | None = None  # vLLM's: tokens below min_p x the top token's probability are dropped
    repetition_penalty: float | None = None  # HF's and vLLM's: over the prompt's and the output's tokens
    seed: int | None = None
    stop: tuple[str, ...] = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: bool = False
    top_logprobs: int = 0
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias added to its logit), ids unique
    min_tokens: int = 0  # EOS and stop sequences do not end a row before it generated that many tokens
    ignore_eos: bool = False  # EOS does not end a row: it runs to max_tokens (or a stop sequence)

    def with_defaults(self, defaults: Mapping[str, float | int]) -> SamplingParams:
        """These options, the fields left out (None) taken from `defaults` (the model's generation config,
        by the names of `SAMPLING_DEFAULTS`; `max_tokens` is the engine's to apply, within the context)."""
        given: dict[str, Any] = {
            name: defaults[name]
            for name in SAMPLING_DEFAULTS
            if name in defaults and getattr(self, name) is None
        }
        return replace(self, **given) if given else self


SAMPLING_DEFAULTS: tuple[str, ...] = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")
"""The options a model's generation config may set when a request leaves them out (vLLM's list, less
`max_new_tokens`, which caps `max_tokens`)."""


@dataclass(frozen=True)
class BlendSpec:
    """A weighted combination of stored adapters (PEFT's `add_weighted_adapter`)."""

    components: tuple[tuple[str, float], ...]  # (adapter name, weight), in the client's order
    method: BlendMethod = DEFAULT_METHOD
    density: float | None = None

    def label(self) -> str:
        """The canonical model string, e.g. `a*0.7+b*0.3`."""
        return "+".join(f"{name}*{weight:g}" for name, weight in self.components)


@dataclass(frozen=True)
class StructuredOutput:
    """Decode every row of a request under a grammar, so its text always parses.

    `json_schema` is the schema as canonical JSON text (hashable, and what grammar compilers take);
    None means any JSON object (`response_format: {"type": "json_object"}`).
    """

    json_schema: str | None = None


@dataclass(frozen=True)
class GenerationRequest:
    """One client request: `n` rows sharing one prompt and one target (base, adapter or blend).

    `model` is what the client sent (echoed in responses); `blend`, when set, is what to run.
    """

    request_id: str
    model: str
    sampling: SamplingParams
    messages: tuple[TemplateMessage, ...] | None = None  # chat: rendered with the tokenizer's template
    tools: tuple[TemplateTool, ...] | None = None  # chat: the functions the prompt offers
    prompt: str | None = None  # raw completion
    n: int = 1
    blend: BlendSpec | None = None
    structured: StructuredOutput | None = None  # response_format (or a forced tool call) as a grammar


@dataclass(frozen=True)
class TokenizeRequest:
    """vLLM's `POST /tokenize`: a chat (rendered with the template) or a raw prompt, as token ids."""

    model: str
    messages: tuple[TemplateMessage, ...] | None = None
    tools: tuple[TemplateTool, ...] | None = None
    prompt: str | None = None
    add_generation_prompt: bool = (
        True  # a chat: end with the assistant's turn opening, as a chat request does
    )
    add_special_tokens: bool = False  # the tokenizer's own BOS/EOS around the text (a template adds its own)
    blend: BlendSpec | None = None


@dataclass(frozen=True)
class Tokenized:
    tokens: list[int]
    max_model_len: int
    token_strs: list[str] | None = None


@dataclass(frozen=True)
class TopLogprob:
    token: str
    logprob: float
    bytes: list[int]


@dataclass(frozen=True)
class TokenLogprob:
    token: str
    logprob: float
    bytes: list[int]
    top_logprobs: list[TopLogprob] = field(default_factory=list)


@dataclass(frozen=True)
class ChoiceDelta:
    """New text of one choice; `finish_reason` set on its last delta."""

    index: int
    text: str
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: FinishReason | None = None


@dataclass(frozen=True)
class Usage:
    """Sent once, last: real token counts (prompt once, completion summed over choices)."""

    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


GenerationEvent = ChoiceDelta | Usage


@dataclass(frozen=True)
class ModelInfo:
    """One entry of /v1/models: the base (parent None) or an adapter on it."""

    id: str
    created: int
    parent: str | None = None
    quantization: str | None = None
    context_length: int | None = None
    kernel: str | None = None  # how the base's layers multiply on this machine
    batch_invariant: bool | None = None


AdapterStatus = Literal["resident", "available", "disabled", "invalid"]


@dataclass(frozen=True)
class AdapterInfo:
    """One adapter of the store as `GET /v1/adapters` shows it."""

    name: str
    status: AdapterStatus
    created: int
    size_bytes: int
    version: str
    manifest: dict[str, object] | None = None
    error: str | None = None
    rank: int | None = None  # from its PEFT config: the largest rank, `rank_pattern` included
    target_modules: list[str] | str | None = None  # as its PEFT config says (names, or one regex)


@dataclass(frozen=True)
class EngineStats:
    """A snapshot of the engine's state and counters since start, for `/metrics` (read from any thread)."""

    requests_running: int  # requests with rows in the running batch
    requests_waiting: int  # queued or prefilling, not in the batch yet
    batch_rows: int  # rows in the running batch
    decode_steps: int
    decoded_rows: int  # sum of the batch sizes of all decode steps
    prefill_tokens: int  # prompt tokens run through the model
    prefix_cache_hit_tokens: int  # prompt tokens whose KV came from the prefix cache
    requests_aborted: int  # the client went away before the end
    requests_failed: int  # ended by an error inside the engine
    kv_cache_usage: float  # the admitted requests' worst case as a fraction of `--kv-cache-memory-bytes`
    kv_cache_bytes: int  # what the running batch's KV cache holds now
    adapters_resident: int  # store adapters and blends in memory
    adapter_loads: int
    adapter_evictions: int
    adapter_merges: int
    decode_threads: int = 0  # host threads a decode step runs on now (0: the device path leaves them)
    model_info: dict[str, str] = field(default_factory=dict)  # what is served, how: labels of one series


class EngineClient(Protocol):
    """What the HTTP layer needs from the engine."""

    @property
    def served_model_name(self) -> str: ...

    def is_ready(self) -> bool:
        """True once the base model is loaded and the store's adapters are listed."""
        ...

    def health(self) -> dict[str, object]:
        """What `GET /health` says besides its status and the model (the vLLM engine: its servers)."""
        ...

    async def list_models(self) -> list[ModelInfo]: ...

    def stats(self) -> EngineStats: ...

    def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationEvent, None]:
        """Stream the request's events; raises a `HotloraError` (before any event) for a bad request.

        Closing the iterator early aborts the request: its rows leave the engine at the next step.
        """
        ...

    async def tokenize(self, request: TokenizeRequest, token_strs: bool = False) -> Tokenized:
        """The request's prompt as token ids (and their strings); raises a `HotloraError` for a bad one."""
        ...

    async def detokenize(self, model: str, tokens: list[int], blend: BlendSpec | None = None) -> str:
        """The text of `tokens`, special tokens included; raises a `HotloraError` for ids outside the vocabulary."""
        ...

    async def list_adapters(self) -> list[AdapterInfo]: ...

    async def load_adapter(self, name: str, path: str | None = None) -> AdapterInfo:
        """Import `path` as `name` (when given), enable it and make it resident now."""
        ...

    async def unload_adapter(self, name: str, purge: bool = False) -> None:
        """Unload and disable `name` (it stays on disk), or delete it from the store with `purge`."""
        ...

    async def save_blend(self, name: str, blend: BlendSpec) -> AdapterInfo:
        """Build `blend` and register it in the store as adapter `name`."""
        ...

    async def training_log(self, name: str) -> list[dict[str, float]] | None:
        """The trainer's `log_history` of adapter `name` (finite numbers only), None when it has none."""
        ...
