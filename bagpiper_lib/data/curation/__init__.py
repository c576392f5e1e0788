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

Modules, by concern (the rules and decisions of each stage are in its module's docstring):

* :mod:`.items`: item access shared by every stage and :class:`StageReport`.
* :mod:`.classify`: :class:`CategoryClassifier`, keyword and LLM classifiers, :func:`classify_categories`.
* :mod:`.filters`: the caption rules (:data:`RULES`, :class:`CaptionFilterConfig`), :func:`filter_captions`.
* :mod:`.scoring`: quality fusion (:func:`fuse_quality`) and Gumbel top-k truncation (:func:`truncate`).
* :mod:`.dedup`: :class:`DedupConfig`, :func:`caption_minhash`, :func:`deduplicate`.
* :mod:`.pipeline`: :class:`CurationConfig`, :func:`curate`, :class:`CurationReport`, :func:`save_report`.
* :mod:`.manifest`: JSONL manifests: :func:`read_manifest`, :func:`write_manifest`, :class:`ManifestError`.

Everything is re-exported here: ``from bagpiper_lib.data.curation import X`` works for every name above.
"""

from __future__ import annotations

# ``name as name``: names the old single module also offered outside ``__all__`` (recipes and tests use them)
from bagpiper_lib.data.curation.classify import DEFAULT_CLASSIFY_PROMPT as DEFAULT_CLASSIFY_PROMPT
from bagpiper_lib.data.curation.classify import (
    CategoryClassifier,
    KeywordCategoryClassifier,
    LLMCategoryClassifier,
    classify_categories,
)
from bagpiper_lib.data.curation.dedup import DedupConfig, caption_minhash, deduplicate
from bagpiper_lib.data.curation.filters import (
    RULES,
    CaptionFilterConfig,
    caption_violations,
    caption_words,
    filter_captions,
    is_incomplete,
    whitespace_token_count,
)
from bagpiper_lib.data.curation.items import StageReport
from bagpiper_lib.data.curation.items import _counts as _counts
from bagpiper_lib.data.curation.items import _get as _get
from bagpiper_lib.data.curation.manifest import REQUIRED_FIELDS as REQUIRED_FIELDS
from bagpiper_lib.data.curation.manifest import ManifestError as ManifestError
from bagpiper_lib.data.curation.manifest import read_manifest as read_manifest
from bagpiper_lib.data.curation.manifest import write_manifest as write_manifest
from bagpiper_lib.data.curation.pipeline import CurationConfig, CurationReport, curate, save_report
from bagpiper_lib.data.curation.scoring import (
    QUALITY_KEYS,
    TRUNCATION_PRESETS,
    TruncationConfig,
    fuse_quality,
    fused_scores,
    gumbel_topk,
    percentile_ranks,
    truncate,
)

__all__ = [
    "RULES", "QUALITY_KEYS", "TRUNCATION_PRESETS", "CaptionFilterConfig", "TruncationConfig",
    "DedupConfig", "CurationConfig", "StageReport", "CurationReport", "CategoryClassifier",
    "KeywordCategoryClassifier", "LLMCategoryClassifier", "caption_words", "whitespace_token_count",
    "caption_violations", "is_incomplete", "filter_captions", "percentile_ranks", "fused_scores",
    "fuse_quality", "gumbel_topk", "truncate", "caption_minhash", "deduplicate", "classify_categories",
    "curate", "save_report",
]  # fmt: skip
