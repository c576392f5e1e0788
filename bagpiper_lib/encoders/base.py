"""The ``AudioEncoder`` contract: waveform -> continuous features ``[B, T', D]`` with valid lengths.

Subclasses implement :meth:`_forward` on clean mono tensors at :attr:`sample_rate`; this base class
validates input (shape, dtype, empty, NaN/Inf, lengths), down-mixes channels and resamples, so every
encoder rejects bad input with the same clear messages. Encoders are frozen by default
(``trainable=False``: eval mode, no gradients, ``train()`` keeps them in eval); ``trainable=True``
makes them ordinary trainable modules.
"""

from __future__ import annotations

import abc
from pathlib import Path

import torch
from torch import nn

from bagpiper_lib.audio import prepare_audio

__all__ = ["AudioEncoder"]


class AudioEncoder(nn.Module, abc.ABC):
    """Continuous audio encoder: ``forward(wav [B, N], lengths [B]) -> feats [B, T', D], lengths [B]``.

    Subclasses set ``sample_rate`` and ``output_dim`` in ``__init__``, call
    :meth:`set_trainable` at its end, and implement :meth:`_forward`, :meth:`num_frames` and
    :meth:`save_pretrained`.
    """

    sample_rate: int
    output_dim: int
    trainable: bool = False

    @abc.abstractmethod
    def _forward(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mono ``wav [B, N]`` at :attr:`sample_rate` (zero past ``lengths``) -> ``feats [B, T', D]``, ``[B]``."""

    @abc.abstractmethod
    def num_frames(self, num_samples: torch.Tensor) -> torch.Tensor:
        """Valid feature frames ``[B]`` for ``num_samples [B]`` valid samples at :attr:`sample_rate`.

        The sequence builder sizes audio-input placeholders with it, before any audio is encoded.
        """

    @abc.abstractmethod
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write weights and config so that ``build({"name": ..., "pretrained": directory})`` reloads them."""

    def set_trainable(self, trainable: bool) -> AudioEncoder:
        """Frozen (eval, no grad) when ``False``; a normal trainable module when ``True``."""
        self.trainable = bool(trainable)
        self.requires_grad_(self.trainable)
        return super().train(self.trainable and self.training)

    def train(self, mode: bool = True) -> AudioEncoder:
        """A frozen encoder stays in eval mode whatever the parent module asks."""
        return super().train(mode and self.trainable)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(p.dtype for p in self.parameters() if p.is_floating_point())

    def forward(
        self,
        wav: torch.Tensor,
        lengths: torch.Tensor | None = None,
        sample_rate: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode ``wav`` (``[N]``, ``[B, N]`` or ``[B, C, N]``; channels averaged) to ``feats [B, T', D]``.

        ``lengths [B]`` are valid samples of a padded batch at ``sample_rate`` (default: the encoder's
        rate, no resampling). Returns features and valid feature-frame counts ``[B]``.
        """
        wav, lengths = prepare_audio(wav, lengths, sample_rate, self.sample_rate)
        wav = wav.to(device=self.device, dtype=self.dtype)
        with torch.set_grad_enabled(self.trainable and torch.is_grad_enabled()):
            feats, out_lengths = self._forward(wav, lengths.to(wav.device))
        return feats, out_lengths.long()
