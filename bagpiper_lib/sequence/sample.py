"""One built training sample: the K-stream token tensor and what travels with it.

A :class:`Sample` is what the message builder produces and what packing concatenates::

    tokens      LongTensor [T, K]  global ids (stream 0: text/special/codebook 0; stream k: codebook k)
    loss_mask   BoolTensor [T, K]  True where the token at that position is a training target
    modality    LongTensor [T]     a :class:`Modality` per position
    audio_in    list[AudioSpan]    runs of placeholder positions whose input embeddings are replaced
                                   by encoder features (``start``, ``length`` in positions)

Targets follow next-token prediction: the token at position ``t`` is predicted from positions
``< t``, so ``loss_mask[t]`` says whether predicting ``tokens[t]`` counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import IntEnum
from typing import Any

import torch

__all__ = ["Modality", "AudioSpan", "Sample"]


class Modality(IntEnum):
    """What a position holds."""

    SPECIAL = 0  # bos, role, modality and end tokens
    TEXT = 1
    THINK = 2
    AUDIO_IN = 3  # placeholder replaced by encoder features
    AUDIO_OUT = 4  # codec frames after the pattern


@dataclass
class AudioSpan:
    """A run of audio-in placeholder positions ``[start, start + length)``.

    ``audio`` is the payload the model's encoder consumes: a waveform ``[N]`` (with ``sample_rate``)
    or precomputed features ``[length, D]``; ``None`` once condition dropout removed it.
    """

    start: int
    length: int
    audio: Any = None
    sample_rate: int | None = None

    def shifted(self, offset: int) -> AudioSpan:
        return replace(self, start=self.start + offset)


@dataclass
class Sample:
    """A built sequence (see the module docstring for shapes)."""

    tokens: torch.Tensor
    loss_mask: torch.Tensor
    modality: torch.Tensor
    audio_in: list[AudioSpan] = field(default_factory=list)
    id: str = ""

    def __post_init__(self) -> None:
        if self.tokens.dim() != 2:
            raise ValueError(f"tokens must have shape [T, K], got {tuple(self.tokens.shape)}")
        if self.loss_mask.shape != self.tokens.shape:
            raise ValueError(
                f"loss_mask shape {tuple(self.loss_mask.shape)} != tokens {tuple(self.tokens.shape)}"
            )
        if self.modality.shape != self.tokens.shape[:1]:
            raise ValueError(f"modality shape {tuple(self.modality.shape)} != [T] = [{self.tokens.shape[0]}]")

    def __len__(self) -> int:
        return self.tokens.shape[0]

    @property
    def num_streams(self) -> int:
        return self.tokens.shape[1]

    @property
    def num_targets(self) -> int:
        """Stream-0 target positions (the loss normaliser)."""
        return int(self.loss_mask[:, 0].sum())
