"""The audio-caption record every data source yields.

A record is one clip with its rich caption. Audio is either in memory (``audio [N]`` float, mono, at
``sample_rate``) or on disk (``path``, read lazily with ``soundfile``); ``codes`` holds codec codes
``[K, T]`` when a ``prepare`` step has pre-tokenised the clip for a given codec.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["CATEGORIES", "Record"]

CATEGORIES = ("speech", "music", "sound")


@dataclass
class Record:
    """One audio-caption pair.

    Attributes:
        id: unique id within its corpus.
        caption: the rich caption (ground truth for the synthetic corpus).
        category: ``"speech"``, ``"music"`` or ``"sound"`` (mixtures take their dominant category).
        audio: mono waveform ``[N]`` or ``None`` when only ``path`` is known.
        sample_rate: rate of ``audio`` / of the file at ``path``.
        path: audio file on disk (read on demand).
        duration: seconds.
        short_caption: a one-line caption.
        params: generation parameters (synthetic corpus) or any structured metadata.
        quality: optional quality scores (e.g. ``{"audio": 3.2, "text": 0.8, "alignment": 0.4}``).
        codes: pre-tokenised codec codes ``[K, T]`` (``prepare`` step), with ``codec`` naming the codec spec.
    """

    id: str
    caption: str
    category: str
    audio: torch.Tensor | None = None
    sample_rate: int | None = None
    path: str | None = None
    duration: float | None = None
    short_caption: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    quality: dict[str, float] = field(default_factory=dict)
    codes: torch.Tensor | None = None
    codec: str | None = None

    def __post_init__(self) -> None:
        if self.category not in CATEGORIES:
            raise ValueError(
                f"record {self.id!r}: category must be one of {list(CATEGORIES)}, got {self.category!r}"
            )
        if not isinstance(self.caption, str) or not self.caption.strip():
            raise ValueError(f"record {self.id!r}: caption is empty")
        if self.audio is not None:
            if self.audio.dim() != 1:
                raise ValueError(
                    f"record {self.id!r}: audio must be mono [N], got shape {tuple(self.audio.shape)}"
                )
            if self.sample_rate is None:
                raise ValueError(f"record {self.id!r}: audio given without sample_rate")
            if self.duration is None:
                self.duration = self.audio.shape[0] / self.sample_rate
