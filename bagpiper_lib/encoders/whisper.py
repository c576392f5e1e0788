"""Whisper encoder (``transformers.WhisperEncoder``) behind the Whisper log-mel front end.

Whisper's encoder only accepts exactly ``2 * max_source_positions`` mel frames (3000 = 30 s for the
released models), and its attention has no padding mask, so every output frame depends on the whole
window. We therefore reproduce the reference pipeline
(``WhisperFeatureExtractor(audio, padding="max_length")`` then the encoder)::

    wav [B, N] at 16 kHz, lengths [B] <= max_samples = 2 * max_source_positions * 160
      -> zero-pad every item to max_samples (30 s)
      -> LogMelSpectrogram(num_mel_bins) over the whole window    [B, n_mels, 2 * max_source_positions]
      -> WhisperEncoder (conv stride 2)                            [B, max_source_positions, d_model]
      -> crop to the valid frames                                  feats [B, T', d_model]

``lengths'[b] = ceil(lengths[b] / 320)``: the encoder frames (20 ms each) whose centre lies inside the
audio, i.e. ``ceil(ceil(lengths / 160) / 2)`` of the mel frames. An item featurised in a padded batch
gets exactly what it gets alone. Audio longer than ``max_samples`` is rejected with an error naming
the limit rather than chunked: chunking would hand the adaptor features with seams every 30 s that
Whisper never produced; split long audio upstream (or use ``qwen3_omni``, which has no such limit).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from bagpiper_lib.encoders.base import AudioEncoder
from bagpiper_lib.encoders.mel import LogMelSpectrogram
from bagpiper_lib.encoders.qwen3_omni import build_module, parse_dtype, read_config, save_encoder

__all__ = ["WhisperAudioEncoder", "TINY_CONFIG"]

# 2 layers, d_model 32, a 2 s window (max_source_positions 100 -> 200 mel frames); the decoder sizes
# only keep a saved config.json small, the decoder itself is never built.
TINY_CONFIG: dict[str, Any] = {
    "num_mel_bins": 80,
    "d_model": 32,
    "encoder_layers": 2,
    "encoder_attention_heads": 2,
    "encoder_ffn_dim": 64,
    "max_source_positions": 100,
    "decoder_layers": 1,
    "decoder_attention_heads": 2,
    "decoder_ffn_dim": 64,
    "max_target_positions": 32,
}

# encoder tensors in WhisperForConditionalGeneration, WhisperModel and our own save_pretrained
PREFIXES = ("model.encoder.", "encoder.", "")


class WhisperAudioEncoder(AudioEncoder):
    """Whisper encoder: ``wav [B, N]`` at 16 kHz (at most ``max_seconds``) -> ``feats [B, T', d_model]``.

    Args:
        pretrained: a directory (or hub id such as ``"openai/whisper-large-v3"``) written by
            ``WhisperModel`` / ``WhisperForConditionalGeneration.save_pretrained`` or by
            :meth:`save_pretrained`; only the encoder tensors are read.
        config: ``WhisperConfig`` keyword arguments for a random-init encoder (ignored with ``pretrained``).
        n_mels: mel bins of the front end; must equal the model's ``num_mel_bins`` (default: that).
        trainable: ``False`` (default) freezes the encoder (eval mode, no gradients). Trainable or not,
            the sinusoidal position table stays frozen, as in transformers.
        seed: RNG seed of the random init.
        local_files_only: for hub ids, read only the local Hugging Face cache (default).
        dtype: parameter dtype, e.g. ``"bfloat16"``; default float32. The mel front end stays float32.
    """

    sample_rate = 16000

    def __init__(
        self,
        pretrained: str | Path | None = None,
        config: dict[str, Any] | None = None,
        n_mels: int | None = None,
        trainable: bool = False,
        seed: int = 0,
        local_files_only: bool = True,
        dtype: str | None = None,
    ):
        super().__init__()
        from transformers import WhisperConfig
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        torch_dtype = parse_dtype(dtype)
        if pretrained is not None:
            raw = read_config(pretrained, local_files_only)
            if raw.get("model_type") != "whisper":
                raise ValueError(
                    f"config.json of pretrained={str(pretrained)!r} is not a Whisper config: "
                    f"expected model_type 'whisper', got {raw.get('model_type')!r}"
                )
            cfg = WhisperConfig.from_dict(raw)
        else:
            cfg = WhisperConfig(**(config or {}))
        self.model = build_module(
            WhisperEncoder,
            cfg,
            pretrained,
            PREFIXES,
            "conv1.weight",
            "Whisper encoder",
            local_files_only=local_files_only,
            seed=seed,
        )
        if n_mels is not None and n_mels != cfg.num_mel_bins:
            raise ValueError(
                f"n_mels={n_mels} does not match the Whisper encoder, which expects "
                f"num_mel_bins={cfg.num_mel_bins} mel bins"
            )
        self.mel = LogMelSpectrogram(cfg.num_mel_bins, sample_rate=self.sample_rate)
        self.output_dim = int(cfg.d_model)
        self.mel_frames = 2 * int(cfg.max_source_positions)  # what conv1 must see: 3000 for 30 s
        self.max_samples = self.mel_frames * self.mel.hop_length
        if torch_dtype is not None:
            self.model.to(torch_dtype)
        self.set_trainable(trainable)

    @property
    def max_seconds(self) -> float:
        """Longest accepted audio: ``2 * max_source_positions * 160 / 16000`` (30 s for Whisper)."""
        return self.max_samples / self.sample_rate

    def set_trainable(self, trainable: bool) -> WhisperAudioEncoder:
        """As :meth:`AudioEncoder.set_trainable`, keeping the fixed sinusoidal positions frozen."""
        super().set_trainable(trainable)
        self.model.embed_positions.requires_grad_(False)
        return self

    def num_frames(self, num_samples: torch.Tensor) -> torch.Tensor:
        """Encoder frames ``[B]`` for ``num_samples [B]`` (:meth:`output_lengths`)."""
        return self.output_lengths(torch.as_tensor(num_samples))

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Encoder frames ``[B]`` for ``lengths [B]`` samples: ``ceil(lengths / 320)``."""
        hop = 2 * self.mel.hop_length
        return torch.div(lengths + hop - 1, hop, rounding_mode="floor")

    def _forward(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if (lengths > self.max_samples).any():
            raise ValueError(
                f"audio too long for the Whisper encoder: lengths {lengths.tolist()} samples exceed its "
                f"maximum of {self.max_samples} samples ({self.max_seconds:g} s at {self.sample_rate} Hz, "
                f"2 * max_source_positions = {self.mel_frames} mel frames); split longer audio into "
                f"clips of at most {self.max_seconds:g} s"
            )
        wav = wav[:, : self.max_samples]
        wav = torch.nn.functional.pad(wav, (0, self.max_samples - wav.shape[-1]))
        feats, _ = self.mel(wav)  # [B, n_mels, mel_frames]: the whole zero-padded window is "valid"
        hidden = self.model(feats.to(self.dtype)).last_hidden_state  # [B, max_source_positions, D]
        out_lengths = self.output_lengths(lengths)
        hidden = hidden[:, : int(out_lengths.max())]
        valid = torch.arange(hidden.shape[1], device=hidden.device)[None] < out_lengths[:, None]
        return hidden * valid[..., None], out_lengths

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write the ``WhisperConfig`` as ``config.json`` and the encoder weights (no prefix)."""
        return save_encoder(directory, self.model.config.to_dict(), self.model)

    def extra_repr(self) -> str:
        return f"output_dim={self.output_dim}, max_seconds={self.max_seconds:g}"
