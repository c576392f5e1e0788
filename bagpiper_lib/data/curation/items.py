"""What every curation stage shares: reading and copying items, per-category counts, :class:`StageReport`.

Every stage takes a list of items, either :class:`~bagpiper_lib.data.records.Record` or manifest dicts
(``{"id", "caption", "category", "quality"?, "params"?, "audio"?, ...}``), and returns
``(kept, StageReport)`` with per-category input/kept counts. Items are never mutated: a stage that
adds a field returns updated copies.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


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
