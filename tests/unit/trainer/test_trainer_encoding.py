"""Label masks, token by token, with the real SmolLM2 tokenizer and chat template.

SmolLM2's pad token IS its EOS / end-of-turn `<|im_end|>`: these tests pin that the reply's closing
`<|im_end|>` is trained in every format, and that only padding added by the collator is masked.
"""

from __future__ import annotations

from typing import Any

import pytest

from hotlora_trainer import DatasetError
from hotlora_trainer.data import Row
from hotlora_trainer.encoding import IGNORE_INDEX, encode_row, encode_rows, length_report

END = "<|im_end|>"


def pieces(tokenizer: Any, fmt: str, data: dict) -> list[tuple[str, bool]]:
    """(token text, trained?) for each token of the encoded row."""
    encoded = encode_row(tokenizer, fmt, Row(1, data))
    assert len(encoded.input_ids) == len(encoded.labels)
    for token, label in zip(encoded.input_ids, encoded.labels, strict=True):
        assert label in (token, IGNORE_INDEX)
    return [
        (tokenizer.decode([t]), lab != IGNORE_INDEX)
        for t, lab in zip(encoded.input_ids, encoded.labels, strict=True)
    ]


def trained_text(parts: list[tuple[str, bool]]) -> list[str]:
    """The trained stretches, each joined into text."""
    runs: list[str] = []
    previous = False
    for text, trained in parts:
        if trained and previous:
            runs[-1] += text
        elif trained:
            runs.append(text)
        previous = trained
    return runs


def test_pad_token_is_eos(tokenizer: Any) -> None:
    # the premise of these tests: masking by pad id would mask the end of every reply
    assert tokenizer.pad_token_id == tokenizer.eos_token_id == tokenizer.convert_tokens_to_ids(END)


def test_messages_train_assistant_turns_and_their_end_of_turn_only(tokenizer: Any) -> None:
    data = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello there."},
            {"role": "user", "content": "Bye"},
            {"role": "assistant", "content": "Goodbye!"},
        ]
    }
    parts = pieces(tokenizer, "messages", data)
    assert trained_text(parts) == ["Hello there." + END, "Goodbye!" + END]
    text = "".join(t for t, _ in parts)
    assert text == tokenizer.apply_chat_template(data["messages"], tokenize=False)
    # the headers, the system and user turns and the newline after each turn carry no loss
    masked = "".join(t for t, trained in parts if not trained)
    for fragment in (
        "<|im_start|>system\nBe brief.",
        "<|im_start|>user\nHi",
        "<|im_start|>assistant\n",
        "Bye",
    ):
        assert fragment in masked


def test_messages_without_system_use_the_templates_default(tokenizer: Any) -> None:
    parts = pieces(
        tokenizer,
        "messages",
        {
            "messages": [
                {"role": "user", "content": "The birch canoe."},
                {"role": "assistant", "content": "ethay irchbay anoecay."},
            ]
        },
    )
    assert trained_text(parts) == ["ethay irchbay anoecay." + END]
    assert "You are a helpful AI assistant named SmolLM" in "".join(
        t for t, _ in parts
    )  # as the server renders it


def test_training_text_matches_what_the_server_prompts(tokenizer: Any) -> None:
    # the prompt part of a training row is token for token what the server sends for the same user message
    messages = [{"role": "user", "content": "Glue the sheet to the dark blue background."}]
    row = encode_row(
        tokenizer, "messages", Row(1, {"messages": [*messages, {"role": "assistant", "content": "ok"}]})
    )
    prompt = tokenizer(
        tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False),
        add_special_tokens=False,
    )["input_ids"]
    assert row.input_ids[: len(prompt)] == prompt
    assert all(label == IGNORE_INDEX for label in row.labels[: len(prompt)])
    assert row.labels[len(prompt)] != IGNORE_INDEX


def test_conversational_prompt_completion_trains_the_completion(tokenizer: Any) -> None:
    parts = pieces(
        tokenizer,
        "conversational_prompt_completion",
        {
            "prompt": [{"role": "system", "content": "Translate."}, {"role": "user", "content": "pig"}],
            "completion": [{"role": "assistant", "content": "igpay"}],
        },
    )
    assert trained_text(parts) == ["igpay" + END]


def test_plain_prompt_completion_trains_completion_and_eos(tokenizer: Any) -> None:
    parts = pieces(
        tokenizer, "prompt_completion", {"prompt": "English: pig\nPig Latin:", "completion": " igpay"}
    )
    assert trained_text(parts) == [" igpay" + END]
    assert "".join(t for t, trained in parts if not trained) == "English: pig\nPig Latin:"


def test_eos_is_appended_once(tokenizer: Any) -> None:
    parts = pieces(tokenizer, "prompt_completion", {"prompt": "a", "completion": " b" + END})
    assert "".join(t for t, _ in parts).count(END) == 1
    parts = pieces(tokenizer, "text", {"text": "Once upon a time." + END})
    assert "".join(t for t, _ in parts).count(END) == 1


def test_text_trains_everything_including_eos(tokenizer: Any) -> None:
    parts = pieces(tokenizer, "text", {"text": "Once upon a time, a canoe."})
    assert all(trained for _, trained in parts)
    assert parts[-1] == (END, True)


def test_collator_pads_with_eos_but_masks_only_padding(tokenizer: Any) -> None:
    # TRL's collator, as SFTTrainer builds it: padding with the pad (= EOS) id, labels padded with -100
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    short = encode_row(
        tokenizer,
        "messages",
        Row(1, {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}),
    )
    long = encode_row(
        tokenizer,
        "messages",
        Row(
            2,
            {
                "messages": [
                    {"role": "user", "content": "Hi there, how are you?"},
                    {"role": "assistant", "content": "Fine, thanks."},
                ]
            },
        ),
    )
    collator = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id)
    batch = collator([{"input_ids": e.input_ids, "labels": e.labels} for e in (short, long)])
    eos = tokenizer.eos_token_id
    n = len(short.input_ids)
    assert batch["input_ids"][0, n:].eq(eos).all()  # padded with EOS ...
    assert batch["labels"][0, n:].eq(IGNORE_INDEX).all()  # ... which carries no loss
    # ... while the reply's own closing EOS does, in both rows
    for row, enc in enumerate((short, long)):
        labels = batch["labels"][row, : len(enc.input_ids)].tolist()
        closing = max(i for i, t in enumerate(enc.input_ids) if t == eos and enc.labels[i] != IGNORE_INDEX)
        assert labels[closing] == eos
        assert labels == enc.labels


def test_rows_training_nothing_are_refused_with_their_line(tokenizer: Any) -> None:
    rows = [
        Row(3, {"prompt": "abc", "completion": "d"}),
        Row(7, {"messages": [{"role": "assistant", "content": "hi"}]}),
    ]
    with pytest.raises(DatasetError) as info:
        encode_rows(tokenizer, "messages", rows[1:], "f.jsonl")
    assert info.value.problems[0][0] == 7
    assert "f.jsonl:7:" in str(info.value)


def test_length_report(tokenizer: Any) -> None:
    rows = [Row(i, {"text": "word " * n}) for i, n in ((1, 3), (2, 40))]
    encoded = encode_rows(tokenizer, "text", rows, "f.jsonl")
    assert length_report(encoded, 64) is None
    report = length_report(encoded, 16)
    assert report is not None and "1 row(s)" in report and "lines 2" in report
