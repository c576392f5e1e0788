"""Voice-like clips: a vowel sequence from a source-filter formant synthesiser.

Source: a band-limited glottal pulse train (harmonics of f0 with a -6 dB/octave tilt and a slight
vibrato). Filter: three parallel two-pole formant resonators per vowel, applied by FFT convolution with
their impulse responses. The speaker trait sets the f0 range and scales all formants (vocal-tract
length); the pitch class picks low / mid / high f0 within that range.

Parameters (``sample_params``) are plain JSON data::

    {"category": "speech", "pitch": "high", "speaker": "child", "rate": "fast",
     "vowels": "a-e-o", "vowel_count": 3, "f0": 325.0, "formant_scale": 1.3,
     "onset": 0.1, "vowel_duration": 0.15, "amplitude": 0.7, "duration": 1.5}

``render`` returns float64 ``[N]`` with peak ``params["amplitude"]``.
"""

from __future__ import annotations

import numpy as np

from bagpiper_lib.data.synth.attributes import PITCHES, RATES, SPEAKERS, VOWEL_COUNTS, VOWELS

__all__ = ["F0_HZ", "render", "sample_params"]

F0_HZ = {  # (speaker, pitch) -> f0; nine well-separated values
    ("male", "low"): 95.0, ("male", "mid"): 110.0, ("male", "high"): 125.0,
    ("female", "low"): 175.0, ("female", "mid"): 200.0, ("female", "high"): 225.0,
    ("child", "low"): 255.0, ("child", "mid"): 290.0, ("child", "high"): 325.0,
}  # fmt: skip
FORMANT_SCALES = {"male": 1.0, "female": 1.15, "child": 1.3}
FORMANTS = {  # adult-male formants F1, F2, F3 (Hz)
    "a": (730.0, 1090.0, 2440.0),
    "e": (530.0, 1840.0, 2480.0),
    "i": (270.0, 2290.0, 3010.0),
    "o": (570.0, 840.0, 2410.0),
    "u": (300.0, 870.0, 2240.0),
}
BANDWIDTHS = (80.0, 100.0, 120.0)
FORMANT_GAINS = (1.0, 0.5, 0.25)
VOWEL_SECONDS = {"slow": 0.3, "moderate": 0.22, "fast": 0.15}
ONSET, GAP, END_MARGIN, AMPLITUDE = 0.1, 0.03, 0.05, 0.7
VIBRATO_HZ, VIBRATO_DEPTH = 5.0, 0.005
SOURCE_TOP_HZ = 5000.0


def sample_params(rng: np.random.Generator, duration: float) -> dict:
    """Draw one voice clip's parameters for a clip of ``duration`` (>= 0.5) seconds."""
    pitch, speaker, rate = str(rng.choice(PITCHES)), str(rng.choice(SPEAKERS)), str(rng.choice(RATES))
    vowel_seconds = VOWEL_SECONDS[rate]
    fits = int(np.floor((duration - ONSET - END_MARGIN + GAP) / (vowel_seconds + GAP) + 1e-9))
    count = int(np.clip(rng.choice(VOWEL_COUNTS[1:]), VOWEL_COUNTS[0], max(fits, VOWEL_COUNTS[0])))
    vowels = [str(v) for v in rng.choice(VOWELS, size=count)]
    return {
        "category": "speech",
        "pitch": pitch,
        "speaker": speaker,
        "rate": rate,
        "vowels": "-".join(vowels),
        "vowel_count": count,
        "f0": F0_HZ[(speaker, pitch)],
        "formant_scale": FORMANT_SCALES[speaker],
        "onset": ONSET,
        "vowel_duration": vowel_seconds,
        "amplitude": AMPLITUDE,
        "duration": duration,
    }


def _source(f0: float, n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Band-limited glottal pulse train ``[n]``: harmonics ``k * f0`` up to 5 kHz with amplitude ``1 / k``.

    Harmonic ``k`` is ``Im(z ** k)`` with ``z = exp(i * phase)``, built by repeated multiplication.
    """
    t = np.arange(n) / sample_rate
    inst_f0 = f0 * (1.0 + VIBRATO_DEPTH * np.sin(2 * np.pi * VIBRATO_HZ * t + rng.uniform(0, 2 * np.pi)))
    z = np.exp(1j * 2 * np.pi * np.cumsum(inst_f0) / sample_rate)
    top = min(0.45 * sample_rate, SOURCE_TOP_HZ) / (f0 * (1 + VIBRATO_DEPTH))
    out, zk = np.zeros(n), np.ones(n, dtype=complex)
    for k in range(1, int(top) + 1):
        zk *= z
        out += zk.imag / k
    return out


def _formant_filter(vowel: str, scale: float, sample_rate: int) -> np.ndarray:
    """Impulse response of three parallel two-pole resonators (64 ms)."""
    n = np.arange(int(0.064 * sample_rate))
    h = np.zeros(len(n))
    for freq, bw, gain in zip(FORMANTS[vowel], BANDWIDTHS, FORMANT_GAINS):
        r = np.exp(-np.pi * bw * scale / sample_rate)
        theta = 2 * np.pi * min(freq * scale, 0.45 * sample_rate) / sample_rate
        h += gain * (1 - r) * r**n * np.sin(theta * (n + 1)) / np.sin(theta)
    return h


def render(params: dict, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Waveform ``[N]`` (``N = round(duration * sample_rate)``) of a ``sample_params`` dict."""
    n_total = int(round(params["duration"] * sample_rate))
    out = np.zeros(n_total)
    n_vowel = int(round(params["vowel_duration"] * sample_rate))
    source = _source(params["f0"], n_total, sample_rate, rng)  # one continuous voice
    fade = int(0.02 * sample_rate)
    env = np.ones(n_vowel)
    env[:fade], env[-fade:] = np.linspace(0, 1, fade), np.linspace(1, 0, fade)
    for i, vowel in enumerate(params["vowels"].split("-")):
        start = int(round((params["onset"] + i * (params["vowel_duration"] + GAP)) * sample_rate))
        n = min(n_vowel, n_total - start)
        if n <= 0:
            break
        h = _formant_filter(vowel, params["formant_scale"], sample_rate)
        seg = source[start : start + n]
        size = 1 << int(np.ceil(np.log2(n + len(h))))
        filtered = np.fft.irfft(np.fft.rfft(seg, size) * np.fft.rfft(h, size), size)[:n]
        out[start : start + n] = filtered * env[:n]
    return out * (params["amplitude"] / max(np.abs(out).max(), 1e-9))
