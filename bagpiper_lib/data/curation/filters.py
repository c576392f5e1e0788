"""Rule-based caption filters (paper §2.2.1, appendix C.2): the eight rules of :data:`RULES`.

Decisions:

* The "incomplete" flag (the captioner marked its caption unfinished) is read from a manifest line's
  top-level ``"incomplete"`` field or from ``params["incomplete"]`` (a Record's metadata).
* Word rules use lower-cased alphanumeric words (punctuation stripped); the character-run rule looks
  at non-whitespace characters only; "non-Latin" means a letter whose Unicode name is not LATIN
  (digits, punctuation and symbols pass). 5-gram repetition = share of 5-gram occurrences that
  repeat an earlier one. Token count uses ``count_tokens`` (default: whitespace-separated words; pass
  ``lambda s: len(tokenizer(s).input_ids)`` for model tokens). Every rule can be disabled.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from bagpiper_lib.data.curation.items import StageReport, _category, _counts, _get

RULES = (
    "incomplete", "non_latin", "char_repetition", "word_repetition",
    "ngram_repetition", "unique_word_ratio", "word_length", "token_count",
)  # fmt: skip
_WORD = re.compile(r"[^\W_]+(?:['’-][^\W_]+)*")


def caption_words(caption: str) -> list[str]:
    """Lower-cased words (letters/digits, inner apostrophes and hyphens kept), punctuation dropped."""
    return _WORD.findall(caption.lower())


def whitespace_token_count(caption: str) -> int:
    """Default token count of the length rule: whitespace-separated words."""
    return len(caption.split())


@dataclass
class CaptionFilterConfig:
    """Thresholds of the eight caption rules (defaults: appendix C.2); name rules in ``disabled_rules``."""

    char_run: int = 5  # reject a non-space character repeated this many times or more in a row
    word_run: int = 3  # reject a word repeated this many times or more in a row
    ngram_size: int = 5
    ngram_repetition: float = 0.10  # reject when this share of n-grams (or more) are repeats
    unique_word_ratio: float = 0.30  # reject when unique words / words is this or lower
    min_word_length: float = 2.0  # reject a mean word length below ...
    max_word_length: float = 15.0  # ... or above these
    min_tokens: int | None = 200  # reject fewer tokens than this (None: no lower bound)
    max_tokens: int | None = 800  # reject more tokens than this (None: no upper bound)
    count_tokens: Callable[[str], int] = whitespace_token_count
    disabled_rules: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.disabled_rules = tuple(self.disabled_rules)
        unknown = sorted(set(self.disabled_rules) - set(RULES))
        if unknown:
            raise ValueError(f"unknown caption rules {unknown}; rules are {list(RULES)}")


def is_incomplete(item: Any) -> bool:
    """The captioner's "incomplete" flag: top-level ``incomplete`` (manifest) or ``params["incomplete"]``."""
    return bool(_get(item, "incomplete", False) or (_get(item, "params") or {}).get("incomplete", False))


def _longest_run(words: list[str]) -> int:
    best = run = 0
    for i, word in enumerate(words):
        run = run + 1 if i and word == words[i - 1] else 1
        best = max(best, run)
    return best


def _ngram_repetition(words: list[str], n: int) -> float:
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def caption_violations(
    caption: str, config: CaptionFilterConfig | None = None, *, incomplete: bool = False
) -> list[str]:
    """Names of the enabled rules (:data:`RULES`) that ``caption`` breaks; empty when it passes."""
    cfg = config or CaptionFilterConfig()
    words = caption_words(caption)
    mean_len = sum(map(len, words)) / len(words) if words else 0.0

    def too_many_tokens() -> bool:
        n = cfg.count_tokens(caption)
        return (cfg.min_tokens is not None and n < cfg.min_tokens) or (
            cfg.max_tokens is not None and n > cfg.max_tokens
        )

    checks: dict[str, Callable[[], bool]] = {
        "incomplete": lambda: incomplete,
        "non_latin": lambda: any(
            ch.isalpha() and not unicodedata.name(ch, "").startswith("LATIN") for ch in caption
        ),
        "char_repetition": lambda: re.search(rf"(\S)\1{{{cfg.char_run - 1},}}", caption) is not None,
        "word_repetition": lambda: _longest_run(words) >= cfg.word_run,
        "ngram_repetition": lambda: _ngram_repetition(words, cfg.ngram_size) >= cfg.ngram_repetition,
        "unique_word_ratio": lambda: len(set(words)) <= cfg.unique_word_ratio * len(words),
        "word_length": lambda: not cfg.min_word_length <= mean_len <= cfg.max_word_length,
        "token_count": too_many_tokens,
    }
    return [name for name, check in checks.items() if name not in cfg.disabled_rules and check()]


def filter_captions(
    items: Sequence[Any], config: CaptionFilterConfig | None = None
) -> tuple[list[Any], StageReport]:
    """Drop items whose caption breaks a rule. ``details``: ``rejected`` (id -> rule names) and
    ``rejections`` (rule -> category -> count; an item breaking two rules counts under both)."""
    kept, rejected = [], {}
    per_rule: dict[str, Counter] = {rule: Counter() for rule in RULES}
    for item in items:
        reasons = caption_violations(_get(item, "caption"), config, incomplete=is_incomplete(item))
        if not reasons:
            kept.append(item)
            continue
        rejected[str(_get(item, "id"))] = reasons
        for rule in reasons:
            per_rule[rule][_category(item)] += 1
    rejections = {rule: dict(sorted(c.items())) for rule, c in per_rule.items()}
    report = StageReport("caption_filters", _counts(items), _counts(kept), {"rejections": rejections})
    report.details["rejected"] = rejected
    return kept, report
