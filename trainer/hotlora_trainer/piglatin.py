"""The built-in task: English -> Pig Latin over the 720 Harvard sentences, split by list.

The rules (the course's): a word that starts with a vowel (a, e, i, o, u) gets "way" appended; otherwise
its leading consonants move to the end, then "ay" ("pig" -> "igpay", "string" -> "ingstray",
"eat" -> "eatway"); everything is lower-cased and "y" counts as a consonant. A sentence is split with
`re.findall(r"\\w+|[^\\s\\w]+")`, the words are joined by single spaces, and punctuation tokens stick to
the word before them ("don't" -> "onday' tay").

A word without a vowel ("s", "t", "by", "my", "dry", "fly", "sky", "x": 47 of the 720 sentences have
one) follows the course's prose, not its code: the prose moves the leading consonants to the end, and in
such a word every letter is a leading consonant, so the word just gets "ay" ("s" -> "say", "by" ->
"byay"). The course's code gives "s" -> "ssay" and "by" -> "ybyay" (the last letter put in front of the
whole word), which none of its stated rules produces, so a learner could only memorize it word by word;
the prose is the rule the course teaches, and every figure in docs/performance.md is scored by it. Tested
on these words (tests/unit/trainer/test_trainer_piglatin.py).

Lists 1-60 (600 sentences) are for training and lists 61-72 (120 sentences) for evaluation, never mixed.
The user message is the bare English sentence and the reply is its Pig Latin.

Training also sees made-up sentences: words of the training lists in random order. On the real sentences
alone the adapter recites (a train loss far below its eval loss): it continues a memorized Pig Latin
sentence instead of converting the word in front of it, so the evaluation lists' new contexts break even
words it knows. In a random word order nothing but the source word predicts its reply, which teaches the
conversion itself (better word accuracy on lists 61-72 for the same number of steps, on seen and unseen
words alike: docs/performance.md). Their words come from the training lists only: the evaluation lists
stay unseen.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

from .data import Dataset, rows_from

TASK = "piglatin"
VOWELS = frozenset("aeiou")
TOKEN = re.compile(r"\w+|[^\s\w]+")
WORD = re.compile(r"\w+")
TRAIN_LISTS = range(1, 61)
EVAL_LISTS = range(61, 73)
SENTENCES_FILE = "harvard_sentences.tsv"
MADE_UP_PER_SENTENCE = 4  # made-up sentences per training sentence (600 real + 2400 made-up rows)


def word_to_pig_latin(word: str) -> str:
    """One word: "pig" -> "igpay", "eat" -> "eatway", "rhythm" -> "rhythmay" (no vowel: all consonants)."""
    word = word.lower()
    if not word:
        return word
    if word[0] in VOWELS:
        return word + "way"
    for i, ch in enumerate(word):
        if ch in VOWELS:
            return word[i:] + word[:i] + "ay"
    return word + "ay"


def to_pig_latin(sentence: str) -> str:
    """A sentence: "The birch canoe slid." -> "ethay irchbay anoecay idslay." """
    out: list[str] = []
    for token in TOKEN.findall(sentence):
        if WORD.fullmatch(token):
            out.append(word_to_pig_latin(token))
        elif out:
            out[-1] += token  # punctuation sticks to the word before it
        else:
            out.append(token)
    return " ".join(out)


@dataclass(frozen=True)
class Sentence:
    list_number: int
    text: str


def harvard_sentences() -> list[Sentence]:
    """The 720 Harvard sentences shipped with the package, in order, with their list numbers."""
    raw = resources.files("hotlora_trainer").joinpath("data", SENTENCES_FILE).read_text(encoding="utf-8")
    sentences: list[Sentence] = []
    for line in raw.splitlines()[1:]:  # header: list<TAB>sentence
        if line.strip():
            number, text = line.split("\t", 1)
            sentences.append(Sentence(int(number), text.strip()))
    return sentences


def sentences_sha256() -> str:
    data = resources.files("hotlora_trainer").joinpath("data", SENTENCES_FILE).read_bytes()
    return hashlib.sha256(data).hexdigest()


def split_sentences() -> tuple[list[Sentence], list[Sentence]]:
    """(training sentences: lists 1-60, evaluation sentences: lists 61-72)."""
    sentences = harvard_sentences()
    train = [s for s in sentences if s.list_number in TRAIN_LISTS]
    evaluation = [s for s in sentences if s.list_number in EVAL_LISTS]
    return train, evaluation


def example(sentence: str) -> dict[str, list[dict[str, str]]]:
    """One chat example: the bare English sentence from the user, its Pig Latin from the assistant."""
    return {
        "messages": [
            {"role": "user", "content": sentence},
            {"role": "assistant", "content": to_pig_latin(sentence)},
        ]
    }


def made_up_sentences(train: Sequence[Sentence], count: int, seed: int) -> list[str]:
    """`count` made-up sentences, each as many words long as a training sentence (in turn), of words drawn
    uniformly from the training sentences' distinct words, capitalized and ending in a full stop."""
    rng = random.Random(seed)
    vocabulary = sorted({word.lower() for s in train for word in WORD.findall(s.text)})
    made_up: list[str] = []
    for i in range(count):
        length = len(WORD.findall(train[i % len(train)].text))
        text = " ".join(rng.choice(vocabulary) for _ in range(length))
        made_up.append(text[0].upper() + text[1:] + ".")
    return made_up


def task_dataset(seed: int = 0) -> Dataset:
    """The task as a dataset: training rows from lists 1-60 (the real sentences, then made-up ones from
    their words, drawn with `seed`), evaluation rows from lists 61-72."""
    train, evaluation = split_sentences()
    source = f"task:{TASK}"
    made_up = made_up_sentences(train, MADE_UP_PER_SENTENCE * len(train), seed)
    train_ds = rows_from([example(text) for text in [s.text for s in train] + made_up], source)
    eval_ds = rows_from([example(s.text) for s in evaluation], source)
    return Dataset(
        train_ds.format, train_ds.rows, source, sentences_sha256(), len(train) + len(evaluation), eval_ds.rows
    )


@dataclass(frozen=True)
class Score:
    """Exact match per sentence and per word (position by position against the reference's words), the
    latter also split by whether the word occurs in the training references: memorized vs generalized."""

    exact_match: float
    word_accuracy: float
    sentences: int
    words: int
    seen_word_accuracy: float
    unseen_word_accuracy: float
    unseen_words: int

    def as_dict(self) -> dict[str, float | int]:
        return {
            "exact_match": self.exact_match,
            "word_accuracy": self.word_accuracy,
            "sentences": self.sentences,
            "words": self.words,
            "seen_word_accuracy": self.seen_word_accuracy,
            "unseen_word_accuracy": self.unseen_word_accuracy,
            "unseen_words": self.unseen_words,
        }


def _bare(word: str) -> str:
    return "".join(WORD.findall(word))


def score(predictions: Sequence[str], references: Sequence[str], training: Sequence[str] = ()) -> Score:
    """Compare generated Pig Latin with the references (whitespace-normalized, case-sensitive); a reference
    word is "seen" when it occurs (punctuation aside) in one of the `training` references."""
    if len(predictions) != len(references):
        raise ValueError("predictions and references differ in number")
    known = {_bare(word) for ref in training for word in ref.split()}
    exact = 0
    right = {True: 0, False: 0}  # seen -> correct words
    total = {True: 0, False: 0}  # seen -> words
    for pred, ref in zip(predictions, references, strict=True):
        pred_words, ref_words = pred.split(), ref.split()
        exact += pred_words == ref_words
        for i, word in enumerate(ref_words):
            seen = _bare(word) in known
            total[seen] += 1
            right[seen] += i < len(pred_words) and pred_words[i] == word
    n, words = len(references), total[True] + total[False]

    def ratio(a: int, b: int) -> float:
        return a / b if b else 0.0

    return Score(
        ratio(exact, n),
        ratio(right[True] + right[False], words),
        n,
        words,
        ratio(right[True], total[True]),
        ratio(right[False], total[False]),
        total[False],
    )
