"""The discrete attribute sets of the synthetic corpus and their chance levels.

Every captioned attribute takes its value from a small finite set, so a caption can state it exactly,
``parse_caption`` can recover it, and an evaluation can report accuracy next to chance.
"""

from __future__ import annotations

import difflib

from bagpiper_lib.data.records import CATEGORIES

__all__ = ["ATTRIBUTES", "VALUES", "chance_level", "number_word"]

KEYS = ("C", "D", "E", "F", "G", "A")
MODES = ("major", "minor")
TEMPOS = (60, 90, 120, 150)
INSTRUMENTS = ("piano", "organ", "pluck", "bell")
DYNAMICS = ("soft", "medium", "loud")
REGISTERS = ("low", "middle", "high")
TEXTURES = ("melody", "chords")

EVENT_TYPES = ("beep", "click", "noise burst", "rising sweep", "falling sweep", "thud")
EVENT_COUNTS = (1, 2, 3)
BACKGROUNDS = ("silence", "hum", "noise")
LOUDNESS = ("quiet", "moderate", "loud")

PITCHES = ("low", "mid", "high")
SPEAKERS = ("male", "female", "child")
RATES = ("slow", "moderate", "fast")
VOWELS = ("a", "e", "i", "o", "u")
VOWEL_COUNTS = (1, 2, 3, 4)

# Attributes scored by ``attribute_accuracy`` (besides "category"), per category.
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "speech": ("pitch", "speaker", "rate", "vowels"),
    "music": ("key", "mode", "tempo", "instrument", "dynamics", "register", "texture"),
    "sound": ("events", "event_count", "background", "loudness"),
}

# Finite value sets of the scalar attributes; "events" / "vowels" are sequences (see ``_cardinality``).
VALUES: dict[str, tuple] = {
    "category": CATEGORIES,
    "key": KEYS,
    "mode": MODES,
    "tempo": TEMPOS,
    "instrument": INSTRUMENTS,
    "dynamics": DYNAMICS,
    "register": REGISTERS,
    "texture": TEXTURES,
    "event_count": EVENT_COUNTS,
    "background": BACKGROUNDS,
    "loudness": LOUDNESS,
    "pitch": PITCHES,
    "speaker": SPEAKERS,
    "rate": RATES,
}

_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
                 "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
                 "nineteen", "twenty")  # fmt: skip


def number_word(n: int) -> str:
    """``3 -> "three"`` for 0..20, digits beyond."""
    return _NUMBER_WORDS[n] if 0 <= n < len(_NUMBER_WORDS) else str(n)


def word_number(word: str) -> int | None:
    """Inverse of ``number_word`` (case-insensitive, digits accepted); ``None`` when not a number."""
    word = word.lower()
    if word.isdigit():
        return int(word)
    return _NUMBER_WORDS.index(word) if word in _NUMBER_WORDS else None


NUMBER_PATTERN = "|".join(_NUMBER_WORDS) + r"|\d{1,4}"


def _cardinality(attribute: str) -> int:
    if attribute == "events":  # ordered event-type sequences of every allowed length
        return sum(len(EVENT_TYPES) ** k for k in EVENT_COUNTS)
    if attribute == "vowels":  # ordered vowel sequences ("a-e-o") of every allowed length
        return sum(len(VOWELS) ** k for k in VOWEL_COUNTS)
    if attribute in VALUES:
        return len(VALUES[attribute])
    known = sorted({*VALUES, "events", "vowels"})
    close = difflib.get_close_matches(attribute, known, n=3)
    hint = f"; did you mean {close}?" if close else ""
    raise KeyError(f"unknown attribute {attribute!r}{hint} (known: {known})")


def chance_level(attribute: str) -> float:
    """Accuracy of a uniform guess: ``1 / number of possible values`` of ``attribute``.

    Sequence attributes count every ordered sequence of every allowed length ("events": 258 event-type
    sequences of 1-3 events; "vowels": 780 vowel sequences of 1-4 vowels). Raises ``KeyError`` for an
    unknown attribute name.
    """
    return 1.0 / _cardinality(attribute)
