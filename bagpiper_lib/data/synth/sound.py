"""Sound-effect clips: 1-3 events at known onsets over a background.

Parameters (``sample_params``) are plain JSON data::

    {"category": "sound", "events": ["beep", "thud"], "onsets": [0.2, 0.65],
     "event_durations": [0.1, 0.15], "event_count": 2, "background": "hum",
     "loudness": "loud", "level_db": -12.0, "duration": 1.5}

Onsets and durations lie on a 50 ms grid; events start at 0.1 s or later, are separated by at least
0.1 s of background and end 50 ms or more before the clip does. ``render`` returns float64 ``[N]``
where every event has the level ``params["level_db"]`` (its loudest 25 ms RMS in dBFS, see
``level.level_db``): quiet -30, moderate -21, loud -12 dBFS, 9 dB apart whatever the event type.
"""

from __future__ import annotations

import numpy as np

from bagpiper_lib.data.synth.attributes import BACKGROUNDS, EVENT_COUNTS, EVENT_TYPES, LOUDNESS
from bagpiper_lib.data.synth.level import LEVELS_DB, set_level

__all__ = ["render", "sample_params"]

GRID = 0.05  # seconds per placement unit
START_UNITS, END_UNITS, GAP_UNITS = 2, 1, 2
FIXED_UNITS = {"click": 1, "thud": 3}  # other events last 2, 4 or 6 units
LOUDNESS_LEVELS = dict(zip(LOUDNESS, LEVELS_DB))  # quiet -30, moderate -21, loud -12 dBFS
HUM_PEAK, NOISE_RMS = 0.008, 0.002  # about -47 and -54 dBFS RMS: well under a quiet event (-30)
FADE = 0.005  # seconds


def sample_params(rng: np.random.Generator, duration: float) -> dict:
    """Draw one sound clip's parameters for a clip of ``duration`` (>= 0.5) seconds."""
    count = int(rng.choice(EVENT_COUNTS))
    events = [str(e) for e in rng.choice(EVENT_TYPES, size=count)]
    units = [FIXED_UNITS.get(e, int(rng.choice((2, 4, 6)))) for e in events]
    total = int(np.floor(duration / GRID + 1e-9))

    def slack() -> int:
        return total - START_UNITS - END_UNITS - sum(units) - GAP_UNITS * (len(units) - 1)

    while slack() < 0 and len(events) > 1:
        events.pop()
        units.pop()
    if slack() < 0:
        units[0] = FIXED_UNITS.get(events[0], 2)
    gaps = rng.multinomial(max(slack(), 0), [1.0 / (len(units) + 1)] * (len(units) + 1))
    onsets, cursor = [], START_UNITS
    for i, u in enumerate(units):
        cursor += int(gaps[i])
        onsets.append(round(cursor * GRID, 2))
        cursor += u + GAP_UNITS
    loudness = str(rng.choice(LOUDNESS))
    return {
        "category": "sound",
        "events": events,
        "onsets": onsets,
        "event_durations": [round(u * GRID, 2) for u in units],
        "event_count": len(events),
        "background": str(rng.choice(BACKGROUNDS)),
        "loudness": loudness,
        "level_db": LOUDNESS_LEVELS[loudness],
        "duration": duration,
    }


def _fade(wave: np.ndarray, sample_rate: int) -> np.ndarray:
    f = min(max(int(FADE * sample_rate), 1), len(wave) // 2)
    if f > 0:
        ramp = np.linspace(0.0, 1.0, f)
        wave[:f] *= ramp
        wave[-f:] *= ramp[::-1]
    return wave


def _event(kind: str, n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """One event of ``n`` samples with peak ~1."""
    t = np.arange(n) / sample_rate
    if kind == "beep":
        return _fade(np.sin(2 * np.pi * 1000.0 * t), sample_rate)
    if kind == "click":  # 3 ms decaying noise transient
        return rng.uniform(-1, 1, n) * np.exp(-t / 0.003)
    if kind == "noise burst":
        return _fade(np.clip(rng.normal(0.0, 0.35, n), -1, 1), sample_rate)
    if kind in ("rising sweep", "falling sweep"):  # exponential chirp between 400 Hz and 2 kHz
        f0, f1 = (400.0, 2000.0) if kind == "rising sweep" else (2000.0, 400.0)
        dur = n / sample_rate
        k = np.log(f1 / f0) / dur
        phase = 2 * np.pi * f0 * (np.exp(k * t) - 1) / k
        return _fade(np.sin(phase), sample_rate)
    # thud: a low sine dropping from 90 to 50 Hz with a fast decay
    freq = 50.0 + 40.0 * np.exp(-t / 0.03)
    phase = 2 * np.pi * np.cumsum(freq) / sample_rate
    return _fade(np.sin(phase) * np.exp(-t / 0.05), sample_rate)


def _background(kind: str, n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "silence":
        return np.zeros(n)
    if kind == "hum":  # mains-like 60 Hz with two harmonics
        t = np.arange(n) / sample_rate
        wave = sum(
            a * np.sin(2 * np.pi * 60.0 * k * t + rng.uniform(0, 2 * np.pi))
            for k, a in ((1, 1.0), (2, 0.5), (3, 0.25))
        )
        return wave * (HUM_PEAK / np.abs(wave).max())
    spectrum = np.fft.rfft(rng.normal(size=n))  # pink-ish: 1/sqrt(f) amplitude
    freqs = np.fft.rfftfreq(n, 1.0 / sample_rate)
    spectrum *= 1.0 / np.sqrt(np.maximum(freqs, 20.0))
    wave = np.fft.irfft(spectrum, n)
    return wave * (NOISE_RMS / max(np.sqrt(np.mean(wave**2)), 1e-12))


def render(params: dict, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Waveform ``[N]`` (``N = round(duration * sample_rate)``) of a ``sample_params`` dict."""
    n_total = int(round(params["duration"] * sample_rate))
    out = _background(params["background"], n_total, sample_rate, rng)
    for kind, onset, dur in zip(params["events"], params["onsets"], params["event_durations"]):
        start = int(round(onset * sample_rate))
        n = min(int(round(dur * sample_rate)), n_total - start)
        wave = _event(kind, n, sample_rate, rng)
        out[start : start + n] += set_level(wave, params["level_db"], sample_rate)
    return out
