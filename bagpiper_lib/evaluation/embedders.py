"""Pluggable embedders for distribution and similarity metrics.

Two small protocols; anything with the method is an embedder::

    AudioEmbedder.embed(wavs, sample_rate) -> Tensor [B, D]   # wavs: list of [N_i] or [B, N]
    TextEmbedder.embed(texts)              -> Tensor [B, D]

Implementations:

* :class:`EncoderAudioEmbedder` — any ``bagpiper_lib`` :class:`~bagpiper_lib.encoders.AudioEncoder`
  (an instance or a spec for ``encoders.build``), features mean-pooled over each clip's valid frames.
  This is the default audio embedder of the library.
* :class:`ClapAudioEmbedder` / :class:`ClapTextEmbedder` — a local CLAP checkpoint loaded with
  ``transformers.ClapModel`` (``local_files_only=True``); L2-normalised joint-space embeddings, so
  audio-text cosine similarity is a CLAP score.
* :class:`HashingTextEmbedder` — deterministic hashed bag of character n-grams: offline, no weights,
  for the synthetic corpus and tests.

Outputs are float32 CPU tensors. Embedders run under ``torch.no_grad()``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bagpiper_lib import encoders
from bagpiper_lib.audio import pad_waveforms, resample
from bagpiper_lib.encoders.base import AudioEncoder
from bagpiper_lib.evaluation.metrics import normalize_text

__all__ = [
    "AudioEmbedder",
    "TextEmbedder",
    "EncoderAudioEmbedder",
    "ClapAudioEmbedder",
    "ClapTextEmbedder",
    "HashingTextEmbedder",
]


@runtime_checkable
class AudioEmbedder(Protocol):
    def embed(self, wavs: Sequence[torch.Tensor] | torch.Tensor, sample_rate: int) -> torch.Tensor:
        """``wavs`` (list of ``[N_i]`` or ``[B, N]``) at ``sample_rate`` -> embeddings ``[B, D]``."""
        ...


@runtime_checkable
class TextEmbedder(Protocol):
    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """``texts`` (``B`` strings) -> embeddings ``[B, D]``."""
        ...


def _wav_list(wavs: Sequence[torch.Tensor] | torch.Tensor, name: str = "wavs") -> list[torch.Tensor]:
    """Validate waveforms and return them as a list of 1-D float CPU tensors."""
    if isinstance(wavs, np.ndarray):
        wavs = torch.from_numpy(wavs)
    if isinstance(wavs, torch.Tensor):
        if wavs.dim() == 1:
            wavs = wavs[None]
        if wavs.dim() != 2:
            raise ValueError(f"{name} as a tensor must have shape [B, N] or [N], got {tuple(wavs.shape)}")
        wavs = list(wavs)
    if isinstance(wavs, (str, bytes)) or not isinstance(wavs, Sequence):
        raise TypeError(
            f"{name} must be a list of [N] waveforms or a [B, N] tensor, got {type(wavs).__name__}"
        )
    if len(wavs) == 0:
        raise ValueError(f"{name} is empty: need at least one waveform")
    out = []
    for i, wav in enumerate(wavs):
        wav = torch.as_tensor(wav).detach().cpu()
        if wav.dim() == 2 and wav.shape[0] == 1:
            wav = wav[0]
        if wav.dim() != 1 or wav.numel() == 0:
            raise ValueError(
                f"{name}[{i}] must be a non-empty mono waveform [N], got shape {tuple(wav.shape)}"
            )
        if not wav.is_floating_point():
            raise ValueError(f"{name}[{i}] must be floating point, got dtype {wav.dtype}")
        if not torch.isfinite(wav).all():
            raise ValueError(f"{name}[{i}] contains NaN or Inf samples")
        out.append(wav.float())
    return out


def _text_list(texts: Sequence[str], name: str = "texts") -> list[str]:
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, Sequence):
        raise TypeError(f"{name} must be a str or a sequence of str, got {type(texts).__name__}")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"{name}[{i}] must be a str, got {type(text).__name__}")
    if len(texts) == 0:
        raise ValueError(f"{name} is empty: need at least one text")
    return list(texts)


def _positive_int(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


class EncoderAudioEmbedder(nn.Module):
    """Embed clips with an ``AudioEncoder``: ``feats [B, T', D]`` averaged over each clip's valid frames.

    Args:
        encoder: an ``AudioEncoder`` or a spec for ``bagpiper_lib.encoders.build``
            (``"name"`` / ``{"name": ..., "pretrained": dir}`` / ``{"name": ..., "preset": "tiny"}``).
        batch_size: clips per encoder call; a batch is zero-padded to its longest clip and the
            encoder receives the true lengths, so padding never changes an embedding.
    """

    def __init__(self, encoder: AudioEncoder | str | Mapping, batch_size: int = 8):
        super().__init__()
        if not isinstance(encoder, AudioEncoder):
            built = encoders.build(encoder)
            if not isinstance(built, AudioEncoder):
                raise TypeError(
                    f"encoder spec {encoder!r} built a {type(built).__name__}, not an AudioEncoder"
                )
            encoder = built
        self.encoder = encoder
        self.batch_size = _positive_int(batch_size, "batch_size")
        self.dim = int(encoder.output_dim)

    @torch.no_grad()
    def embed(self, wavs: Sequence[torch.Tensor] | torch.Tensor, sample_rate: int) -> torch.Tensor:
        """Clips at ``sample_rate`` (resampled by the encoder) -> mean-pooled features ``[B, D]``."""
        items = _wav_list(wavs)
        pooled = []
        for start in range(0, len(items), self.batch_size):
            chunk = items[start : start + self.batch_size]
            batch, lengths = pad_waveforms(chunk)
            feats, frames = self.encoder(batch, lengths, sample_rate=sample_rate)
            frames = frames.to(feats.device)
            if (frames <= 0).any():
                bad = start + int((frames <= 0).nonzero()[0])
                raise ValueError(f"wavs[{bad}] is too short: the encoder produced no valid frame")
            mask = torch.arange(feats.shape[1], device=feats.device)[None] < frames[:, None]
            summed = (feats.float() * mask[..., None]).sum(dim=1)
            pooled.append((summed / frames[:, None].float()).cpu())
        return torch.cat(pooled)

    forward = embed


class HashingTextEmbedder:
    """Deterministic hashed bag of character n-grams (the hashing trick), L2-normalised.

    The text is :func:`~bagpiper_lib.evaluation.metrics.normalize_text`-ed and padded with one space
    each side; every character n-gram (``n`` in ``ngram_range``) adds ``+-1`` to bucket
    ``blake2b(gram, salt=seed) mod dim`` (sign from the same digest, so collisions cancel on
    average). Stable across processes and machines (no Python ``hash``). Empty text -> zero vector.
    """

    def __init__(self, dim: int = 512, ngram_range: tuple[int, int] = (3, 5), seed: int = 0):
        self.dim = _positive_int(dim, "dim")
        lo, hi = ngram_range
        if not (isinstance(lo, int) and isinstance(hi, int) and 1 <= lo <= hi):
            raise ValueError(f"ngram_range must be (lo, hi) with 1 <= lo <= hi, got {ngram_range!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
            raise ValueError(f"seed must be an int in [0, 2**64), got {seed!r}")
        self.ngram_range = (lo, hi)
        self.seed = seed
        self._bucket = lru_cache(maxsize=65536)(self._hash)

    def _hash(self, gram: str) -> tuple[int, float]:
        digest = hashlib.blake2b(
            gram.encode("utf-8"), digest_size=8, salt=self.seed.to_bytes(8, "little")
        ).digest()
        value = int.from_bytes(digest, "little")
        return (value >> 1) % self.dim, 1.0 if value & 1 else -1.0

    def embed_one(self, text: str) -> torch.Tensor:
        vec = np.zeros(self.dim, dtype=np.float64)
        padded = f" {normalize_text(text)} "
        if padded.strip():
            lo, hi = self.ngram_range
            for n in range(lo, hi + 1):
                for i in range(len(padded) - n + 1):
                    index, sign = self._bucket(padded[i : i + n])
                    vec[index] += sign
            norm = np.linalg.norm(vec)
            if norm > 0:
                vec /= norm
        return torch.from_numpy(vec).float()

    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """``texts`` -> ``[B, dim]`` unit vectors (zero rows for texts with no characters left)."""
        return torch.stack([self.embed_one(text) for text in _text_list(texts)])


def _from_local(loader, pretrained: str | Path, what: str, **kwargs):
    """``loader.from_pretrained(pretrained, local_files_only=True)`` with an error naming the argument."""
    if not isinstance(pretrained, (str, Path)):
        raise TypeError(
            f"pretrained must be a local directory (str or Path), got {type(pretrained).__name__}"
        )
    try:
        return loader.from_pretrained(str(pretrained), local_files_only=True, **kwargs)
    except (OSError, ValueError) as err:
        raise ValueError(f"pretrained={str(pretrained)!r}: cannot load the {what} offline: {err}") from err


def _clap_model(pretrained: str | Path, device: str | torch.device):
    from transformers import ClapModel

    return _from_local(ClapModel, pretrained, "CLAP model").to(device).eval()


def _pooled(output) -> torch.Tensor:
    """transformers >= 5 returns a model output with the projection in ``pooler_output``; 4.x a tensor."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class ClapAudioEmbedder(nn.Module):
    """CLAP audio embeddings ``[B, projection_dim]`` (L2-normalised) from a local checkpoint directory.

    The directory holds a ``ClapModel`` (``config.json`` + weights) and its ``ClapFeatureExtractor``
    (``preprocessor_config.json``). Clips are resampled to the extractor's rate and cropped to its
    first ``max_length_s`` seconds here (the extractor would otherwise crop at random), so the
    embedding is deterministic; shorter clips are repeat-padded by the extractor as in CLAP.
    """

    def __init__(self, pretrained: str | Path, device: str | torch.device = "cpu", batch_size: int = 8):
        super().__init__()
        from transformers import ClapFeatureExtractor

        self.model = _clap_model(pretrained, device)
        self.feature_extractor = _from_local(ClapFeatureExtractor, pretrained, "CLAP feature extractor")
        self.sample_rate = int(self.feature_extractor.sampling_rate)
        self.max_samples = int(self.feature_extractor.nb_max_samples)
        self.batch_size = _positive_int(batch_size, "batch_size")
        self.dim = int(self.model.config.projection_dim)

    @torch.no_grad()
    def embed(self, wavs: Sequence[torch.Tensor] | torch.Tensor, sample_rate: int) -> torch.Tensor:
        items = [resample(w, sample_rate, self.sample_rate)[: self.max_samples] for w in _wav_list(wavs)]
        device = next(self.model.parameters()).device
        out = []
        for start in range(0, len(items), self.batch_size):
            chunk = [w.numpy().astype(np.float32) for w in items[start : start + self.batch_size]]
            inputs = self.feature_extractor(chunk, sampling_rate=self.sample_rate, return_tensors="pt")
            is_longer = inputs.get("is_longer")
            output = self.model.get_audio_features(
                input_features=inputs["input_features"].to(device=device, dtype=self.model.dtype),
                is_longer=None if is_longer is None else is_longer.to(device),
            )
            out.append(F.normalize(_pooled(output).float(), dim=-1).cpu())
        return torch.cat(out)

    forward = embed


class ClapTextEmbedder(nn.Module):
    """CLAP text embeddings ``[B, projection_dim]`` (L2-normalised) from a local checkpoint directory.

    The directory holds a ``ClapModel`` and a fast tokenizer loadable by ``AutoTokenizer`` (no
    remote code). Texts longer than the text tower's positions are truncated.
    """

    def __init__(self, pretrained: str | Path, device: str | torch.device = "cpu", batch_size: int = 32):
        super().__init__()
        from transformers import AutoTokenizer

        self.model = _clap_model(pretrained, device)
        self.tokenizer = _from_local(AutoTokenizer, pretrained, "CLAP tokenizer", trust_remote_code=False)
        if self.tokenizer.pad_token is None:
            raise ValueError(f"pretrained={str(pretrained)!r}: the CLAP tokenizer has no pad token")
        text_config = self.model.config.text_config
        # RoBERTa-style positions start after the padding index
        positions = text_config.max_position_embeddings - (text_config.pad_token_id or 0) - 1
        self.max_length = int(min(self.tokenizer.model_max_length, positions))
        self.batch_size = _positive_int(batch_size, "batch_size")
        self.dim = int(self.model.config.projection_dim)

    @torch.no_grad()
    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        texts = _text_list(texts)
        device = next(self.model.parameters()).device
        out = []
        for start in range(0, len(texts), self.batch_size):
            chunk = texts[start : start + self.batch_size]
            inputs = self.tokenizer(
                chunk, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
            )
            empty = (inputs["attention_mask"].sum(dim=1) == 0).nonzero().flatten().tolist()
            if empty:
                raise ValueError(f"texts[{start + empty[0]}] produced no tokens; cannot embed an empty text")
            output = self.model.get_text_features(
                input_ids=inputs["input_ids"].to(device), attention_mask=inputs["attention_mask"].to(device)
            )
            out.append(F.normalize(_pooled(output).float(), dim=-1).cpu())
        return torch.cat(out)

    forward = embed
