"""Quality-score fusion and Gumbel top-k soft truncation (paper §2.2.1, Figure 3, appendix C.2).

:func:`fuse_quality`: per category, the percentile rank of every present quality score
(``"audio"``, ``"text"``, ``"alignment"``), averaged into ``quality["fused"]``.
:func:`truncate`: Gumbel top-k soft truncation of the low-quality tail, per category.

Decisions:

* Percentile rank = (number below + half the number equal) / n within the category, so ties share a
  rank; items with no score at all get the neutral ``0.5`` and are counted as ``unscored``.
* Gumbel top-k keeps ``round((1 - discard) * n)`` items per category, those with the largest
  ``fused / temperature + Gumbel noise`` (seeded per category); as temperature -> 0 it is plain top-k.
"""

from __future__ import annotations

import math
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bagpiper_lib.data.curation.items import StageReport, _category, _counts, _get, _with

QUALITY_KEYS = ("audio", "text", "alignment")
# Appendix C.2: per category (sound / music / speech) temperature and share of items discarded.
TRUNCATION_PRESETS = {
    "understanding": {"temperature": {"sound": 0.3, "music": 0.3, "speech": 0.3},
                      "discard": {"sound": 0.2, "music": 0.2, "speech": 0.42}},
    "generation": {"temperature": {"sound": 0.1, "music": 0.1, "speech": 0.1},
                   "discard": {"sound": 0.2, "music": 0.2, "speech": 0.28}},
}  # fmt: skip


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
