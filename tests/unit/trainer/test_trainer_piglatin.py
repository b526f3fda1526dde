"""The built-in Pig Latin task: the course's rules, the Harvard split by list, and the scoring."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from hotlora_trainer import piglatin
from hotlora_trainer.piglatin import score, to_pig_latin, word_to_pig_latin


@pytest.mark.parametrize(
    ("english", "pig"),
    [
        ("pig", "igpay"),
        ("string", "ingstray"),
        ("eat", "eatway"),
        ("don't", "onday' tay"),
        ("Yellow", "ellowyay"),  # y is a consonant; lower-cased
        ("rhythm", "rhythmay"),  # no vowel at all: the whole word is its consonant cluster
        (
            "The birch canoe slid on the smooth planks.",
            "ethay irchbay anoecay idslay onway ethay oothsmay anksplay.",
        ),
        ("When you hear the bell, come quickly.", "enwhay ouyay earhay ethay ellbay, omecay uicklyqay."),
        (
            "It's easy to tell the depth of a well.",
            "itway' say easyway otay elltay ethay epthday ofway away ellway.",
        ),
        ("  Spaces   collapse  ", "acesspay ollapsecay"),
    ],
)
def test_course_examples(english: str, pig: str) -> None:
    assert to_pig_latin(english) == pig


def test_word_rules() -> None:
    for vowel_word in ("apple", "egg", "ice", "oak", "up"):
        assert word_to_pig_latin(vowel_word) == vowel_word + "way"
    assert word_to_pig_latin("Chair") == "airchay"


@pytest.mark.parametrize("word", ["s", "t", "x", "by", "my", "dry", "fly", "fry", "sky", "try"])
def test_a_word_without_a_vowel_follows_the_prose(word: str) -> None:
    """All of it is leading consonants: it just gets "ay" (the course's code would give "ssay", "ybyay")."""
    assert word_to_pig_latin(word) == word + "ay"
    assert word_to_pig_latin(word.upper()) == word + "ay"


@pytest.mark.parametrize(
    ("english", "pig"),
    [
        ("Glass will clink when struck by metal.", "assglay illway inkclay enwhay uckstray byay etalmay."),
        ("The map had an X that meant nothing.", "ethay apmay adhay anway xay atthay eantmay othingnay."),
        ("Boards will warp unless kept dry.", "oardsbay illway arpway unlessway eptkay dryay."),
        ("She was waiting at my front lawn.", "eshay asway aitingway atway myay ontfray awnlay."),
        (  # an evaluation sentence (list 64)
            "Bad nerves are jangled by a door slam.",
            "adbay ervesnay areway angledjay byay away oorday amslay.",
        ),
        (  # list 72: the "s" of a possessive
            "She saw a cat in the neighbor's house.",
            "eshay awsay away atcay inway ethay eighbornay' say ousehay.",
        ),
    ],
)
def test_sentences_where_the_courses_code_and_prose_differ(english: str, pig: str) -> None:
    assert to_pig_latin(english) == pig


def test_the_sentences_with_a_vowelless_word_are_the_47_the_docs_name() -> None:
    with_one = [
        s
        for s in piglatin.harvard_sentences()
        if any(not set(w.lower()) & piglatin.VOWELS for w in piglatin.WORD.findall(s.text))
    ]
    assert len(with_one) == 47
    assert sum(s.list_number in piglatin.EVAL_LISTS for s in with_one) == 7


def test_leading_punctuation_stands_alone() -> None:
    assert to_pig_latin('"Hello," she said.') == '" ellohay," eshay aidsay.'


def test_harvard_split_by_list() -> None:
    train, evaluation = piglatin.split_sentences()
    assert len(train) == 600 and len(evaluation) == 120
    assert {s.list_number for s in train} == set(range(1, 61))
    assert {s.list_number for s in evaluation} == set(range(61, 73))
    assert not {s.text for s in train} & {s.text for s in evaluation}
    assert train[0].text == "The birch canoe slid on the smooth planks."


def test_task_dataset_is_chat_rows_of_bare_sentences() -> None:
    dataset = piglatin.task_dataset()
    assert dataset.format == "messages" and dataset.chat
    assert len(dataset.rows) == 600 * (1 + piglatin.MADE_UP_PER_SENTENCE) and len(dataset.eval_rows) == 120
    first = dataset.rows[0].data["messages"]
    assert first == [
        {"role": "user", "content": "The birch canoe slid on the smooth planks."},
        {"role": "assistant", "content": "ethay irchbay anoecay idslay onway ethay oothsmay anksplay."},
    ]
    assert dataset.sha256 == piglatin.sentences_sha256()
    for row in dataset.rows:  # every reply is the rules' Pig Latin of its user message
        user, assistant = (m["content"] for m in row.data["messages"])
        assert assistant == to_pig_latin(user)


def words(texts: Iterable[str]) -> set[str]:
    return {w.lower() for t in texts for w in piglatin.WORD.findall(t)}


def test_made_up_sentences_use_only_training_words() -> None:
    """The evaluation lists must stay unseen: a made-up sentence's words all come from lists 1-60."""
    train, evaluation = piglatin.split_sentences()
    eval_only = words(s.text for s in evaluation) - words(s.text for s in train)
    assert len(eval_only) > 100  # the lists do have words of their own
    made_up = piglatin.made_up_sentences(train, 2400, seed=0)
    assert len(made_up) == 2400 and not words(made_up) & eval_only
    assert len(words(made_up)) > 0.9 * len(words(s.text for s in train))  # drawn from the whole vocabulary
    assert [len(piglatin.WORD.findall(t)) for t in made_up[:600]] == [
        len(piglatin.WORD.findall(s.text)) for s in train
    ]
    assert all(t[0].isupper() and t.endswith(".") for t in made_up)
    assert (
        made_up
        == piglatin.made_up_sentences(train, 2400, seed=0)
        != piglatin.made_up_sentences(train, 2400, seed=1)
    )


def test_the_sentences_ship_inside_the_package() -> None:
    from importlib import resources

    data = resources.files("hotlora_trainer").joinpath("data", "harvard_sentences.tsv")
    assert data.is_file()
    assert len(data.read_text(encoding="utf-8").splitlines()) == 721


def test_score_exact_and_word_accuracy() -> None:
    refs = ["ethay irchbay anoecay.", "igpay eatway"]
    assert score(refs, refs).as_dict() == {
        "exact_match": 1.0,
        "word_accuracy": 1.0,
        "sentences": 2,
        "words": 5,
        "seen_word_accuracy": 0.0,
        "unseen_word_accuracy": 1.0,
        "unseen_words": 5,
    }
    result = score(["ethay irchbay anoe.", "  igpay   eatway "], refs)
    assert result.exact_match == 0.5  # whitespace is normalized, a wrong word is not
    assert result.word_accuracy == pytest.approx(4 / 5)
    shifted = score(["xx ethay irchbay anoecay.", ""], refs)  # words are compared position by position
    assert shifted.word_accuracy == 0.0 and shifted.exact_match == 0.0


def test_score_splits_words_seen_in_training_from_unseen() -> None:
    """Memorized vs generalized: punctuation aside, a reference word is seen if a training reference has it."""
    refs = ["ethay irchbay anoecay.", "igpay eatway"]
    result = score(["ethay irchbay anoe.", "igpay atway"], refs, training=["anoecay ethay", "eatway!"])
    assert result.unseen_words == 2  # irchbay, igpay
    assert result.seen_word_accuracy == pytest.approx(1 / 3)  # ethay right; anoecay. and eatway wrong
    assert result.unseen_word_accuracy == 1.0
    assert result.word_accuracy == pytest.approx(3 / 5)
