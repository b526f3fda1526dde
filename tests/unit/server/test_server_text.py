"""engine/text.py over the real SmolLM2 tokenizer: incremental detokenization, stop matching, token bytes."""

from __future__ import annotations

from typing import Any

import pytest

from hotlora_server.engine.text import REPLACEMENT, IncrementalDetokenizer, StopMatcher, token_bytes

MULTIBYTE_TEXTS = [
    "héllo 🌍 日本語 🤖",
    "中文测试：你好，世界！",
    "family 👩‍👩‍👧‍👦 and flags 🇯🇵🇫🇷 — “quotes” …",
    "한국어 and ελληνικά and emoji 🎉🎊🥳 in a row",
]


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


# -- IncrementalDetokenizer -------------------------------------------------------------------------


@pytest.mark.parametrize("text", MULTIBYTE_TEXTS)
def test_detokenizer_never_emits_replacement_characters(real_tokenizer: Any, text: str) -> None:
    ids = _ids(real_tokenizer, text)
    # the point of the test: these strings really do split characters over several tokens
    assert any(REPLACEMENT in real_tokenizer.decode([i]) for i in ids)
    detok = IncrementalDetokenizer(real_tokenizer)
    deltas = [detok.add(i) for i in ids]
    tail = detok.flush()
    assert all(REPLACEMENT not in d for d in deltas), deltas
    assert "".join(deltas) + tail == real_tokenizer.decode(ids) == text


def test_detokenizer_holds_a_split_character_until_it_is_complete(real_tokenizer: Any) -> None:
    ids = _ids(real_tokenizer, " 🌍")
    assert len(ids) > 1
    detok = IncrementalDetokenizer(real_tokenizer)
    deltas = [detok.add(i) for i in ids]
    assert deltas[:-1] == [""] * (len(ids) - 1)
    assert deltas[-1] == " 🌍"
    assert detok.flush() == ""


def test_detokenizer_flush_releases_an_incomplete_character_as_replacement(real_tokenizer: Any) -> None:
    ids = _ids(real_tokenizer, "ok 🌍")
    detok = IncrementalDetokenizer(real_tokenizer)
    emitted = "".join(detok.add(i) for i in ids[:-1])  # the last byte of the emoji never comes
    assert REPLACEMENT not in emitted
    assert emitted + detok.flush() == real_tokenizer.decode(ids[:-1])


def test_detokenizer_skips_special_tokens(real_tokenizer: Any) -> None:
    ids = _ids(real_tokenizer, "Hi there") + [real_tokenizer.convert_tokens_to_ids("<|im_end|>")]
    detok = IncrementalDetokenizer(real_tokenizer)
    assert "".join(detok.add(i) for i in ids) + detok.flush() == "Hi there"


# -- StopMatcher ------------------------------------------------------------------------------------


def test_stop_spanning_several_pieces_is_withheld_and_cut() -> None:
    matcher = StopMatcher(("STOP",))
    assert matcher.feed("hello S") == ("hello ", False)
    assert matcher.feed("T") == ("", False)
    assert matcher.feed("O") == ("", False)
    assert matcher.feed("P and what follows") == ("", True)


def test_text_before_a_stop_in_the_same_piece_is_emitted() -> None:
    assert StopMatcher(("STOP",)).feed("abc STOP xyz") == ("abc ", True)


def test_partial_prefix_tail_is_released_at_flush() -> None:
    matcher = StopMatcher(("STOP",))
    assert matcher.feed("the end ST") == ("the end ", False)
    assert matcher.flush() == "ST"
    assert matcher.flush() == ""


def test_held_tail_is_released_once_it_cannot_become_a_stop() -> None:
    matcher = StopMatcher(("STOP",))
    assert matcher.feed("ST") == ("", False)
    assert matcher.feed("AR") == ("STAR", False)


def test_earliest_of_several_stops_wins() -> None:
    assert StopMatcher(("world", "lo")).feed("hello world") == ("hel", True)
    assert StopMatcher(("xyz", "b")).feed("abcxyz") == ("a", True)
    # a held stop that started earlier wins over a shorter one found in the same piece
    matcher = StopMatcher(("abcd", "c"))
    assert matcher.feed("xab") == ("x", False)
    assert matcher.feed("cd") == ("", True)


def test_no_stops_passes_everything_through() -> None:
    matcher = StopMatcher(())
    assert matcher.feed("anything S") == ("anything S", False)
    assert matcher.feed("") == ("", False)
    assert matcher.flush() == ""


def test_empty_stop_strings_are_ignored() -> None:
    matcher = StopMatcher(("",))
    assert matcher.feed("text") == ("text", False)


# -- token_bytes ------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", MULTIBYTE_TEXTS + ["plain ascii, with punctuation!\n\ttabs"])
def test_token_bytes_concatenate_to_the_utf8_of_the_text(real_tokenizer: Any, text: str) -> None:
    ids = _ids(real_tokenizer, text)
    assert b"".join(token_bytes(real_tokenizer, i) for i in ids) == text.encode("utf-8")


def test_token_bytes_are_exact_for_half_a_character(real_tokenizer: Any) -> None:
    ids = _ids(real_tokenizer, " 🌍")  # U+1F30D is F0 9F 8C 8D, split over several tokens
    pieces = [token_bytes(real_tokenizer, i) for i in ids]
    assert b"".join(pieces) == " 🌍".encode()
    half = next(p for i, p in zip(ids, pieces, strict=True) if REPLACEMENT in real_tokenizer.decode([i]))
    assert half and REPLACEMENT.encode() not in half
    with pytest.raises(UnicodeDecodeError):
        half.decode("utf-8")


def test_token_bytes_of_a_special_token(real_tokenizer: Any) -> None:
    im_end = real_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert token_bytes(real_tokenizer, im_end) == b"<|im_end|>"
