"""Caption-based multiple-choice question answering: how much of the audio does a caption capture?

A question is plain data::

    {"question": "How fast is the music?", "choices": ["slow", "fast"], "answer": 1}

An *answerer* reads ONLY the caption (never the audio) and picks a choice::

    class Answerer(Protocol):
        def answer(self, caption: str, question: str, choices: list[str]) -> int: ...

returning a choice index, or ``-1`` for "no usable answer" (scored wrong). A caption that lets the
answerer recover the right choices describes the audio well. :class:`KeywordAnswerer` is rule-based
and offline; LLM answerers live in :mod:`bagpiper_lib.evaluation.answerers`.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping, Sequence
from typing import Protocol, TypedDict, runtime_checkable

from bagpiper_lib.evaluation.metrics import normalize_text

__all__ = [
    "Question",
    "Answerer",
    "validate_question",
    "multiple_choice_accuracy",
    "answer_questions",
    "KeywordAnswerer",
    "parse_choice",
    "choice_letters",
    "STOPWORDS",
]


class Question(TypedDict):
    question: str
    choices: list[str]
    answer: int


@runtime_checkable
class Answerer(Protocol):
    def answer(self, caption: str, question: str, choices: Sequence[str]) -> int:
        """Index of the chosen choice given only ``caption``; ``-1`` when no answer could be read."""
        ...


def validate_question(item: Mapping, name: str = "question") -> Question:
    """Check a question dict (non-empty ``choices`` of str, ``answer`` an int index into them)."""
    if not isinstance(item, Mapping):
        raise TypeError(
            f"{name} must be a dict with 'question', 'choices', 'answer', got {type(item).__name__}"
        )
    missing = [key for key in ("question", "choices", "answer") if key not in item]
    if missing:
        raise ValueError(f"{name} is missing key(s) {missing}")
    question, choices, answer = item["question"], item["choices"], item["answer"]
    if not isinstance(question, str):
        raise TypeError(f"{name}['question'] must be a str, got {type(question).__name__}")
    if isinstance(choices, str) or not isinstance(choices, Sequence):
        raise TypeError(f"{name}['choices'] must be a list of str, got {type(choices).__name__}")
    if len(choices) == 0:
        raise ValueError(f"{name}['choices'] is empty: a question needs at least one choice")
    for j, choice in enumerate(choices):
        if not isinstance(choice, str) or not choice.strip():
            raise ValueError(f"{name}['choices'][{j}] must be a non-empty str, got {choice!r}")
    if isinstance(answer, bool) or not isinstance(answer, int):
        raise TypeError(f"{name}['answer'] must be an int index, got {answer!r}")
    if not 0 <= answer < len(choices):
        raise ValueError(f"{name}['answer']={answer} is out of range for {len(choices)} choices")
    return {"question": question, "choices": list(choices), "answer": answer}


def _flatten(captions: Sequence[str], questions: Sequence) -> list[tuple[str, Question, str]]:
    if isinstance(captions, str) or not isinstance(captions, Sequence):
        raise TypeError(f"captions must be a list of str, got {type(captions).__name__}")
    if not isinstance(questions, Sequence):
        raise TypeError(f"questions must be a list, got {type(questions).__name__}")
    if len(captions) != len(questions):
        raise ValueError(
            f"captions and questions must have the same length, got {len(captions)} captions and "
            f"{len(questions)} questions entries"
        )
    items = []
    for i, (caption, entry) in enumerate(zip(captions, questions)):
        if not isinstance(caption, str):
            raise TypeError(f"captions[{i}] must be a str, got {type(caption).__name__}")
        group = [entry] if isinstance(entry, Mapping) else entry
        if not isinstance(group, Sequence) or isinstance(group, str):
            raise TypeError(f"questions[{i}] must be a question dict or a list of them")
        for j, item in enumerate(group):
            name = f"questions[{i}]" if isinstance(entry, Mapping) else f"questions[{i}][{j}]"
            items.append((caption, validate_question(item, name), name))
    if not items:
        raise ValueError("questions is empty: need at least one question")
    return items


def answer_questions(
    captions: Sequence[str], questions: Sequence, answerer: Answerer
) -> list[tuple[int, int]]:
    """``(predicted, answer)`` for every question, in order; see :func:`multiple_choice_accuracy`."""
    if not callable(getattr(answerer, "answer", None)):
        raise TypeError(
            f"answerer must have an answer(caption, question, choices) method, got {type(answerer).__name__}"
        )
    results = []
    for caption, item, name in _flatten(captions, questions):
        predicted = answerer.answer(caption, item["question"], list(item["choices"]))
        if isinstance(predicted, bool) or not isinstance(predicted, int):
            raise TypeError(f"answerer returned {predicted!r} for {name}; expected an int choice index")
        if not -1 <= predicted < len(item["choices"]):
            raise ValueError(
                f"answerer returned {predicted} for {name} with {len(item['choices'])} choices; "
                "expected an index or -1"
            )
        results.append((predicted, item["answer"]))
    return results


def multiple_choice_accuracy(captions: Sequence[str], questions: Sequence, answerer: Answerer) -> float:
    """Fraction of questions the answerer gets right reading only the captions.

    Args:
        captions: one caption per clip.
        questions: aligned with ``captions``; ``questions[i]`` is one question dict or a list of
            them about clip ``i`` (every question counts once).
        answerer: anything with ``answer(caption, question, choices) -> int`` (``-1`` = no answer,
            scored wrong).
    """
    results = answer_questions(captions, questions, answerer)
    return sum(predicted == answer for predicted, answer in results) / len(results)


# fmt: off
STOPWORDS = frozenset({
    "a", "an", "the", "of", "and", "or", "in", "on", "at", "to", "with", "by", "for", "from", "is",
    "are", "was", "were", "be", "it", "its", "this", "that", "these", "those", "there", "some", "any",
    "no", "not", "as", "into", "over", "under", "than", "then",
})
# fmt: on


class KeywordAnswerer:
    """Rule-based answerer: the choice with the most distinct content words present in the caption.

    Caption and choices go through :func:`normalize_text`; :data:`STOPWORDS` are ignored (so "a" in
    a choice matches nothing). Ties, including no match at all, go to the lowest index. The
    question text is not used: the synthetic corpus asks about attributes whose values are the
    choices ("fast" / "slow", "dog" / "piano").
    """

    def __init__(self, stopwords: frozenset[str] = STOPWORDS):
        self.stopwords = frozenset(stopwords)

    def scores(self, caption: str, choices: Sequence[str]) -> list[int]:
        words = set(normalize_text(caption).split())
        return [len((set(normalize_text(c).split()) - self.stopwords) & words) for c in choices]

    def answer(self, caption: str, question: str, choices: Sequence[str]) -> int:
        scores = self.scores(caption, choices)
        return scores.index(max(scores))


def choice_letters(num_choices: int) -> str:
    """``"ABC..."`` for up to 26 choices."""
    if not 1 <= num_choices <= 26:
        raise ValueError(f"lettered prompts support 1 to 26 choices, got {num_choices}")
    return string.ascii_uppercase[:num_choices]


_THINK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
# keyword case-insensitive, letter upper-case only (so "the answer is a dog" is not choice A)
_KEYWORD = re.compile(
    r"\b(?i:answer|option|choice)\b\s*(?i:is|would be)?\s*[:\-]?\s*\(?([A-Z])\)?(?![A-Za-z'])"
)
_KEYWORD_FINAL = re.compile(
    r"\b(?i:answer|option|choice)\b\s*(?i:is)?\s*[:\-]?\s*\(?([a-zA-Z])\)?\s*[.!]?\s*$"
)
_LEADING = re.compile(r"^\(?([A-Z])[).:\]]")
_PARENTHESISED = re.compile(r"\(([A-Z])\)")


def parse_choice(reply: str, choices: Sequence[str]) -> int | None:
    """Read the chosen index from a free-text LLM reply; ``None`` when it names no single choice.

    In order: a capital letter after "answer/option/choice" (the last mention wins); a reply that is just
    a letter (``"B"``, ``"(b)"``, ``"B."``); a leading ``"B)"`` / ``"B."`` / ``"B:"``; exactly one distinct
    ``"(B)"``; exactly one choice whose text appears as whole words (a choice contained in another
    matching choice yields to it). ``<think>...</think>`` blocks and markdown ``*``/`` ` `` are ignored.
    """
    letters = choice_letters(len(choices))
    text = _THINK.sub(" ", reply).replace("*", "").replace("`", "").strip()
    mentions = [m.group(1) for m in _KEYWORD.finditer(text) if m.group(1) in letters]
    final = _KEYWORD_FINAL.search(text)
    if final and final.group(1).upper() in letters:  # "answer: b" at the very end, any case
        mentions.append(final.group(1).upper())
    if mentions:
        return letters.index(mentions[-1])
    bare = text.strip(" \t\n.()[]:").upper()
    if len(bare) == 1 and bare in letters:
        return letters.index(bare)
    leading = _LEADING.match(text)
    if leading and leading.group(1) in letters:
        return letters.index(leading.group(1))
    bracketed = {m.group(1) for m in _PARENTHESISED.finditer(text)} & set(letters)
    if len(bracketed) == 1:
        return letters.index(bracketed.pop())
    norm_reply = f" {normalize_text(text)} "
    norm_choices = [normalize_text(c) for c in choices]
    hits = [i for i, c in enumerate(norm_choices) if c and f" {c} " in norm_reply]
    hits = [
        i for i in hits if not any(j != i and f" {norm_choices[i]} " in f" {norm_choices[j]} " for j in hits)
    ]
    return hits[0] if len(hits) == 1 else None
