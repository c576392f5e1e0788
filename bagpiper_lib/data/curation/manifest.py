"""JSONL manifests: the one-object-per-line files curation reads and writes."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bagpiper_lib.data.records import CATEGORIES


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
