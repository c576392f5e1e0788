"""Whisper-style log-mel front end in pure torch (no torchaudio, no librosa).

Reproduces ``transformers.WhisperFeatureExtractor`` (which Whisper and Qwen3-Omni both use) on each
item of a padded batch as if that item were featurised alone::

    wav [B, N] (16 kHz), lengths [B]
      -> per-item reflect padding of n_fft // 2 samples at both ends of the item's valid samples
      -> 400-point periodic Hann STFT, hop 160         [B, 201, N // 160 + 1]
      -> power spectrum, drop the last frame           [B, 201, N // 160]
      -> slaney mel filterbank (0 - 8 kHz)             [B, n_mels, T]
      -> log10(clamp(x, 1e-10))
      -> max(x, item_max - 8)   item_max over the item's valid frames only
      -> (x + 4) / 4                                   feats [B, n_mels, T], frames [B]

with ``T = N // hop_length`` and ``frames[b] = lengths[b] // hop_length``; feature frames past
``frames[b]`` are 0. An item needs more than ``n_fft // 2`` samples (201 at the defaults), the
shortest clip the reference's reflect padding accepts.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bagpiper_lib.audio import pad_waveforms, prepare_audio
from bagpiper_lib.encoders.base import AudioEncoder

__all__ = [
    "PITCH_CLASSES",
    "LogMelSpectrogram",
    "MelEncoder",
    "chroma_filter_bank",
    "event_starts",
    "key_profile",
    "level_bins",
    "mel_filter_bank",
    "onset_strength",
    "opening_chroma",
    "peak_energy",
    "tempogram",
]

PITCH_CLASSES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
CHROMA_MAX_HZ = 5000.0  # top of the chroma bank: above it partials are weak and inharmonic
TEMPOGRAM_LAGS = range(10, 65)  # frames at 100 per second: beat periods of 0.10-0.64 s (94-600 per minute)
KEY_TEMPERATURE = 0.1  # MelEncoder's key_profile: a distribution over the 24 keys (see key_profile)
CONTEXT_FRAMES = 100  # half-width of the tempogram / key-profile window: +-1 s around each frame
OPENING_FRAMES = 15  # opening_chroma: the first 0.15 s of sound (shorter than an eighth note at 150 BPM)
OPENING_DB = 30.0  # opening_chroma: the sound begins at the first frame within 30 dB of the loudest
EVENT_DB = 20.0  # event_starts: an event is within 20 dB of the loudest frame (or half-way up from the floor)
LEVEL_BINS_DB = tuple(range(-60, 0, 6))  # MelEncoder's level_bins: centres in dBFS, 6 dB apart
LEVEL_BIN_WIDTH_DB = 6.0  # level_bins: the Gaussian's standard deviation
EVENT_COUNT_MAX = 4  # MelEncoder's event_count: one-hot over 0, 1, 2, 3 and 4 or more events
EVENT_HYSTERESIS_DB = 6.0  # event_starts: it ends only 6 dB under that, so a wobble is not a new event
# Krumhansl-Kessler probe-tone profiles, C major and C minor (C, C#, ..., B): how well each pitch class
# fits the key, the standard templates of MIR key finding.
KEY_PROFILES = {
    "major": (6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88),
    "minor": (6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17),
}


def _hertz_to_mel(freq: np.ndarray) -> np.ndarray:
    """Slaney mel scale: linear below 1 kHz, logarithmic above."""
    mels = 3.0 * freq / 200.0
    log_region = freq >= 1000.0
    mels[log_region] = 15.0 + np.log(freq[log_region] / 1000.0) * (27.0 / np.log(6.4))
    return mels


def _mel_to_hertz(mels: np.ndarray) -> np.ndarray:
    freq = 200.0 * mels / 3.0
    log_region = mels >= 15.0
    freq[log_region] = 1000.0 * np.exp((np.log(6.4) / 27.0) * (mels[log_region] - 15.0))
    return freq


def mel_filter_bank(
    n_freqs: int, n_mels: int, sample_rate: int, f_min: float = 0.0, f_max: float = 8000.0
) -> np.ndarray:
    """Slaney-normalised triangular filters on the slaney mel scale, ``[n_freqs, n_mels]`` float64.

    Equal to ``transformers.audio_utils.mel_filter_bank(n_freqs, n_mels, f_min, f_max, sample_rate,
    norm="slaney", mel_scale="slaney")``: filter edges are equally spaced in mel, the FFT bins are
    ``linspace(0, sample_rate // 2, n_freqs)`` Hz and each filter is divided by half its bandwidth.
    """
    mel_edges = np.linspace(
        _hertz_to_mel(np.array([f_min]))[0], _hertz_to_mel(np.array([f_max]))[0], n_mels + 2
    )
    edges = _mel_to_hertz(mel_edges)  # [n_mels + 2] Hz
    fft_freqs = np.linspace(0, sample_rate // 2, n_freqs)
    slopes = edges[None, :] - fft_freqs[:, None]  # [n_freqs, n_mels + 2]
    widths = np.diff(edges)
    down = -slopes[:, :-2] / widths[:-1]
    up = slopes[:, 2:] / widths[1:]
    filters = np.maximum(0.0, np.minimum(down, up))
    return filters * (2.0 / (edges[2 : n_mels + 2] - edges[:n_mels]))[None, :]


def chroma_filter_bank(
    n_fft: int, sample_rate: int, f_min: float = 27.5, f_max: float = CHROMA_MAX_HZ, width: float = 0.5
) -> np.ndarray:
    """Pitch-class weights of the one-sided FFT bins, ``[12, n_fft // 2 + 1]`` float64 (row 0 = C).

    Bin ``f`` Hz sits at ``p = 69 + 12 log2(f / 440)`` semitones; its weight for pitch class ``c`` is a
    Gaussian of the circular distance ``((p - c + 6) mod 12) - 6`` with standard deviation ``width``
    semitones, as chroma features fold every octave onto 12 classes. Only bins in ``[f_min, f_max]``
    that resolve a semitone count: at ``f < spacing / (2 ** (1 / 12) - 1)`` Hz neighbouring bins are
    more than a semitone apart (262 Hz for a 1024-point FFT at 16 kHz), so a low note enters through
    its harmonics. Every other column is 0.
    """
    spacing = sample_rate / n_fft
    freqs = np.arange(n_fft // 2 + 1) * spacing
    low = max(float(f_min), spacing / (2.0 ** (1.0 / 12.0) - 1.0))
    used = (freqs >= low) & (freqs <= f_max)
    bank = np.zeros((12, freqs.shape[0]))
    pitch = 69.0 + 12.0 * np.log2(freqs[used] / 440.0)
    for c in range(12):
        distance = np.mod(pitch - c + 6.0, 12.0) - 6.0
        bank[c, used] = np.exp(-0.5 * (distance / width) ** 2)
    return bank


class LogMelSpectrogram(nn.Module):
    """Whisper log-mel features: ``forward(wav [B, N], lengths [B]) -> feats [B, n_mels, T], frames [B]``.

    Args:
        n_mels: mel bins; 80 (Whisper up to large-v2) or 128 (Whisper large-v3, Qwen3-Omni).
        sample_rate: audio rate in Hz (the reference uses 16000).
        n_fft: STFT size and Hann window length.
        hop_length: samples between frames.
        f_max: top edge of the filterbank in Hz (8000 in the reference, whatever the sample rate).

    The window and filters are non-persistent float32 buffers: they follow ``.to(device)``, stay out
    of the state dict and stay float32 when the module is cast to a lower precision; features are
    always computed and returned in float32.
    """

    window: torch.Tensor
    filters: torch.Tensor
    chroma_filters: torch.Tensor

    def __init__(
        self,
        n_mels: int = 80,
        sample_rate: int = 16000,
        n_fft: int = 400,
        hop_length: int = 160,
        f_max: float = 8000.0,
    ):
        super().__init__()
        for name, value in (("n_mels", n_mels), ("sample_rate", sample_rate), ("n_fft", n_fft)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(hop_length, int) or not 0 < hop_length <= n_fft:
            raise ValueError(f"hop_length must be an integer in [1, n_fft={n_fft}], got {hop_length!r}")
        if not 0 < f_max <= sample_rate / 2:
            raise ValueError(f"f_max must lie in (0, sample_rate / 2 = {sample_rate / 2}] Hz, got {f_max!r}")
        self.n_mels = n_mels
        self.sample_rate = sample_rate
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.f_max = float(f_max)
        self.register_buffer("window", self._make_window(), persistent=False)
        # one-sided Parseval: mean square of the windowed frame = 2 sum|X|^2 / (n_fft sum w^2); a
        # constant of the window, kept as a float so no forward pays a device-to-host read for it
        self._energy_norm = 2.0 / (n_fft * float(self.window.pow(2).sum()))
        self.register_buffer("filters", self._make_filters(), persistent=False)
        self.register_buffer("chroma_filters", self._make_chroma_filters(), persistent=False)
        # whether some FFT bin below CHROMA_MAX_HZ is less than a semitone from its neighbour
        self.resolves_pitch_classes = bool(self.chroma_filters.any())

    @property
    def min_samples(self) -> int:
        """Shortest valid item in samples: the reflect padding needs more than ``n_fft // 2``."""
        return self.n_fft // 2 + 1

    def _make_window(self) -> torch.Tensor:
        return torch.hann_window(self.n_fft, periodic=True, dtype=torch.float32)

    def _make_filters(self) -> torch.Tensor:
        bank = mel_filter_bank(self.n_fft // 2 + 1, self.n_mels, self.sample_rate, 0.0, self.f_max)
        return torch.from_numpy(bank.T.copy()).to(torch.float32)  # [n_mels, n_freqs]

    def _make_chroma_filters(self) -> torch.Tensor:
        bank = chroma_filter_bank(
            self.n_fft, self.sample_rate, f_max=min(CHROMA_MAX_HZ, self.sample_rate / 2)
        )
        return torch.from_numpy(bank).to(torch.float32)  # [12, n_freqs]

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        # a cast to half precision: rebuilt exactly
        self.window, self.filters, self.chroma_filters = self._float_buffers()
        return self

    def _float_buffers(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The window and filter banks in exact float32. A strategy may cast buffers to half precision
        behind ``_apply`` (FSDP mixed precision sets them directly): then they are rebuilt."""
        buffers = (self.window, self.filters, self.chroma_filters)
        if all(b.dtype == torch.float32 for b in buffers):
            return buffers
        device = self.window.device
        return tuple(
            make().to(device) for make in (self._make_window, self._make_filters, self._make_chroma_filters)
        )

    def num_frames(self, lengths: torch.Tensor) -> torch.Tensor:
        """Valid feature frames for ``lengths`` samples: ``lengths // hop_length``."""
        return torch.div(lengths, self.hop_length, rounding_mode="floor")

    def forward(
        self,
        wav: torch.Tensor,
        lengths: torch.Tensor | None = None,
        *,
        with_energy: bool = False,
        with_chroma: bool = False,
    ) -> tuple[torch.Tensor, ...]:
        """Log-mel features of ``wav [B, N]`` (or ``[N]``) with valid sample counts ``lengths [B]``.

        Returns ``feats [B, n_mels, N // hop_length]`` float32 and ``frames [B]`` long. Item ``b``
        equals ``WhisperFeatureExtractor(feature_size=n_mels)`` of ``wav[b, :lengths[b]]`` alone
        (no padding to 30 s) on its ``frames[b]`` frames; later frames are 0.

        ``with_energy=True`` also returns ``energy [B, T]``: each frame's log power on the features'
        scale. The power is the mean square of the Hann-windowed frame, normalised so that a full-scale
        sine reads 0.5 (``10 ** (dBFS RMS / 10)`` by Parseval over the one-sided spectrum). It takes
        ``log10``, the floor ``item_max - 8`` and ``(x + 4) / 4`` as the mel bins do, so a frame at
        -20 dBFS RMS reads ``(-2 + 4) / 4 = 0.5``. The mel bins alone do not give a frame's loudness
        linearly: a tone puts its power in one bin, noise spreads it over all of them.

        ``with_chroma=True`` also returns ``chroma [B, 12, T]`` (after ``energy`` when both are asked):
        the power spectrum folded onto the 12 pitch classes C, C#, ..., B by :func:`chroma_filter_bank`,
        each frame divided by its largest class, so values lie in ``[0, 1]`` whatever the gain, as in
        MIR key and chord estimation. A frame whose pitch-class power is more than 60 dB under the
        item's loudest frame (silence or near-silence, where the ratio would be noise) reads 0, as do
        frames past the end.
        """
        if not isinstance(wav, torch.Tensor) or wav.dim() not in (1, 2) or not wav.is_floating_point():
            raise ValueError(
                f"wav must be a floating-point tensor of shape [B, N] or [N], got "
                f"{getattr(wav, 'dtype', type(wav).__name__)} {tuple(getattr(wav, 'shape', ()))}"
            )
        if wav.dim() == 1:
            wav = wav[None]
        batch, n = wav.shape
        if lengths is None:
            lengths = torch.full((batch,), n, dtype=torch.long, device=wav.device)
        lengths = torch.as_tensor(lengths, device=wav.device).long()
        if lengths.shape != (batch,) or (lengths > n).any():
            raise ValueError(
                f"lengths must be [B] = [{batch}] counts of at most N = {n}, got {lengths.tolist()}"
            )
        if (lengths < self.min_samples).any():
            raise ValueError(
                f"audio too short for the log-mel front end: lengths {lengths.tolist()} samples, need at "
                f"least n_fft // 2 + 1 = {self.min_samples} samples per item"
            )
        pad = self.n_fft // 2
        # reflect each item about its own first and last valid sample, as torch.stft(center=True) does
        # for the item alone; positions far past the item are clamped (they only feed invalid frames)
        pos = torch.arange(-pad, n + pad, device=wav.device).abs()[None].expand(batch, -1)
        last = (lengths - 1)[:, None]
        pos = torch.where(pos > last, 2 * last - pos, pos).clamp(0, n - 1)
        padded = wav.float().gather(1, pos)  # [B, N + n_fft]
        window, filters, chroma_filters = self._float_buffers()
        stft = torch.stft(
            padded, self.n_fft, self.hop_length, window=window, center=False, return_complex=True
        )
        power = stft[..., :-1].abs().pow(2)  # [B, n_freqs, T]: drop the last frame
        frames = self.num_frames(lengths)
        valid = _frame_mask(frames, power.shape[-1])  # [B, T]
        log_spec = torch.matmul(filters, power).clamp(min=1e-10).log10()  # [B, n_mels, T]
        feats = self._scale(log_spec, valid[:, None])
        out = [feats, frames]
        if with_energy:
            log_energy = (power.sum(dim=1) * self._energy_norm).clamp(min=1e-10).log10()  # [B, T]
            out.append(self._scale(log_energy, valid))
        if with_chroma:
            if not self.resolves_pitch_classes:
                raise ValueError(
                    f"n_fft={self.n_fft} at {self.sample_rate} Hz resolves no semitone below {CHROMA_MAX_HZ / 1000:g} kHz; "
                    "chroma needs a longer window (e.g. n_fft=1024)"
                )
            out.append(self._chroma(power, valid, chroma_filters))
        return tuple(out)

    @staticmethod
    def _chroma(power: torch.Tensor, valid: torch.Tensor, chroma_filters: torch.Tensor) -> torch.Tensor:
        classes = torch.matmul(chroma_filters, power)  # [B, 12, T]
        peak = classes.amax(dim=1)  # [B, T]
        item_max = peak.masked_fill(~valid, 0.0).amax(dim=1, keepdim=True)  # [B, 1]
        heard = valid & (peak > 1e-6 * item_max) & (peak > 0)
        return torch.where(heard[:, None], classes / peak.clamp(min=1e-30)[:, None], 0.0)

    @staticmethod
    def _scale(log_power: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Whisper's dynamic range and scaling: floor at the item's max - 8, ``(x + 4) / 4``, 0 past the end."""
        dims = tuple(range(1, log_power.dim()))
        item_max = log_power.masked_fill(~valid, float("-inf")).amax(dim=dims, keepdim=True)
        return (torch.maximum(log_power, item_max - 8.0) + 4.0) / 4.0 * valid

    def extra_repr(self) -> str:
        return (
            f"n_mels={self.n_mels}, sample_rate={self.sample_rate}, n_fft={self.n_fft}, "
            f"hop_length={self.hop_length}, f_max={self.f_max:g}"
        )


def _frame_mask(frames: torch.Tensor, steps: int) -> torch.Tensor:
    """``[B, steps]`` bool: frame ``t`` of item ``b`` is valid (``t < frames[b]``)."""
    return torch.arange(steps, device=frames.device)[None] < frames[:, None]


def onset_strength(feats: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """Spectral flux ``[B, T]`` of log-mel ``feats [B, n_mels, T]`` with ``frames [B]`` valid frames.

    Frame ``t`` holds the mean over bins of ``max(0, feats[:, t] - feats[:, t - 1])``: how much the
    spectrum rose since the previous frame, on the features' scale (1 = 40 dB). Frame 0 and frames past
    an item's end are 0. On log features it does not depend on the clip's gain (above the floor), and
    a sustained or decaying note adds nothing after its attack.
    """
    rise = (feats[..., 1:] - feats[..., :-1]).clamp(min=0.0).mean(dim=1)  # [B, T - 1]
    flux = torch.nn.functional.pad(rise, (1, 0))
    valid = _frame_mask(frames, flux.shape[-1])
    return flux * valid


def _window_sum(x: torch.Tensor, half: int) -> torch.Tensor:
    """Sum of ``x [..., T]`` over frames ``t - half .. t + half`` (clipped to ``0 .. T - 1``) at each ``t``."""
    steps = x.shape[-1]
    total = torch.nn.functional.pad(x.cumsum(dim=-1), (1, 0))  # [..., T + 1]
    t = torch.arange(steps, device=x.device)
    return total[..., (t + half + 1).clamp(max=steps)] - total[..., (t - half).clamp(min=0)]


def tempogram(
    flux: torch.Tensor, frames: torch.Tensor, lags: range = TEMPOGRAM_LAGS, half: int = CONTEXT_FRAMES
) -> torch.Tensor:
    """Local autocorrelation ``[B, len(lags), T]`` of an onset envelope ``flux [B, T]`` (:func:`onset_strength`).

    Entry ``(b, l, t)`` is ``sum_k o[k] o[k + lag_l] / sum_k o[k]^2`` over the frames ``k`` within
    ``half`` frames of ``t`` (``o = flux[b]``, 0 past the item's ``frames[b]``): near 1 where onsets
    recur every ``lag_l`` frames around ``t``, near 0 where they do not. A steady pulse peaks at its
    period and its multiples, so the tempo is one clip-level pattern that every frame carries, where
    the flux alone gives it only as the spacing between single-frame peaks. Frames past the end, and
    windows without onsets, read 0.
    """
    steps = flux.shape[-1]
    valid = _frame_mask(frames, steps)
    o = flux * valid
    shifted = torch.stack(
        [
            torch.nn.functional.pad(o[:, lag:], (0, lag)) if lag < steps else torch.zeros_like(o)
            for lag in lags
        ],
        dim=1,
    )  # [B, L, T]: o[k + lag]
    num = _window_sum(o[:, None] * shifted, half)
    energy = _window_sum(o.pow(2), half)[:, None]
    heard = (energy > 1e-8) & valid[:, None]
    return torch.where(heard, num / energy.clamp(min=1e-8), 0.0)


def peak_energy(energy: torch.Tensor, frames: torch.Tensor, half: int = CONTEXT_FRAMES) -> torch.Tensor:
    """The loudest frame ``[B, T]`` of ``energy [B, T]`` (:meth:`LogMelSpectrogram.forward` ``with_energy``)
    within ``half`` frames of each frame; frames past the item's ``frames[b]`` read 0 and are not
    counted. A short event's level shows in the few frames it fills; this puts it in every frame
    around it, as a clip's stated loudness is the level of its loudest moment.
    """
    steps = energy.shape[-1]
    valid = _frame_mask(frames, steps)
    masked = torch.nn.functional.pad(
        energy.masked_fill(~valid, float("-inf")), (half, half), value=float("-inf")
    )
    peak = torch.nn.functional.max_pool1d(masked[:, None], 2 * half + 1, stride=1)[:, 0]  # [B, T]
    return torch.where(valid, peak, 0.0)


def event_starts(
    energy: torch.Tensor,
    frames: torch.Tensor,
    level_db: float = EVENT_DB,
    hysteresis_db: float = EVENT_HYSTERESIS_DB,
) -> torch.Tensor:
    """Where sound events begin: ``[B, T]`` bool, true at the first frame of each event.

    ``energy [B, T]`` is :meth:`LogMelSpectrogram.forward`'s (its scale reads 40 dB as 1). Per item,
    over its ``frames[b]`` valid frames, an event is a run of frames at or above
    ``peak - min(level_db, (peak - floor) / 2)`` (``peak`` the loudest frame, ``floor`` the 10th
    percentile: the background), and it ends when the energy falls ``hysteresis_db`` under that, so a
    loud event's own wobble does not count twice while a background between events resets it. Events
    of one clip then count alike whatever their kind (a 3 ms click, a swept tone, a decaying thud),
    which the mel bins show only as a pattern across frames.
    """
    steps = energy.shape[-1]
    valid = _frame_mask(frames, steps)
    level = energy.masked_fill(~valid, float("inf"))
    ordered = level.sort(dim=1).values
    floor = ordered.gather(1, ((frames.clamp(min=1) - 1) // 10)[:, None])  # the 10th percentile
    peak = energy.masked_fill(~valid, float("-inf")).amax(dim=1, keepdim=True)
    up = peak - torch.minimum(torch.full_like(peak, level_db / 40.0), (peak - floor) / 2)
    state = torch.where(energy >= up, 1, torch.where(energy < up - hysteresis_db / 40.0, -1, 0)) * valid
    # each frame's last decided state (above, or under the hysteresis), carried over undecided frames
    t = torch.arange(steps, device=energy.device).expand_as(state)
    last = torch.where(state != 0, t, -1).cummax(dim=1).values  # [B, T]
    before = torch.nn.functional.pad(last[:, :-1], (1, 0), value=-1)
    previous = torch.where(before >= 0, state.gather(1, before.clamp(min=0)), -1)
    return (state == 1) & (previous != 1) & valid


def _count_one_hot(counts: torch.Tensor) -> torch.Tensor:
    """Event counts ``[B, T]`` (float) one-hot ``[B, EVENT_COUNT_MAX + 1, T]``: 0, 1, ..., and the last
    entry for ``EVENT_COUNT_MAX`` or more."""
    index = counts.round().long().clamp(max=EVENT_COUNT_MAX)
    return torch.nn.functional.one_hot(index, EVENT_COUNT_MAX + 1).to(counts.dtype).transpose(1, 2)


def level_bins(energy: torch.Tensor) -> torch.Tensor:
    """A level ``energy [B, T]`` (:meth:`LogMelSpectrogram.forward`'s scale, e.g. :func:`peak_energy`) in
    soft bins ``[B, len(LEVEL_BINS_DB), T]``: ``exp(-((L - c) / LEVEL_BIN_WIDTH_DB) ** 2 / 2)`` for each
    centre ``c`` of ``LEVEL_BINS_DB`` (-60, -54, ..., -6 dBFS), where ``L = 40 * energy - 40`` is the
    frame's power in dB against a full-scale sine (the scale reads -20 dB as 0.5). A level on a centre
    reads 1 there and 0.61 one bin away. As one number the level has to be cut into classes by the
    model; in bins, a class is a sum of a few entries, which a linear layer reads.
    """
    level = 40.0 * energy - 40.0
    centres = torch.tensor(LEVEL_BINS_DB, dtype=energy.dtype, device=energy.device)[None, :, None]
    return torch.exp(-0.5 * ((level[:, None] - centres) / LEVEL_BIN_WIDTH_DB) ** 2)


def opening_chroma(
    chroma: torch.Tensor, energy: torch.Tensor, frames: torch.Tensor, span: int = OPENING_FRAMES
) -> torch.Tensor:
    """Mean pitch classes ``[B, 12]`` of each item's opening: ``span`` frames from where its sound begins.

    ``chroma [B, 12, T]`` and ``energy [B, T]`` are :meth:`LogMelSpectrogram.forward`'s (``energy`` on
    its scale, where 30 dB is 0.75). The sound begins at the first of the item's ``frames[b]`` valid
    frames whose energy is within ``OPENING_DB`` of its loudest frame, so leading silence or a faint
    lead-in does not count; frames past the item's end are not counted either. A melody or a
    progression often opens on its tonic (the synthetic corpus always does): the opening is evidence for
    the key that the pitch classes of the whole passage, shared by a major key and its relative minor,
    do not give (see :func:`key_profile` ``opening``).
    """
    if not isinstance(span, int) or isinstance(span, bool) or span < 1:
        raise ValueError(f"span must be a positive number of frames, got {span!r}")
    steps = chroma.shape[-1]
    valid = _frame_mask(frames, steps)
    level = energy.masked_fill(~valid, float("-inf"))
    loud = valid & (level >= level.amax(dim=1, keepdim=True) - OPENING_DB / 40.0)
    start = loud.to(torch.uint8).argmax(dim=1, keepdim=True)  # the first loud frame
    t = torch.arange(steps, device=chroma.device)[None]
    inside = (valid & (t >= start) & (t < start + span)).to(chroma.dtype)  # [B, T]
    return (chroma * inside[:, None]).sum(dim=-1) / inside.sum(dim=-1, keepdim=True).clamp(min=1.0)


def _key_correlations(mean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pearson correlations ``[B, 24, T]`` of pitch-class profiles ``mean [B, 12, T]`` with the 24 keys
    (rows 0-11 major, 12-23 minor, each from C up), and each profile's centred norm ``[B, 1, T]``."""
    centred = mean - mean.mean(dim=1, keepdim=True)
    norm = centred.norm(dim=1, keepdim=True)
    profiles = torch.tensor(
        [KEY_PROFILES[mode] for mode in ("major", "minor")], dtype=mean.dtype, device=mean.device
    )
    rows = torch.stack([profiles.roll(k, dims=1) for k in range(12)], dim=1).reshape(24, 12)  # mode-major
    rows = rows - rows.mean(dim=1, keepdim=True)
    rows = rows / rows.norm(dim=1, keepdim=True)
    return torch.einsum("kc,bct->bkt", rows, centred / norm.clamp(min=1e-8)), norm


def key_profile(
    chroma: torch.Tensor,
    frames: torch.Tensor,
    half: int = CONTEXT_FRAMES,
    temperature: float | None = None,
    *,
    opening: torch.Tensor | None = None,
    opening_weight: float = 0.5,
) -> torch.Tensor:
    """Correlation ``[B, 24, T]`` of the mean chroma around each frame with the 24 key profiles.

    ``chroma [B, 12, T]`` (:meth:`LogMelSpectrogram.forward` ``with_chroma``) is averaged over the
    valid frames within ``half`` frames of ``t``, then correlated (Pearson) with the
    Krumhansl-Kessler profile of each key: rows 0-11 are C major, C# major, ..., B major, rows 12-23
    C minor, ..., B minor. Key and mode are relations between the notes of a passage (which pitch
    classes sound, against the tonic); this puts that context in every frame, as Krumhansl-Schmuckler
    key finding does for a whole piece. Frames past the end, and windows without pitch, read 0.

    With ``opening [B, 12]`` (:func:`opening_chroma`), ``opening_weight`` times the opening's own
    correlations are added in every frame: the tonic the passage opens on then separates a major key
    from its relative minor, which share their pitch classes. On 600 held-out synthetic music clips
    of 1-1.5 s, whole-clip key finding goes from key 73 % / mode 86 % to 89 % / 92 % at weight 0.5.

    With a ``temperature``, each frame's 24 correlations become a distribution over the keys
    (``softmax(corr / temperature)``): the tonic (two rows) and the mode (twelve rows) are then sums
    of entries, which a linear layer reads, where from the correlations they are a maximum over rows.
    """
    steps = chroma.shape[-1]
    valid = _frame_mask(frames, steps).to(chroma.dtype)
    mean = _window_sum(chroma * valid[:, None], half) / _window_sum(valid, half).clamp(min=1.0)[:, None]
    corr, norm = _key_correlations(mean)
    if opening is not None:
        if opening.shape != (chroma.shape[0], 12):
            raise ValueError(
                f"opening must be [B, 12] = [{chroma.shape[0]}, 12] pitch classes, got {tuple(opening.shape)}"
            )
        opened, opened_norm = _key_correlations(opening.to(chroma.dtype)[..., None])
        corr = corr + opening_weight * torch.where(opened_norm > 1e-6, opened, 0.0)
    if temperature is not None:
        corr = torch.softmax(corr / temperature, dim=1)
    return torch.where((norm > 1e-6) & (valid[:, None] > 0), corr, 0.0)


class MelEncoder(AudioEncoder):
    """Log-mel frames as the audio features, with a learnable per-bin affine (``scale * x + shift``).

    No network: the features are :class:`LogMelSpectrogram` frames (100 per second at 16 kHz), which
    already carry pitch, timbre and loudness. It is the baseline of encoder ablations (what does a
    pretrained tower add over the spectrum?) and the CPU demo's encoder, where a randomly initialised
    transformer tower would first have to learn what the spectrum shows. Pair it with a stacking
    adaptor (``{"name": "mlp", "downsample": 4}``) to bring the rate down to 25 frames per second.

    Args:
        pretrained: a directory written by :meth:`save_pretrained` (``config.json`` + safetensors).
        n_mels: mel bins (the feature size, ``output_dim``).
        n_fft: STFT size and window in samples (400 = 25 ms, Whisper's). A longer window resolves
            musical pitch: at 400 the FFT bins are 40 Hz apart, a semitone at 262 Hz is 16 Hz; at 2048
            they are 7.8 Hz apart. The hop stays 160 samples (100 frames per second).
        max_seconds: longest clip accepted (longer audio fails with a clear error).
        log_energy: append each frame's log power (:meth:`LogMelSpectrogram.forward` ``with_energy``)
            as one more feature, ``output_dim = n_mels + 1``, as speech front ends add log energy to
            filterbank or cepstral features. The mel bins give loudness only through their sum, which
            differs between a tone and noise of the same level.
        onset_strength: append each frame's spectral flux (:func:`onset_strength`: the mean rise of the
            log-mel bins since the previous frame) as one more feature after the log energy. Note
            onsets become single-frame peaks whatever the level, so averaging the feature over a clip
            counts onsets per second: the tempo of an eighth-note pulse.
        chroma: append each frame's 12 pitch classes (:meth:`LogMelSpectrogram.forward`
            ``with_chroma``: the spectrum folded onto C, C#, ..., B, peak-normalised) after the other
            extras, ``output_dim += 12``. The same key reads the same in every octave and on every
            instrument, which the mel bins (23 Hz apart below 1 kHz, where a semitone is 8-60 Hz) do not
            show directly; key and mode are read from pitch classes against the tonic. Only bins that
            resolve a semitone count: above 262 Hz at ``n_fft=1024``, above 672 Hz at 400, so a short
            window reads pitch classes from a note's upper partials only.
        tempogram: append each frame's local tempogram (:func:`tempogram`: the autocorrelation of the
            spectral flux within +-1 s, at beat periods of 0.10-0.64 s), ``output_dim += 55``. The
            flux marks onsets; the tempogram says how often they recur, in every frame.
        key_profile: append how well the mean chroma within +-1 s fits each of the 24 major and minor
            keys (:func:`key_profile`: the Krumhansl-Kessler correlations as a distribution,
            ``softmax(corr / KEY_TEMPERATURE)``), ``output_dim += 24``. It reads the chroma, which
            need not be appended itself (``chroma: false``); a long window (``n_fft=1024``) reads it
            from the fundamentals up, a short one from the upper partials only.
        key_opening_weight: add this many times the key correlations of the clip's opening
            (:func:`opening_chroma`: its first 0.15 s of sound) to every frame's before the softmax
            (:func:`key_profile` ``opening``; default 0: off; needs ``key_profile``). A short melody
            that opens on its tonic is then told from its relative major or minor, which shares its
            pitch classes. The opening is one per clip, so this suits clips of a few seconds (the
            demo's), not a long recording whose first note says little of a later passage.
        peak_energy: append the loudest frame's log power within +-1 s (:func:`peak_energy`),
            ``output_dim += 1``: the level of a short event in every frame around it.
        key_mode: append the mode as a distribution, ``output_dim += 2``: the key distribution's mass
            on the 12 major keys and on the 12 minor ones (summing to 1; both 0 without pitch). They
            are sums of the key profile's entries, which a linear layer could form, but the demo's
            tiny LM, trained for minutes, read the mode from the 24 entries for 62-70 % of held-out
            music clips and from these two for 87-92 %. Needs ``key_profile``.
        event_count: append how many sound events begin within +-1 s (:func:`event_starts`: rises of
            the frame energy to within 20 dB of the clip's loudest), one-hot over 0, 1, 2, 3 and
            ``EVENT_COUNT_MAX`` (4) or more, ``output_dim += 5``. A tower trained on sound events tells
            one event from two; the log-mel frames show each event, and the count only across them.
            The demo's LM named the count of held-out sound clips for 43-51 % from the mel frames,
            62 % from the count as one number and 61-76 % from it one-hot (seven runs).
        event_index: append which event each frame belongs to: how many events have begun up to and
            including it (:func:`event_starts`), one-hot over 0 (before the first), 1, 2, 3 and
            ``EVENT_COUNT_MAX`` (4) or more, ``output_dim += 5``. A caption lists events in order; this
            marks the frames of the first, second and third, so the LM finds the k-th event where it
            would otherwise have to count the onsets before it.
        level_bins: append the loudest frame's level within +-1 s (:func:`peak_energy`) in soft 6 dB
            bins (:func:`level_bins`: centres -60 to -6 dBFS), ``output_dim += 10``. The demo's LM named
            the loudness of held-out sound clips (-30, -21 or -12 dBFS) for 70-79 % from the level as
            one number (``peak_energy``) and for 94-98 % from the bins (five runs).
        chroma_n_fft: the window of the pitch classes (``chroma`` and ``key_profile``) when it should
            differ from ``n_fft`` (default: ``n_fft``). At 2048 samples (128 ms) a semitone is resolved
            from 131 Hz up, so low notes count by their fundamentals, while the mel bins keep the
            shorter window's timing. Items must then be longer than ``chroma_n_fft // 2`` samples.
        trainable: train the affine (default ``True``: it is cheap and starts as the identity, or as
            the normalisation :meth:`standardize` sets from a corpus).

    The extras are appended after the mel bins in this order: log energy, onset strength, chroma,
    tempogram, key profile, peak energy, key mode, level bins, event count, event index (each only when
    on).
    """

    sample_rate = 16000

    def __init__(
        self,
        pretrained: str | Path | None = None,
        *,
        n_mels: int = 80,
        n_fft: int = 400,
        max_seconds: float = 30.0,
        log_energy: bool = False,
        onset_strength: bool = False,
        chroma: bool = False,
        tempogram: bool = False,
        key_profile: bool = False,
        peak_energy: bool = False,
        chroma_n_fft: int | None = None,
        key_opening_weight: float = 0.0,
        key_mode: bool = False,
        event_count: bool = False,
        level_bins: bool = False,
        event_index: bool = False,
        trainable: bool = True,
    ):
        super().__init__()
        if pretrained is not None:
            directory = Path(pretrained)
            if not (directory / "config.json").is_file():
                raise FileNotFoundError(
                    f"pretrained={str(pretrained)!r} is not a directory with config.json (written by "
                    "MelEncoder.save_pretrained)"
                )
            saved = json.loads((directory / "config.json").read_text())
            n_mels, max_seconds = int(saved["n_mels"]), float(saved["max_seconds"])
            n_fft = int(saved.get("n_fft", 400))
            log_energy = bool(saved.get("log_energy", False))
            onset_strength = bool(saved.get("onset_strength", False))
            chroma = bool(saved.get("chroma", False))
            tempogram = bool(saved.get("tempogram", False))
            key_profile = bool(saved.get("key_profile", False))
            peak_energy = bool(saved.get("peak_energy", False))
            chroma_n_fft = saved.get("chroma_n_fft")
            key_opening_weight = float(saved.get("key_opening_weight", 0.0))
            key_mode = bool(saved.get("key_mode", False))
            event_count = bool(saved.get("event_count", False))
            level_bins = bool(saved.get("level_bins", False))
            event_index = bool(saved.get("event_index", False))
        if not max_seconds > 0:
            raise ValueError(f"max_seconds must be > 0, got {max_seconds!r}")
        self.mel = LogMelSpectrogram(n_mels, sample_rate=self.sample_rate, n_fft=n_fft)
        hop = self.mel.hop_length
        if chroma_n_fft is not None and (
            isinstance(chroma_n_fft, bool) or not isinstance(chroma_n_fft, int) or chroma_n_fft < hop
        ):
            raise ValueError(
                f"chroma_n_fft must be an integer >= {hop} (the hop) or null, got {chroma_n_fft!r}"
            )
        self.chroma_n_fft = chroma_n_fft
        if (
            isinstance(key_opening_weight, bool)
            or not isinstance(key_opening_weight, (int, float))
            or not math.isfinite(key_opening_weight)
            or key_opening_weight < 0
        ):
            raise ValueError(f"key_opening_weight must be a finite number >= 0, got {key_opening_weight!r}")
        if key_opening_weight > 0 and not key_profile:
            raise ValueError(
                f"key_opening_weight={key_opening_weight!r} weighs the opening in the key profile; set "
                "key_profile: true as well (or key_opening_weight: 0)"
            )
        self.key_opening_weight = float(key_opening_weight)
        if key_mode and not key_profile:
            raise ValueError("key_mode reads the key profile's distribution; set key_profile: true as well")
        # the pitch classes from their own, longer window: a semitone is 7.8 Hz at 131 Hz, which a
        # 2048-sample window resolves and the 1024-sample window of the mel bins does not
        self.chroma_stft = (
            LogMelSpectrogram(1, sample_rate=self.sample_rate, n_fft=chroma_n_fft)
            if chroma_n_fft is not None and chroma_n_fft != n_fft
            else None
        )
        self.log_energy = bool(log_energy)
        self.onset_strength = bool(onset_strength)
        self.chroma = bool(chroma)
        self.tempogram = bool(tempogram)
        self.key_profile = bool(key_profile)
        self.peak_energy = bool(peak_energy)
        self.key_mode = bool(key_mode)
        self.event_count = bool(event_count)
        self.level_bins = bool(level_bins)
        self.event_index = bool(event_index)
        self.output_dim = (
            n_mels
            + int(self.log_energy)
            + int(self.onset_strength)
            + 12 * int(self.chroma)
            + len(TEMPOGRAM_LAGS) * int(self.tempogram)
            + 24 * int(self.key_profile)
            + int(self.peak_energy)
            + 2 * int(self.key_mode)
            + (EVENT_COUNT_MAX + 1) * int(self.event_count)
            + len(LEVEL_BINS_DB) * int(self.level_bins)
            + (EVENT_COUNT_MAX + 1) * int(self.event_index)
        )
        self.scale = nn.Parameter(torch.ones(self.output_dim))
        self.shift = nn.Parameter(torch.zeros(self.output_dim))
        self.max_seconds = float(max_seconds)
        if pretrained is not None:
            from safetensors.torch import load_file

            self.load_state_dict(load_file(str(Path(pretrained) / "model.safetensors")))
        self.set_trainable(trainable)

    def num_frames(self, num_samples: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(num_samples) // self.mel.hop_length

    def _forward(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats, frames = self._features(wav, lengths)
        out = (feats * self.scale + self.shift).masked_fill(~self._valid(feats, frames), 0.0)
        return out.to(self.scale.dtype), frames

    @staticmethod
    def _valid(feats: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        return _frame_mask(frames, feats.shape[1])[..., None]

    def _features(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The features before the affine, ``[B, T, output_dim]`` float32 (0 past each item's frames)."""
        limit = int(self.max_seconds * self.sample_rate)
        if wav.shape[-1] > limit:
            raise ValueError(
                f"audio of {wav.shape[-1]} samples exceeds max_seconds={self.max_seconds:g} "
                f"({limit} samples at {self.sample_rate} Hz); split it or raise max_seconds"
            )
        wants_chroma = self.chroma or self.key_profile
        wants_energy = (
            self.log_energy
            or self.peak_energy
            or self.key_opening_weight > 0
            or self.event_count
            or self.level_bins
            or self.event_index
        )
        feats, frames, *more = self.mel(
            wav.float(),
            lengths,
            with_energy=wants_energy,
            with_chroma=wants_chroma and self.chroma_stft is None,
        )
        energy = more.pop(0) if wants_energy else None
        extra = [energy[:, None]] if self.log_energy else []
        flux = onset_strength(feats, frames) if self.onset_strength or self.tempogram else None
        if self.onset_strength:
            extra.append(flux[:, None])
        chroma = None
        if wants_chroma:
            own = self.chroma_stft is None
            chroma = more.pop(0) if own else self.chroma_stft(wav.float(), lengths, with_chroma=True)[2]
        if self.chroma:
            extra.append(chroma)
        if self.tempogram:
            extra.append(tempogram(flux, frames))
        if self.key_profile:
            opening = None
            if self.key_opening_weight > 0:
                opening = opening_chroma(chroma, energy, frames)
            keys = key_profile(
                chroma,
                frames,
                temperature=KEY_TEMPERATURE,
                opening=opening,
                opening_weight=self.key_opening_weight,
            )
            extra.append(keys)
        peak = peak_energy(energy, frames) if self.peak_energy or self.level_bins else None
        if self.peak_energy:
            extra.append(peak[:, None])
        if self.key_mode:  # major, minor: both 0 where the profile is 0 (no pitch)
            extra.append(torch.stack([keys[:, :12].sum(dim=1), keys[:, 12:].sum(dim=1)], dim=1))
        if self.level_bins:
            extra.append(level_bins(peak))
        starts = (
            event_starts(energy, frames).to(feats.dtype) if self.event_count or self.event_index else None
        )
        if self.event_count:
            extra.append(_count_one_hot(_window_sum(starts, CONTEXT_FRAMES)))
        if self.event_index:  # events begun so far: 0 before the first
            extra.append(_count_one_hot(starts.cumsum(dim=1)))
        feats = torch.cat([feats, *extra], dim=1).transpose(1, 2)  # [B, T, output_dim]
        return feats.masked_fill(~self._valid(feats, frames), 0.0), frames

    @torch.no_grad()
    def standardize(
        self, clips: Sequence[torch.Tensor], sample_rate: int | None = None, *, batch_size: int = 32
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Set the affine so that the features of ``clips`` have zero mean and unit variance in every
        dimension (global mean-variance normalisation, as speech toolkits apply from corpus statistics).

        ``clips`` are 1-D waveforms at ``sample_rate`` (default: 16 kHz). The mean and standard
        deviation are taken over all their valid frames, before the affine; ``scale = 1 / std`` and
        ``shift = -mean / std``, and a dimension that hardly varies (``std < 1e-3``) is only centred.
        Without it the extras, which vary far less than the mel bins (the key profile's 24 dimensions
        together hold about 1 % of the variance), reach the adaptor as a small part of its input, and a
        model trained for minutes barely learns to read them. Returns ``(mean, std)``, ``[output_dim]``
        float64 each; the affine trains on from there when the encoder is trainable.
        """
        if len(clips) == 0:
            raise ValueError("standardize needs at least one clip, got none")
        bad = [i for i, c in enumerate(clips) if not isinstance(c, torch.Tensor) or c.dim() != 1]
        if bad:
            raise ValueError(f"clips must be 1-D waveforms [N]; clip {bad[0]} is not")
        total = torch.zeros(self.output_dim, dtype=torch.float64)
        squares, count = torch.zeros_like(total), 0
        order = sorted(range(len(clips)), key=lambda i: clips[i].shape[0])  # little padding per batch
        for start in range(0, len(order), batch_size):
            wav, lengths = pad_waveforms([clips[i] for i in order[start : start + batch_size]])
            wav, lengths = prepare_audio(wav, lengths, sample_rate, self.sample_rate)
            feats, frames = self._features(wav.to(self.scale.device), lengths.to(self.scale.device))
            valid = feats[self._valid(feats, frames)[..., 0]].double().cpu()  # [frames, output_dim]
            total += valid.sum(dim=0)
            squares += valid.pow(2).sum(dim=0)
            count += valid.shape[0]
        if count == 0:
            raise ValueError("standardize found no valid feature frames in the clips")
        mean = total / count
        std = (squares / count - mean.pow(2)).clamp(min=0.0).sqrt()
        scale = torch.where(std < 1e-3, torch.ones_like(std), 1.0 / std)
        self.scale.copy_(scale.to(self.scale))
        self.shift.copy_((-mean * scale).to(self.shift))
        return mean, std

    def save_pretrained(self, directory: str | Path) -> Path:
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = {
            "n_mels": self.mel.n_mels,
            "n_fft": self.mel.n_fft,
            "log_energy": self.log_energy,
            "onset_strength": self.onset_strength,
            "chroma": self.chroma,
            "tempogram": self.tempogram,
            "key_profile": self.key_profile,
            "peak_energy": self.peak_energy,
            "chroma_n_fft": self.chroma_n_fft,
            "key_opening_weight": self.key_opening_weight,
            "key_mode": self.key_mode,
            "event_count": self.event_count,
            "level_bins": self.level_bins,
            "event_index": self.event_index,
            "max_seconds": self.max_seconds,
        }
        (directory / "config.json").write_text(json.dumps(config, indent=2))
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()},
            str(directory / "model.safetensors"),
        )
        return directory
