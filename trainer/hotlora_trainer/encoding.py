"""Rows to token ids and labels, with the loss mask spelled out token by token.

Labels are built here, explicitly, from character spans of the rendered text — never from the pad token:
the base model's pad token is its EOS (`<|im_end|>` for SmolLM2), and masking "padding" by id would stop it
from ever learning to end a reply. TRL receives `input_ids` + `labels` and pads labels with -100 itself.

- messages: each assistant turn is trained, its end-of-turn token included (`content<|im_end|>` in ChatML);
  system and user turns, the template's role headers and the newline after each turn are -100.
- conversational prompt/completion: the completion's messages (with their end-of-turn), not the prompt.
- plain prompt/completion: `prompt + completion + EOS`, the completion and the EOS trained.
- text: `text + EOS`, all trained.

Chat rows are rendered with the tokenizer's own chat template (as the server renders requests) and
tokenized without extra special tokens, exactly as the server tokenizes a chat prompt; plain rows are
tokenized as the server tokenizes a `/v1/completions` prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .data import Dataset, Format, Row
from .errors import ConfigError, DatasetError

IGNORE_INDEX = -100


@dataclass(frozen=True)
class Encoded:
    """One tokenized row: ids, labels (-100 where no loss), and its line in the source file."""

    input_ids: list[int]
    labels: list[int]
    line: int

    @property
    def trained_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


def render_chat(
    tokenizer: Any, messages: Sequence[dict[str, str]], *, add_generation_prompt: bool = False
) -> str:
    """The chat template's text for `messages` (the server renders requests the same way)."""
    return tokenizer.apply_chat_template(
        list(messages), add_generation_prompt=add_generation_prompt, tokenize=False
    )


def text_and_spans(
    tokenizer: Any, fmt: Format, data: dict[str, Any]
) -> tuple[str, list[tuple[int, int]], bool]:
    """(full text, [start, end) character spans that carry the loss, whether it is chat-rendered).

    Raises ValueError when the chat template does not render the conversation as a growing prefix (then
    the assistant turns cannot be located), with the reason.
    """
    eos = tokenizer.eos_token or ""
    if fmt == "text":
        text = _with_eos(data["text"], eos)
        return text, [(0, len(text))], False
    if fmt == "prompt_completion":
        prompt = data["prompt"]
        text = prompt + _with_eos(data["completion"], eos)
        return text, [(len(prompt), len(text))], False
    if fmt == "conversational_prompt_completion":
        prompt, completion = list(data["prompt"]), list(data["completion"])
        head = render_chat(tokenizer, prompt, add_generation_prompt=True)
        text = render_chat(tokenizer, prompt + completion)
        if not text.startswith(head):
            raise ValueError(
                "the chat template renders the prompt differently on its own and with the completion"
            )
        return text, [(len(head), _end_of_turn(text, len(head), len(text)))], True
    messages = list(data["messages"])
    text = render_chat(tokenizer, messages)
    spans: list[tuple[int, int]] = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        head = render_chat(tokenizer, messages[:i], add_generation_prompt=True)
        upto = render_chat(tokenizer, messages[: i + 1])
        if not (upto.startswith(head) and text.startswith(upto)):
            raise ValueError(
                f"the chat template does not render messages[{i}] (assistant) after the turns before it "
                "(does the conversation start with an assistant message?)"
            )
        spans.append((len(head), _end_of_turn(upto, len(head), len(upto))))
    return text, spans, True


def encode_row(tokenizer: Any, fmt: Format, row: Row) -> Encoded:
    """Tokenize one validated row and build its labels."""
    try:
        text, spans, chat = text_and_spans(tokenizer, fmt, row.data)
    except ValueError as e:
        raise DatasetError("dataset", [(row.line, str(e))]) from None
    enc = tokenizer(text, add_special_tokens=not chat, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    labels = [IGNORE_INDEX] * len(ids)
    for k, (start, _end) in enumerate(enc["offset_mapping"]):
        if any(lo <= start < hi for lo, hi in spans):
            labels[k] = ids[k]
    if fmt == "text":  # everything, special tokens the tokenizer added included
        labels = list(ids)
    return Encoded(ids, labels, row.line)


def encode_rows(tokenizer: Any, fmt: Format, rows: Sequence[Row], source: str) -> list[Encoded]:
    """Encode every row; one `DatasetError` lists each row that cannot be encoded or trains nothing."""
    if fmt in ("messages", "conversational_prompt_completion") and not getattr(
        tokenizer, "chat_template", None
    ):
        raise ConfigError(
            f"{source} is in a chat format but the base model's tokenizer has no chat template: "
            "use --chat-template chatml (or a Jinja file), the 'text' or plain 'prompt'/'completion' format, "
            "or a base with a chat template"
        )
    if not getattr(tokenizer, "is_fast", True):
        raise ConfigError(
            "the base model's tokenizer is not a fast tokenizer (no character offsets): not supported"
        )
    out: list[Encoded] = []
    problems: list[tuple[int | None, str]] = []
    for row in rows:
        try:
            encoded = encode_row(tokenizer, fmt, row)
        except DatasetError as e:
            problems += e.problems
            continue
        if encoded.trained_tokens == 0:
            problems.append((row.line, "no token of this row carries the loss (empty completion?)"))
            continue
        out.append(encoded)
    if problems:
        raise DatasetError(source, problems[:10], more=max(0, len(problems) - 10))
    return out


def encode_dataset(tokenizer: Any, dataset: Dataset) -> tuple[list[Encoded], list[Encoded]]:
    """(train, eval) encodings of a validated dataset."""
    train = encode_rows(tokenizer, dataset.format, dataset.rows, dataset.source)
    evaluation = (
        encode_rows(tokenizer, dataset.format, dataset.eval_rows, dataset.eval_source or dataset.source)
        if dataset.eval_rows
        else []
    )
    return train, evaluation


def length_report(encoded: Sequence[Encoded], max_length: int) -> str | None:
    """A warning when rows are longer than `max_length` tokens (they are cut; all-masked ones dropped)."""
    long = [e for e in encoded if len(e.input_ids) > max_length]
    if not long:
        return None
    lost = [e for e in long if all(label == IGNORE_INDEX for label in e.labels[:max_length])]
    lines = ", ".join(str(e.line) for e in long[:5]) + (" ..." if len(long) > 5 else "")
    msg = (
        f"{len(long)} row(s) are longer than --max-seq-length {max_length} tokens (longest "
        f"{max(len(e.input_ids) for e in long)}; lines {lines}) and are cut to it"
    )
    if lost:
        msg += f"; {len(lost)} of them keep no trained token and are dropped"
    return msg


def _with_eos(text: str, eos: str) -> str:
    return text if not eos or text.endswith(eos) else text + eos


def _end_of_turn(text: str, start: int, end: int) -> int:
    """`end` moved back over the whitespace a template puts after a turn's end-of-turn token."""
    while end > start and text[end - 1].isspace():
        end -= 1
    return end
