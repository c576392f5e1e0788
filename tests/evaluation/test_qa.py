"""Caption QA: keyword answerer on crafted captions, accuracy bookkeeping, reply parsing, bad questions."""

from __future__ import annotations

import pytest

from bagpiper_lib.evaluation import KeywordAnswerer, multiple_choice_accuracy, parse_choice, validate_question
from bagpiper_lib.evaluation.qa import Answerer, answer_questions

ROCK = "A fast-paced ROCK song with loud electric guitar and drums at 140 BPM."
DOG = "A dog barks twice, then a car passes by in the rain."


@pytest.mark.parametrize(
    ("caption", "choices", "expected"),
    [
        (ROCK, ["slow", "fast"], 1),
        (ROCK, ["piano", "electric guitar", "violin"], 1),
        (ROCK, ["140 BPM", "90 BPM"], 0),
        (ROCK, ["jazz", "classical"], 0),  # nothing matches: tie -> lowest index
        (ROCK, ["rock guitar", "loud drums"], 0),  # 2 words each: tie -> lowest index
        (DOG, ["a cat", "the dog"], 1),  # stopwords "a"/"the" do not count
        (DOG, ["Rain!", "snow"], 0),  # case and punctuation do not count
    ],
)
def test_keyword_answerer_on_crafted_captions(caption, choices, expected):
    answerer = KeywordAnswerer()
    assert isinstance(answerer, Answerer)
    assert answerer.answer(caption, "ignored", choices) == expected


def test_multiple_choice_accuracy_counts_every_question():
    captions = [ROCK, DOG]
    questions = [
        [
            {"question": "Tempo?", "choices": ["slow", "fast"], "answer": 1},  # right
            {"question": "Instrument?", "choices": ["piano", "guitar"], "answer": 0},  # wrong
        ],
        {"question": "Animal?", "choices": ["cat", "dog"], "answer": 1},  # right
    ]
    assert multiple_choice_accuracy(captions, questions, KeywordAnswerer()) == pytest.approx(2 / 3)
    assert answer_questions(captions, questions, KeywordAnswerer()) == [(1, 1), (1, 0), (1, 1)]


class _Fixed:
    def __init__(self, value):
        self.value = value

    def answer(self, caption, question, choices):
        return self.value


def test_no_answer_is_wrong_and_bad_answerers_fail():
    question = {"question": "q", "choices": ["x", "y"], "answer": 0}
    assert multiple_choice_accuracy(["c"], [question], _Fixed(-1)) == 0.0
    with pytest.raises(ValueError, match=r"answerer returned 2 for questions\[0\] with 2 choices"):
        multiple_choice_accuracy(["c"], [question], _Fixed(2))
    with pytest.raises(TypeError, match="expected an int choice index"):
        multiple_choice_accuracy(["c"], [question], _Fixed("x"))
    with pytest.raises(TypeError, match="answerer must have an answer"):
        multiple_choice_accuracy(["c"], [question], object())


@pytest.mark.parametrize(
    ("question", "error", "match"),
    [
        ({"question": "q", "choices": [], "answer": 0}, ValueError, r"questions\[0\]\['choices'\] is empty"),
        (
            {"question": "q", "choices": ["a", "b"], "answer": 2},
            ValueError,
            r"\['answer'\]=2 is out of range for 2",
        ),
        ({"question": "q", "choices": ["a", "b"], "answer": -1}, ValueError, "out of range"),
        ({"question": "q", "choices": ["a"], "answer": True}, TypeError, "must be an int index"),
        (
            {"question": "q", "choices": ["a", " "], "answer": 0},
            ValueError,
            r"\['choices'\]\[1\] must be a non-empty",
        ),
        ({"question": "q", "choices": "ab", "answer": 0}, TypeError, "must be a list of str"),
        ({"choices": ["a"], "answer": 0}, ValueError, r"missing key\(s\) \['question'\]"),
    ],
)
def test_bad_questions_fail_clearly(question, error, match):
    with pytest.raises(error, match=match):
        multiple_choice_accuracy(["caption"], [question], KeywordAnswerer())


def test_bad_containers_fail_clearly():
    question = {"question": "q", "choices": ["a"], "answer": 0}
    with pytest.raises(ValueError, match="1 captions and 2 questions"):
        multiple_choice_accuracy(["c"], [question, question], KeywordAnswerer())
    with pytest.raises(ValueError, match="questions is empty"):
        multiple_choice_accuracy(["c"], [[]], KeywordAnswerer())
    with pytest.raises(TypeError, match=r"captions\[0\] must be a str"):
        multiple_choice_accuracy([None], [question], KeywordAnswerer())
    with pytest.raises(ValueError, match=r"questions\[1\]\[0\]\['answer'\]=5"):
        multiple_choice_accuracy(["c", "d"], [question, [dict(question, answer=5)]], KeywordAnswerer())
    assert validate_question(question) == question


CHOICES = ["a dog barking", "a cat meowing", "rain", "very heavy rain"]


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("B", 1),
        ("(b)", 1),
        ("c.", 2),
        ("Answer: C", 2),
        ("The answer is (D).", 3),
        ("**C**", 2),
        ("answer: b", 1),
        ("<think>Maybe the answer is A.</think>The answer is B", 1),
        ("Option A is wrong; the answer is B.", 1),
        ("B) a cat meowing", 1),
        ("The answer is a dog barking.", 0),  # lower-case "a" is an article, the text names choice 0
        ("It sounds like very heavy rain.", 3),  # "rain" is inside the longer matching choice
        ("I cannot tell.", None),
        ("Either A or B.", None),
        ("The answer is E.", None),
    ],
)
def test_parse_choice(reply, expected):
    assert parse_choice(reply, CHOICES) == expected
