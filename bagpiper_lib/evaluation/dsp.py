"""DSP checks of (generated) audio against the synthetic corpus parameters.

When a real codec produced the audio, its captions say nothing about whether the waveform holds the
stated facts; these checks measure a few of them directly (pure numpy, no librosa / torchaudio)::

    estimate_f0(wav, 16000)              # Hz of the voiced part (autocorrelation), nan if unvoiced
    detect_onsets(wav, 16000)            # [seconds] of energy rises, >= 0.08 s apart
    estimate_tempo(wav, 16000)           # 60 / median inter-onset interval (BPM of the onset pulse)
    dsp_checks(wavs, records)            # {"pitch": 0.9, "onsets": 0.8, "tempo": 1.0, "num_pitch": 12, ...}

``dsp_checks`` scores each clip against its record's ``params`` (see ``bagpiper_lib.data.synth``):

- ``pitch`` (speech): estimated f0 within 10 % of ``params["f0"]`` (or ``F0_HZ[(speaker, pitch)]``);
- ``onsets`` (sound): fraction of stated event onsets with a detected onset within 50 ms;
- ``tempo`` (music melodies with >= 2 notes): ``estimate_tempo`` within 10 % of the stated tempo, its
  half or its double (the synthetic melodies are eighth notes, so the onset pulse is twice the tempo).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from bagpiper_lib.data.synth.voice import F0_HZ

__all__ = ["detect_onsets", "dsp_checks", "estimate_f0", "estimate_tempo", "expected_f0"]

MIN_SECONDS = 0.1  # shorter clips fail every check
SILENCE_PEAK = 1e-4  # clips whose peak is below this count as silent
PITCH_TOLERANCE = 0.10
ONSET_TOLERANCE = 0.05  # seconds
TEMPO_TOLERANCE = 0.10
MIN_GAP = 0.08  # seconds between reported onsets
_VOICED_DB = 6.0  # frames within this many dB of the loudest frame are analysed for f0
_MIN_PERIODICITY = 0.3  # normalised autocorrelation peak below which a clip is unvoiced
_RANGE_DB, _FLOOR_DB = 40.0, 60.0


def _as_array(wav) -> np.ndarray:
    """1-D float64 numpy copy of a tensor / array (channels ``[C, N]`` are averaged)."""
    if isinstance(wav, torch.Tensor):
        wav = wav.detach().to("cpu", torch.float64).numpy()
    x = np.asarray(wav, dtype=np.float64)
    if x.ndim == 2:
        x = x.mean(axis=0)
    if x.ndim != 1:
        raise ValueError(f"expected audio [N] or [C, N], got shape {x.shape}")
    return np.nan_to_num(x)


def estimate_f0(wav, sample_rate: int, fmin: float = 60.0, fmax: float = 500.0) -> float:
    """Fundamental frequency (Hz) of the voiced part of ``wav``, or ``nan`` if silent / aperiodic.

    Frames (40 ms, or two longest periods) within 6 dB of the loudest are mean-removed; their
    unbiased autocorrelations, each normalised by its lag-0 value, are averaged. The period is the
    first lag in ``[sr / fmax, sr / fmin]`` (after the lag-0 lobe) reaching 90 % of the window's
    maximum, climbed to its local maximum and refined by parabolic interpolation.
    """
    if not 0 < fmin < fmax:
        raise ValueError(f"need 0 < fmin < fmax, got {fmin}, {fmax}")
    x = _as_array(wav)
    lo, hi = max(int(sample_rate / fmax), 1), int(math.ceil(sample_rate / fmin))
    frame = max(int(round(0.04 * sample_rate)), 2 * hi + 2)
    if len(x) < frame:
        if len(x) < hi + 2:
            return float("nan")
        frame = len(x)
    hop = frame // 2
    starts = np.arange(0, len(x) - frame + 1, hop)
    frames = np.stack([x[s : s + frame] for s in starts])
    frames = frames - frames.mean(axis=1, keepdims=True)
    energy = (frames**2).sum(axis=1)
    if energy.max() <= 1e-12:
        return float("nan")
    frames = frames[energy >= energy.max() * 10 ** (-_VOICED_DB / 10)]
    size = 1 << int(math.ceil(math.log2(2 * frame)))
    spec = np.fft.rfft(frames, size, axis=1)
    ac = np.fft.irfft(np.abs(spec) ** 2, size, axis=1)[:, :frame]
    ac = ac / np.maximum(ac[:, :1], 1e-20) * (frame / (frame - np.arange(frame)))
    ac = ac.mean(axis=0)
    hi = min(hi, frame - 2)
    below = np.flatnonzero(ac[1 : hi + 1] < 0)  # skip the lobe around lag 0
    start = max(lo, int(below[0]) + 1 if len(below) else lo)
    if start >= hi:
        return float("nan")
    window = ac[start : hi + 1]
    if window.max() < _MIN_PERIODICITY:
        return float("nan")
    lag = start + int(np.flatnonzero(window >= 0.9 * window.max())[0])
    while lag + 1 <= hi and ac[lag + 1] > ac[lag]:
        lag += 1
    a, b, c = ac[lag - 1], ac[lag], ac[lag + 1]
    denom = a - 2 * b + c
    shift = 0.5 * (a - c) / denom if denom < 0 else 0.0
    return float(sample_rate / (lag + float(np.clip(shift, -0.5, 0.5))))


def detect_onsets(
    wav,
    sample_rate: int,
    *,
    min_gap: float = MIN_GAP,
    lookback: float = 0.05,
    rise_db: float = 9.0,
    reference: str = "mean",
) -> list[float]:
    """Onset times (seconds) of energy rises in ``wav``, at least ``min_gap`` apart.

    Energy of 5 ms frames every 1 ms, with a floor 60 dB below the loudest frame. A frame is a rise
    when its energy is ``rise_db`` above the ``reference`` (``"mean"``: robust to fluctuating
    backgrounds; ``"min"``: also catches re-attacks after a brief dip, as between legato notes)
    energy of the preceding ``lookback`` seconds and within 40 dB of the loudest frame (a rise at
    the very start of the clip is not reported); each run of rises gives one onset, timed at the end of its first frame (where the frame
    just takes in the new sound). Silent audio gives ``[]``.
    """
    if reference not in ("mean", "min"):
        raise ValueError(f"reference must be 'mean' or 'min', got {reference!r}")
    x = _as_array(wav)
    frame, hop = max(int(round(0.005 * sample_rate)), 1), max(int(round(0.001 * sample_rate)), 1)
    if len(x) < frame:
        return []
    csum = np.concatenate(([0.0], np.cumsum(x**2)))
    starts = np.arange(0, len(x) - frame + 1, hop)
    energy = (csum[starts + frame] - csum[starts]) / frame
    top = energy.max()
    if top <= 1e-12:
        return []
    energy = energy + top * 10 ** (-_FLOOR_DB / 10)
    level = 10 * np.log10(energy)
    k = max(int(round(lookback * sample_rate / hop)), 1)
    padded = np.concatenate((np.full(k, energy[0]), energy))  # the clip start is no rise
    windows = np.lib.stride_tricks.sliding_window_view(padded[:-1], k)
    base = windows.mean(axis=1) if reference == "mean" else windows.min(axis=1)
    rising = (level - 10 * np.log10(base) >= rise_db) & (level >= level.max() - _RANGE_DB)
    firsts = np.flatnonzero(rising & ~np.concatenate(([False], rising[:-1])))
    onsets: list[float] = []
    for i in firsts:
        t = float((starts[i] + frame) / sample_rate)
        if not onsets or t - onsets[-1] >= min_gap:
            onsets.append(round(t, 4))
    return onsets


def estimate_tempo(wav, sample_rate: int) -> float | None:
    """BPM of the onset pulse: ``60 / median`` interval between consecutive onsets, ``None`` if < 2.

    Onsets are detected in the note-sensitive setting (6 dB above the minimum of the last 20 ms), so
    a new note after a short release counts even when the previous one was sustained.

    For the synthetic melodies (eighth notes) this is twice the stated tempo; compare modulo
    half / double tempo.
    """
    onsets = detect_onsets(wav, sample_rate, lookback=0.02, rise_db=6.0, reference="min")
    if len(onsets) < 2:
        return None
    return float(60.0 / np.median(np.diff(onsets)))


def expected_f0(params: dict) -> float | None:
    """The f0 (Hz) a speech record's params imply: ``params["f0"]``, else ``F0_HZ[(speaker, pitch)]``."""
    if params.get("f0") is not None:
        return float(params["f0"])
    return F0_HZ.get((params.get("speaker"), params.get("pitch")))


def _tempo_ok(estimate: float | None, tempo: float) -> bool:
    if estimate is None or not np.isfinite(estimate):
        return False
    return any(abs(estimate - t) <= TEMPO_TOLERANCE * t for t in (tempo, 2 * tempo, tempo / 2))


def dsp_checks(wavs: Sequence, records: Sequence, *, sample_rate: int | None = None) -> dict[str, float]:
    """Per attribute, the mean pass score of ``wavs`` (tensors / arrays ``[N]``) against ``records``.

    ``pitch`` is scored over speech records with a known f0, ``onsets`` over sound records with
    stated onsets (per clip the fraction of matched onsets), ``tempo`` over music melodies with at
    least two notes; clips shorter than 0.1 s or silent score 0. ``sample_rate`` overrides each
    record's ``sample_rate`` (e.g. for decoded audio at a codec's rate). Returns the scores of the
    attributes with at least one clip, and ``num_pitch`` / ``num_onsets`` / ``num_tempo`` always.
    """
    if len(wavs) != len(records):
        raise ValueError(f"{len(wavs)} waveforms for {len(records)} records")
    scores: dict[str, list[float]] = {"pitch": [], "onsets": [], "tempo": []}
    for wav, record in zip(wavs, records):
        params = record.params or {}
        rate = sample_rate or record.sample_rate
        if rate is None:
            raise ValueError(f"record {record.id!r}: no sample_rate")
        x = _as_array(wav)
        usable = len(x) >= MIN_SECONDS * rate and np.abs(x).max() >= SILENCE_PEAK
        if record.category == "speech" and (target := expected_f0(params)) is not None:
            f0 = estimate_f0(x, rate) if usable else float("nan")
            scores["pitch"].append(float(abs(f0 - target) <= PITCH_TOLERANCE * target))
        elif record.category == "sound" and params.get("onsets"):
            detected = np.array(detect_onsets(x, rate) if usable else [])
            matched = [len(detected) > 0 and np.abs(detected - o).min() <= ONSET_TOLERANCE + 1e-6
                       for o in params["onsets"]]  # fmt: skip
            scores["onsets"].append(float(np.mean(matched)))
        elif (
            record.category == "music"
            and params.get("texture") == "melody"
            and len(params.get("onsets", ())) >= 2
            and params.get("tempo")
        ):
            estimate = estimate_tempo(x, rate) if usable else None
            scores["tempo"].append(float(_tempo_ok(estimate, float(params["tempo"]))))
    out = {name: float(np.mean(values)) for name, values in scores.items() if values}
    out.update({f"num_{name}": len(values) for name, values in scores.items()})
    return out
