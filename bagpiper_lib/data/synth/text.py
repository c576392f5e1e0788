"""A small template-generated English text corpus for the text-only pretraining task."""

from __future__ import annotations

import numpy as np

__all__ = ["text_corpus"]

_PEOPLE = (
    "My neighbour",
    "The teacher",
    "A young girl",
    "The old man",
    "Our cook",
    "The drummer",
    "My sister",
    "The baker",
)
_THINGS = (
    "the piano",
    "a church bell",
    "the kitchen radio",
    "the rain",
    "an old clock",
    "the wind",
    "a small dog",
    "the train",
)
_SOUNDS = (
    "rings",
    "hums quietly",
    "ticks loudly",
    "rattles the windows",
    "sounds warm",
    "echoes down the street",
    "falls softly",
    "whistles",
)
_PLACES = ("kitchen", "garden", "station", "library", "concert hall", "market", "school yard", "harbour")
_TIMES = (
    "in the morning",
    "at noon",
    "after dinner",
    "on Sundays",
    "before sunrise",
    "late at night",
    "every evening",
    "in winter",
)
_MUSIC = (
    "a slow waltz",
    "folk songs",
    "a piano sonata",
    "loud rock music",
    "a quiet lullaby",
    "jazz records",
    "organ music",
    "a marching band",
)
_ACTIONS = (
    "reads a book",
    "makes tea",
    "waters the plants",
    "walks to work",
    "writes a letter",
    "cleans the windows",
    "fixes the bicycle",
    "bakes bread",
)
_ADJECTIVES = ("quiet", "busy", "bright", "cold", "crowded", "peaceful", "noisy", "warm")

_TEMPLATES = (
    lambda c: f"{_cap(c(_THINGS))} {c(_SOUNDS)} {c(_TIMES)}.",
    lambda c: f"{c(_PEOPLE)} likes to listen to {c(_MUSIC)} {c(_TIMES)}.",
    lambda c: f"In the {c(_PLACES)}, you can hear {c(_THINGS)} {c(_TIMES)}.",
    lambda c: f"{c(_PEOPLE)} {c(_ACTIONS)} while {c(_THINGS)} {c(_SOUNDS)}.",
    lambda c: f"The {c(_PLACES)} is {c(_ADJECTIVES)} {c(_TIMES)}.",
    lambda c: f"{c(_PEOPLE)} plays {c(_MUSIC)} in the {c(_PLACES)}.",
    lambda c: f"When it is {c(_ADJECTIVES)} outside, {c(_PEOPLE).lower()} {c(_ACTIONS)}.",
)


def _cap(text: str) -> str:
    return text[0].upper() + text[1:]


def text_corpus(n: int, seed: int = 0) -> list[str]:
    """``n`` short texts (one to three simple English sentences each), deterministic by ``seed``."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = np.random.default_rng(np.random.SeedSequence([seed % (1 << 64), 0x7E47]))

    def choose(options: tuple[str, ...]) -> str:
        return options[int(rng.integers(len(options)))]

    texts = []
    for _ in range(n):
        count = int(rng.integers(1, 4))
        texts.append(" ".join(_TEMPLATES[int(rng.integers(len(_TEMPLATES)))](choose) for _ in range(count)))
    return texts
