"""The whole curation pipeline: :class:`CurationConfig`, :func:`curate` and its :class:`CurationReport`.

:func:`curate` chains the stages in the paper's order (classification -> caption rules -> quality
fusion -> Gumbel truncation -> MinHash dedup); :func:`save_report` writes the report and histograms.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bagpiper_lib.data.curation.classify import CategoryClassifier, classify_categories
from bagpiper_lib.data.curation.dedup import DedupConfig, deduplicate
from bagpiper_lib.data.curation.filters import CaptionFilterConfig, filter_captions
from bagpiper_lib.data.curation.items import StageReport, _category, _get
from bagpiper_lib.data.curation.scoring import QUALITY_KEYS, TruncationConfig, fuse_quality, truncate


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
