"""Pre-training data curation (paper §2.2.1, Figure 3, appendix C.2), one stage per function.

Every stage takes a list of items, either :class:`~bagpiper_lib.data.records.Record` or manifest dicts
(``{"id", "caption", "category", "quality"?, "params"?, "audio"?, ...}``), and returns
``(kept, StageReport)`` with per-category input/kept counts. Items are never mutated: a stage that
adds a field returns updated copies. :func:`curate` chains the stages in the paper's order:

1. :func:`classify_categories`: speech / music / sound from the caption (paper: Qwen3-32B reads the
   caption), for items whose category is ``None`` (all items with ``reclassify=True``).
2. :func:`filter_captions`: the eight rule-based caption filters of appendix C.2 (:data:`RULES`).
3. :func:`fuse_quality`: per category, the percentile rank of every present quality score
   (``"audio"``, ``"text"``, ``"alignment"``), averaged into ``quality["fused"]``.
4. :func:`truncate`: Gumbel top-k soft truncation of the low-quality tail, per category.
5. :func:`deduplicate`: MinHash-LSH near-duplicate removal of captions.

Decisions:

* The "incomplete" flag (the captioner marked its caption unfinished) is read from a manifest line's
  top-level ``"incomplete"`` field or from ``params["incomplete"]`` (a Record's metadata).
* Word rules use lower-cased alphanumeric words (punctuation stripped); the character-run rule looks
  at non-whitespace characters only; "non-Latin" means a letter whose Unicode name is not LATIN
  (digits, punctuation and symbols pass). 5-gram repetition = share of 5-gram occurrences that
  repeat an earlier one. Token count uses ``count_tokens`` (default: whitespace-separated words; pass
  ``lambda s: len(tokenizer(s).input_ids)`` for model tokens). Every rule can be disabled.
* Percentile rank = (number below + half the number equal) / n within the category, so ties share a
  rank; items with no score at all get the neutral ``0.5`` and are counted as ``unscored``.
* Gumbel top-k keeps ``round((1 - discard) * n)`` items per category, those with the largest
  ``fused / temperature + Gumbel noise`` (seeded per category); as temperature -> 0 it is plain top-k.
* Deduplication is greedy in input order: the first caption of a near-duplicate group is the kept
  representative; a candidate from the LSH counts only if its estimated Jaccard reaches the threshold.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import unicodedata
import zlib
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from bagpiper_lib.data.llm import LLMError, TextGenerator
from bagpiper_lib.data.records import CATEGORIES

if TYPE_CHECKING:  # datasketch pulls in scipy: imported when deduplicating only
    from datasketch import MinHash

__all__ = [
    "RULES", "QUALITY_KEYS", "TRUNCATION_PRESETS", "CaptionFilterConfig", "TruncationConfig",
    "DedupConfig", "CurationConfig", "StageReport", "CurationReport", "CategoryClassifier",
    "KeywordCategoryClassifier", "LLMCategoryClassifier", "caption_words", "whitespace_token_count",
    "caption_violations", "is_incomplete", "filter_captions", "percentile_ranks", "fused_scores",
    "fuse_quality", "gumbel_topk", "truncate", "caption_minhash", "deduplicate", "classify_categories",
    "curate", "save_report",
]  # fmt: skip

RULES = (
    "incomplete", "non_latin", "char_repetition", "word_repetition",
    "ngram_repetition", "unique_word_ratio", "word_length", "token_count",
)  # fmt: skip
QUALITY_KEYS = ("audio", "text", "alignment")
# Appendix C.2: per category (sound / music / speech) temperature and share of items discarded.
TRUNCATION_PRESETS = {
    "understanding": {"temperature": {"sound": 0.3, "music": 0.3, "speech": 0.3},
                      "discard": {"sound": 0.2, "music": 0.2, "speech": 0.42}},
    "generation": {"temperature": {"sound": 0.1, "music": 0.1, "speech": 0.1},
                   "discard": {"sound": 0.2, "music": 0.2, "speech": 0.28}},
}  # fmt: skip
_WORD = re.compile(r"[^\W_]+(?:['’-][^\W_]+)*")


def _get(item: Any, name: str, default: Any = None) -> Any:
    return item.get(name, default) if isinstance(item, Mapping) else getattr(item, name, default)


def _with(item: Any, **changes: Any) -> Any:
    return {**item, **changes} if isinstance(item, Mapping) else dataclasses.replace(item, **changes)


def _category(item: Any) -> str:
    return _get(item, "category") or "unknown"


def _counts(items: Sequence[Any]) -> dict[str, int]:
    return dict(sorted(Counter(_category(item) for item in items).items()))


@dataclass
class StageReport:
    """Per-category counts of one stage; ``details`` holds stage-specific facts (JSON-able)."""

    name: str
    input: dict[str, int]
    kept: dict[str, int]
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def removed(self) -> dict[str, int]:
        return {cat: n - self.kept.get(cat, 0) for cat, n in self.input.items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "input": self.input,
            "kept": self.kept,
            "removed": self.removed,
            **self.details,
        }


# ---------------------------------------------------------------- rule-based caption filters


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


# ---------------------------------------------------------------- quality fusion and truncation


def percentile_ranks(values: Sequence[float]) -> np.ndarray:
    """``(number below + half the number equal) / n`` for every value: in (0, 1), ties share a rank."""
    values = np.asarray(values, dtype=np.float64)
    ordered = np.sort(values)
    below = np.searchsorted(ordered, values, "left")
    at_or_below = np.searchsorted(ordered, values, "right")
    return (below + at_or_below) / (2.0 * len(values))


def fused_scores(items: Sequence[Any], keys: Sequence[str] = QUALITY_KEYS) -> list[float | None]:
    """Mean over present ``keys`` of the item's percentile rank within its category (None: no key)."""
    total, count = np.zeros(len(items)), np.zeros(len(items))
    for cat in {_category(item) for item in items}:
        members = [i for i, item in enumerate(items) if _category(item) == cat]
        for key in keys:
            present = [i for i in members if _is_number((_get(items[i], "quality") or {}).get(key))]
            if present:
                total[present] += percentile_ranks([_get(items[i], "quality")[key] for i in present])
                count[present] += 1
    return [float(t / c) if c else None for t, c in zip(total, count)]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def fuse_quality(
    items: Sequence[Any], keys: Sequence[str] = QUALITY_KEYS, missing: float = 0.5
) -> tuple[list[Any], StageReport]:
    """Copies of ``items`` with ``quality["fused"]`` set (``missing`` when no key is present)."""
    scores = fused_scores(items, keys)
    out = [
        _with(item, quality={**(_get(item, "quality") or {}), "fused": missing if s is None else s})
        for item, s in zip(items, scores)
    ]
    unscored = Counter(_category(item) for item, s in zip(items, scores) if s is None)
    details = {"keys": list(keys), "unscored": dict(sorted(unscored.items()))}
    return out, StageReport("quality_fusion", _counts(items), _counts(out), details)


@dataclass
class TruncationConfig:
    """Gumbel top-k per category: ``temperature`` and ``discard`` share (missing category: keep all)."""

    temperature: dict[str, float] = field(
        default_factory=lambda: dict(TRUNCATION_PRESETS["understanding"]["temperature"])
    )
    discard: dict[str, float] = field(
        default_factory=lambda: dict(TRUNCATION_PRESETS["understanding"]["discard"])
    )
    enabled: bool = True

    def __post_init__(self) -> None:
        if any(not 0.0 <= d <= 1.0 for d in self.discard.values()):
            raise ValueError(f"discard shares must lie in [0, 1], got {self.discard}")
        if any(t <= 0 for t in self.temperature.values()):
            raise ValueError(f"temperatures must be > 0, got {self.temperature}")

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> TruncationConfig:
        """The paper's ``"understanding"`` (T 0.3, discard 20/20/42 %) or ``"generation"`` (T 0.1, 20/20/28 %)."""
        if name not in TRUNCATION_PRESETS:
            raise ValueError(f"unknown truncation preset {name!r}; presets are {sorted(TRUNCATION_PRESETS)}")
        values = {key: dict(table) for key, table in TRUNCATION_PRESETS[name].items()}
        return cls(**{**values, **overrides})


def gumbel_topk(
    scores: Sequence[float], keep: int, temperature: float, rng: np.random.Generator
) -> np.ndarray:
    """Indices (ascending) of the ``keep`` largest ``score / temperature + Gumbel(0, 1)`` keys."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    keys = np.asarray(scores, dtype=np.float64) / temperature + rng.gumbel(size=len(scores))
    return np.sort(np.argsort(-keys, kind="stable")[:keep])


def truncate(
    items: Sequence[Any], config: TruncationConfig | None = None, seed: int = 0
) -> tuple[list[Any], StageReport]:
    """Soft-truncate each category's low ``quality["fused"]`` tail (run :func:`fuse_quality` first)."""
    cfg = config or TruncationConfig()
    keep_mask = np.ones(len(items), dtype=bool)
    for cat in sorted({_category(item) for item in items}):
        members = [i for i, item in enumerate(items) if _category(item) == cat]
        scores = [(_get(items[i], "quality") or {}).get("fused") for i in members]
        if any(s is None for s in scores):
            raise ValueError(
                f"truncate: category {cat!r} has items without quality['fused']; run fuse_quality"
            )
        keep = math.floor(len(members) * (1.0 - cfg.discard.get(cat, 0.0)) + 0.5)
        rng = np.random.default_rng([seed, zlib.crc32(cat.encode())])
        chosen = set(gumbel_topk(scores, keep, cfg.temperature.get(cat, 1.0), rng).tolist())
        keep_mask[[i for j, i in enumerate(members) if j not in chosen]] = False
    kept = [item for item, k in zip(items, keep_mask) if k]
    details = {"temperature": cfg.temperature, "discard": cfg.discard, "seed": seed}
    return kept, StageReport("gumbel_truncation", _counts(items), _counts(kept), details)


# ---------------------------------------------------------------- near-duplicate removal


@dataclass
class DedupConfig:
    """MinHash-LSH over word shingles of the caption."""

    threshold: float = 0.8
    num_perm: int = 128
    shingle_size: int = 5
    seed: int = 1
    enabled: bool = True


def caption_minhash(caption: str, config: DedupConfig | None = None) -> MinHash:
    """MinHash of the set of ``shingle_size``-word shingles of the caption."""
    from datasketch import MinHash

    cfg = config or DedupConfig()
    words = caption_words(caption)
    k = cfg.shingle_size
    shingles = {" ".join(words[i : i + k]) for i in range(max(1, len(words) - k + 1))}
    minhash = MinHash(num_perm=cfg.num_perm, seed=cfg.seed)
    minhash.update_batch([s.encode() for s in sorted(shingles)])
    return minhash


def deduplicate(items: Sequence[Any], config: DedupConfig | None = None) -> tuple[list[Any], StageReport]:
    """Drop near-duplicate captions; ``details["duplicates"]`` maps removed id -> kept representative id."""
    from datasketch import MinHashLSH

    cfg = config or DedupConfig()
    lsh = MinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm)
    hashes: dict[str, MinHash] = {}
    kept, duplicates = [], {}
    for pos, item in enumerate(items):
        minhash = caption_minhash(_get(item, "caption"), cfg)
        similarity = {key: minhash.jaccard(hashes[key]) for key in lsh.query(minhash)}
        best = max(similarity, key=similarity.get, default=None)
        if best is not None and similarity[best] >= cfg.threshold:
            duplicates[str(_get(item, "id"))] = str(_get(items[int(best)], "id"))
            continue
        lsh.insert(str(pos), minhash)
        hashes[str(pos)] = minhash
        kept.append(item)
    details = {"threshold": cfg.threshold, "num_perm": cfg.num_perm, "duplicates": duplicates}
    return kept, StageReport("minhash_dedup", _counts(items), _counts(kept), details)


# ---------------------------------------------------------------- category classification


class CategoryClassifier(Protocol):
    """Maps a rich caption to one of :data:`~bagpiper_lib.data.records.CATEGORIES`."""

    def classify(self, caption: str) -> str: ...


class KeywordCategoryClassifier:
    """Offline classifier: the category whose cue words occur most often (ties: speech, music, sound).

    A caption without any cue is ``default`` (``"sound"``: no voice, no music cue).
    """

    CUES = {
        "speech": r"speech|speak\w*|spoken|voices?|says?|said|saying|talk\w*|conversation\w*|narrat\w*|"
        r"vowels?|utterances?|transcri\w*|words?|sentences?|dialogues?|accents?|pronounc\w*|speakers?",
        "music": r"music\w*|melod\w*|bpm|chords?|songs?|instrument\w*|guitars?|pianos?|drums?|beats?|"
        r"tempo|rhythm\w*|harmon\w*|genre|synth\w*|violins?|singers?|singing|vocals?|tunes?|notes?",
        "sound": r"sound effects?|beeps?|thuds?|noises?|noisy|knock\w*|bangs?|clicks?|engines?|rain|wind|"
        r"footsteps?|dogs?|bark\w*|birds?|chirp\w*|water|sirens?|alarms?|crash\w*|buzz\w*|hum|"
        r"explosions?|ambien\w*|tones?|clatter\w*|rustl\w*|whoosh\w*|impacts?|bursts?",
    }

    def __init__(self, cues: Mapping[str, str] | None = None, default: str = "sound") -> None:
        self.patterns = {cat: re.compile(rf"\b(?:{rx})\b") for cat, rx in (cues or self.CUES).items()}
        self.default = default

    def scores(self, caption: str) -> dict[str, int]:
        text = caption.lower()
        return {cat: len(pattern.findall(text)) for cat, pattern in self.patterns.items()}

    def classify(self, caption: str) -> str:
        scores = self.scores(caption)
        best = max(scores, key=scores.get)
        return best if scores[best] > 0 else self.default


DEFAULT_CLASSIFY_PROMPT = (
    "Below is a detailed description of an audio clip. Decide which audio type dominates it: "
    '"speech" (people talking), "music" (songs, instruments, singing) or "sound" (sound effects, '
    "environmental or mechanical sounds). Answer with exactly one word: speech, music or sound.\n\n"
    "Description:\n{caption}\n\nAnswer:"
)


class LLMCategoryClassifier:
    """Prompts a text LLM (paper: Qwen3-32B) with ``prompt`` (``{caption}`` is replaced by the caption).

    An answer naming no category (or a failed call) falls back to ``fallback`` and is counted in
    ``failures``.
    """

    def __init__(
        self,
        client: TextGenerator,
        prompt: str = DEFAULT_CLASSIFY_PROMPT,
        fallback: CategoryClassifier | None = None,
        max_new_tokens: int = 16,
    ) -> None:
        self.client, self.prompt, self.max_new_tokens = client, prompt, max_new_tokens
        self.fallback = fallback or KeywordCategoryClassifier()
        self.failures = 0

    def classify(self, caption: str) -> str:
        try:
            answer = self.client.generate(
                self.prompt.replace("{caption}", caption),
                max_new_tokens=self.max_new_tokens,
                temperature=0.0,
                seed=0,
            )
        except LLMError:
            answer = ""
        found = re.search(r"\b(speech|music|sound)", answer.lower())
        if found is None:
            self.failures += 1
            return self.fallback.classify(caption)
        return found.group(1)


def classify_categories(
    items: Sequence[Any], classifier: CategoryClassifier | None = None, reclassify: bool = False
) -> tuple[list[Any], StageReport]:
    """Fill in ``category`` from the caption where it is ``None`` (everywhere with ``reclassify``).

    ``details``: ``classified`` (new category -> items classified), ``changed`` (relabelled items)."""
    clf = classifier or KeywordCategoryClassifier()
    out, assigned, changed = [], Counter(), 0
    for item in items:
        old = _get(item, "category")
        if old is not None and not reclassify:
            out.append(item)
            continue
        new = clf.classify(_get(item, "caption"))
        if new not in CATEGORIES:
            raise ValueError(f"classifier returned {new!r}; categories are {list(CATEGORIES)}")
        assigned[new] += 1
        changed += old is not None and new != old
        out.append(_with(item, category=new))
    details = {"classified": dict(sorted(assigned.items())), "changed": changed}
    if hasattr(clf, "failures"):
        details["classifier_failures"] = clf.failures
    # relabelling removes nothing: input and kept are both counted by the new category
    return out, StageReport("classification", _counts(out), _counts(out), details)


# ---------------------------------------------------------------- the whole pipeline and its report


@dataclass
class CurationConfig:
    """Everything :func:`curate` needs; :meth:`from_dict` reads the YAML form (plain data)."""

    filters: CaptionFilterConfig = field(default_factory=CaptionFilterConfig)
    fusion_keys: tuple[str, ...] = QUALITY_KEYS
    truncation: TruncationConfig = field(default_factory=TruncationConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    classifier: CategoryClassifier | None = None  # None: KeywordCategoryClassifier
    reclassify: bool = False
    seed: int = 0

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CurationConfig:
        """``{filters: {...}, fusion_keys: [...], truncation: {preset?, ...}, dedup: {...}, reclassify, seed}``."""
        allowed = {"filters", "fusion_keys", "truncation", "dedup", "reclassify", "seed"}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise ValueError(f"unknown curation config keys {unknown}; allowed: {sorted(allowed)}")
        trunc = dict(data.get("truncation") or {})
        preset = trunc.pop("preset", "understanding")
        return cls(
            filters=CaptionFilterConfig(**(data.get("filters") or {})),
            fusion_keys=tuple(data.get("fusion_keys", QUALITY_KEYS)),
            truncation=TruncationConfig.preset(preset, **trunc),
            dedup=DedupConfig(**(data.get("dedup") or {})),
            reclassify=bool(data.get("reclassify", False)),
            seed=int(data.get("seed", 0)),
        )


def _by_category(items: Sequence[Any], value: Callable[[Any], float]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for item in items:
        out.setdefault(_category(item), []).append(value(item))
    return dict(sorted(out.items()))


@dataclass
class CurationReport:
    """Stage counts plus the distributions the histograms show (fused score, caption tokens)."""

    stages: list[StageReport]
    fused_scores: dict[str, list[float]]  # items scored by fusion, before truncation
    kept_fused_scores: dict[str, list[float]]
    caption_lengths: dict[str, list[float]]  # all input items (after classification)
    kept_caption_lengths: dict[str, list[float]]

    def to_dict(self) -> dict[str, Any]:
        def stats(dist: dict[str, list[float]]) -> dict[str, dict[str, float]]:
            return {c: {"n": len(v), "mean": float(np.mean(v)), "min": float(min(v)), "max": float(max(v))}
                    for c, v in dist.items() if v}  # fmt: skip

        return {
            "input": self.stages[0].input if self.stages else {},
            "kept": self.stages[-1].kept if self.stages else {},
            "stages": [stage.to_dict() for stage in self.stages],
            "fused_score": {"scored": stats(self.fused_scores), "kept": stats(self.kept_fused_scores)},
            "caption_length": {
                "input": stats(self.caption_lengths),
                "kept": stats(self.kept_caption_lengths),
            },
        }

    def summary(self) -> str:
        """One line per stage: ``stage: in -> kept`` with per-category counts."""
        lines = []
        for stage in self.stages:
            cats = ", ".join(f"{c} {n}->{stage.kept.get(c, 0)}" for c, n in stage.input.items())
            lines.append(
                f"{stage.name:18s} {sum(stage.input.values()):6d} -> {sum(stage.kept.values()):6d}  ({cats})"
            )
        return "\n".join(lines)


def curate(records: Sequence[Any], config: CurationConfig | None = None) -> tuple[list[Any], CurationReport]:
    """Classification -> caption rules -> quality fusion -> Gumbel truncation -> MinHash dedup."""
    cfg = config or CurationConfig()
    token_counts: dict[str, float] = {}

    def length(item: Any) -> float:
        caption = _get(item, "caption")
        if caption not in token_counts:
            token_counts[caption] = float(cfg.filters.count_tokens(caption))
        return token_counts[caption]

    def fused(item: Any) -> float:
        return float(_get(item, "quality")["fused"])

    items, stage = classify_categories(records, cfg.classifier, cfg.reclassify)
    stages, lengths = [stage], _by_category(items, length)
    items, stage = filter_captions(items, cfg.filters)
    stages.append(stage)
    items, stage = fuse_quality(items, cfg.fusion_keys)
    stages.append(stage)
    scored = _by_category(items, fused)
    if cfg.truncation.enabled:
        items, stage = truncate(items, cfg.truncation, cfg.seed)
        stages.append(stage)
    if cfg.dedup.enabled:
        items, stage = deduplicate(items, cfg.dedup)
        stages.append(stage)
    report = CurationReport(stages, scored, _by_category(items, fused), lengths, _by_category(items, length))
    return items, report


def save_report(report: CurationReport, out_dir: str | Path) -> dict[str, Path]:
    """Write ``report.json``, ``fused_scores.png`` and ``caption_lengths.png`` (Agg, no display)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"report": out / "report.json"}
    paths["report"].write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    plots = {
        "fused_scores": ("fused quality score", report.fused_scores, report.kept_fused_scores, "scored"),
        "caption_lengths": ("caption tokens", report.caption_lengths, report.kept_caption_lengths, "input"),
    }
    for name, (xlabel, before, after, label) in plots.items():
        cats = sorted(set(before) | set(after)) or ["none"]
        fig = Figure(figsize=(4 * len(cats), 3))
        FigureCanvasAgg(fig)
        for ax, cat in zip(np.atleast_1d(fig.subplots(1, len(cats))), cats):
            bins = np.histogram_bin_edges(before.get(cat, []) + after.get(cat, []) or [0.0], bins=20)
            ax.hist(before.get(cat, []), bins=bins, histtype="stepfilled", alpha=0.5, label=label)
            ax.hist(after.get(cat, []), bins=bins, histtype="stepfilled", alpha=0.7, label="kept")
            ax.set(title=cat, xlabel=xlabel, ylabel="items")
        fig.axes[0].legend()
        fig.subplots_adjust(left=0.08, right=0.98, bottom=0.18, top=0.88, wspace=0.3)
        paths[name] = out / f"{name}.png"
        fig.savefig(paths[name], dpi=80)
    return paths


# ---------------------------------------------------------------- JSONL manifests


class ManifestError(ValueError):
    """A manifest line that curation cannot read; the message names the line and the field."""


REQUIRED_FIELDS = ("id", "caption", "category")


def read_manifest(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSONL manifest: one object per line with ``id``, ``caption`` and ``category`` (a category
    or ``null``: classified later), optional ``quality`` (name -> number), ``audio``, ``params``, ...
    Blank lines are skipped. Raises :class:`ManifestError` naming the line number and the field."""
    items = []
    with open(path, encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, 1):
            if not line.strip():
                continue
            where = f"{path}: line {lineno}"
            try:
                item = json.loads(line)
            except json.JSONDecodeError as err:
                raise ManifestError(f"{where}: invalid JSON ({err.msg})") from None
            if not isinstance(item, dict):
                raise ManifestError(f"{where}: expected a JSON object, got {type(item).__name__}")
            for name in REQUIRED_FIELDS:
                if name not in item:
                    raise ManifestError(f"{where}: missing field '{name}'")
            if not isinstance(item["caption"], str) or not item["caption"].strip():
                raise ManifestError(f"{where}: field 'caption' must be a non-empty string")
            if item["category"] is not None and item["category"] not in CATEGORIES:
                raise ManifestError(f"{where}: field 'category' must be one of {list(CATEGORIES)} or null")
            if not isinstance(item.get("quality", {}), dict):
                raise ManifestError(f"{where}: field 'quality' must be an object of scores")
            items.append(item)
    return items


def write_manifest(items: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Write manifest dicts as JSONL (one object per line, UTF-8)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for item in items:
            handle.write(json.dumps(dict(item), ensure_ascii=False) + "\n")
    return path
