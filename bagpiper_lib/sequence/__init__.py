"""Sequence layer: vocabulary layout, codebook patterns, message builder and packing.

``sequence.patterns`` is the registry of codebook interleaving patterns (entry-point group
``bagpiper_lib.patterns``): ``delay`` (default), ``parallel`` and ``flatten``; each is built with
``num_codebooks`` (and ``delays`` for ``delay``).
"""

from bagpiper_lib.registry import Registry
from bagpiper_lib.sequence.packing import (
    PackedBatch,
    PackingPlan,
    PackingReport,
    collate_packed,
    collate_padded,
    pack,
    plan_rows,
    truncate_sample,
)
from bagpiper_lib.sequence.patterns import CodebookPattern, DelayPattern, FlattenPattern, ParallelPattern
from bagpiper_lib.sequence.vocabulary import SPECIAL_TOKENS, Vocabulary

patterns = Registry("pattern", group="bagpiper_lib.patterns")
patterns.register("delay", DelayPattern, presets={"tiny": {"num_codebooks": 4}})
patterns.register("parallel", ParallelPattern, presets={"tiny": {"num_codebooks": 4}})
patterns.register("flatten", FlattenPattern, presets={"tiny": {"num_codebooks": 4}})

DEFAULT_PATTERN = "delay"

__all__ = [
    "patterns",
    "DEFAULT_PATTERN",
    "CodebookPattern",
    "DelayPattern",
    "FlattenPattern",
    "ParallelPattern",
    "SPECIAL_TOKENS",
    "Vocabulary",
    "PackedBatch",
    "PackingPlan",
    "PackingReport",
    "collate_packed",
    "collate_padded",
    "pack",
    "plan_rows",
    "truncate_sample",
]
