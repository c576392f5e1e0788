"""``bytes``: UTF-8 bytes as ids, a 256-id vocabulary for tiny models and tests.

``encode("é🎵")`` is the string's UTF-8 bytes, ``[195, 169, 240, 159, 142, 181]``; decoding them gives
the string back exactly for every ``str`` (no normalisation, whitespace kept). A tiny model then pays a
256-way softmax over text instead of Qwen's 151k-way one, at the cost of longer sequences.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bagpiper_lib.tokenizers.base import TextTokenizer, read_meta, write_meta

__all__ = ["ByteTokenizer"]


class ByteTokenizer(TextTokenizer):
    """One id per UTF-8 byte: ``vocab_size == 256``, id ``b`` is the byte ``b``.

    Args:
        pretrained: a directory written by :meth:`save_pretrained` (checked, nothing else to load).
    """

    name = "bytes"

    def __init__(self, pretrained: str | Path | None = None):
        if pretrained is not None:
            read_meta(pretrained, self.name)
        self.vocab_size = 256

    def _encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def _decode(self, ids: list[int]) -> str:
        return bytes(ids).decode("utf-8", errors="replace")

    def spec(self) -> dict[str, Any]:
        return {"name": self.name}

    def save_pretrained(self, directory: str | Path) -> Path:
        return write_meta(directory, self.name, {})
