"""Music clips: a melody or a chord progression on one instrument, one note or triad per eighth note.

Every stated fact can be heard in the clip: both textures move in eighth notes, so the tempo is the
inter-onset interval (``30 / tempo`` s) whatever the texture, and every clip long enough for two notes
(0.65 s at 60 BPM) has at least two onsets; the last note may be cut by the clip's end, but sounds for
at least ``MIN_TAIL``. A melody of two or more notes always plays a scale degree that differs between
major and minor (the third, sixth or seventh), and a progression starts on the tonic triad, so the mode
is heard against the tonic (the first note).

Parameters (``sample_params``) are plain JSON data::

    {"category": "music", "key": "A", "mode": "minor", "tempo": 90, "instrument": "piano",
     "dynamics": "soft", "register": "middle", "texture": "melody", "note_count": 8,
     "notes": [[57], [59], ...],          # MIDI numbers, one list per note / chord (chord root first)
     "onsets": [0.05, 0.383, ...],        # seconds
     "note_duration": 0.333, "tonic_hz": 220.0, "level_db": -30.0, "duration": 1.5}

The first note (or the root of the first chord) is always the tonic of the key in the stated register.
``render`` returns float64 ``[N]`` at the level ``params["level_db"]`` (its loudest 25 ms RMS in dBFS,
see ``level.level_db``): soft -30, medium -21, loud -12 dBFS, 9 dB apart whatever the instrument.
"""

from __future__ import annotations

import numpy as np

from bagpiper_lib.data.synth.attributes import DYNAMICS, INSTRUMENTS, KEYS, MODES, REGISTERS, TEMPOS, TEXTURES
from bagpiper_lib.data.synth.level import LEVELS_DB, set_level

__all__ = ["midi_to_hz", "render", "sample_params"]

SCALES = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10)}
KEY_SEMITONES = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9}
REGISTER_OCTAVES = {"low": 3, "middle": 4, "high": 5}
DYNAMIC_LEVELS = dict(zip(DYNAMICS, LEVELS_DB))  # soft -30, medium -21, loud -12 dBFS
START = 0.05  # first onset, seconds
MIN_TAIL = 0.1  # the last note sounds at least this long before the clip ends, seconds
MODE_STEPS = (2, 5, 6)  # scale steps that differ between major and minor: third, sixth, seventh
MAX_NOTES = 16
RELEASE = 0.01  # fade at each note's end, seconds


def midi_to_hz(midi: float) -> float:
    """Equal temperament, A4 = MIDI 69 = 440 Hz."""
    return 440.0 * 2.0 ** ((midi - 69) / 12)


def _scale_midi(tonic: int, mode: str, degree: int) -> int:
    octave, step = divmod(degree, 7)
    return tonic + 12 * octave + SCALES[mode][step]


def _melody_degrees(rng: np.random.Generator, count: int) -> list[int]:
    """A random walk of ``count`` scale degrees in 0..7 from the tonic, steps of one or two degrees
    (reflected at the ends, so no note repeats), redrawn until it plays a ``MODE_STEPS`` degree when it
    has two or more notes (a one-step walk does so half the time)."""
    while True:
        degrees = [0]
        for _ in range(count - 1):
            step = int(rng.choice((-2, -1, 1, 2)))
            nxt = degrees[-1] + step
            degrees.append(nxt if 0 <= nxt <= 7 else degrees[-1] - step)
        if count < 2 or any(d % 7 in MODE_STEPS for d in degrees):
            return degrees


def sample_params(rng: np.random.Generator, duration: float) -> dict:
    """Draw one music clip's parameters for a clip of ``duration`` seconds."""
    key, mode = str(rng.choice(KEYS)), str(rng.choice(MODES))
    tempo = int(rng.choice(TEMPOS))
    instrument, dynamics = str(rng.choice(INSTRUMENTS)), str(rng.choice(DYNAMICS))
    register, texture = str(rng.choice(REGISTERS)), str(rng.choice(TEXTURES))
    note_duration = 30.0 / tempo  # an eighth note
    count = int(np.clip(np.floor((duration - START - MIN_TAIL) / note_duration + 1e-9) + 1, 1, MAX_NOTES))
    tonic = 12 * (REGISTER_OCTAVES[register] + 1) + KEY_SEMITONES[key]
    if texture == "melody":
        notes = [[_scale_midi(tonic, mode, d)] for d in _melody_degrees(rng, count)]
    else:  # I then diatonic chords on degrees I, IV, V, vi (i, iv, v, VI in minor)
        roots = [0] + [int(rng.choice((0, 3, 4, 5))) for _ in range(count - 1)]
        notes = [[_scale_midi(tonic, mode, r + k) for k in (0, 2, 4)] for r in roots]
    return {
        "category": "music",
        "key": key,
        "mode": mode,
        "tempo": tempo,
        "instrument": instrument,
        "dynamics": dynamics,
        "register": register,
        "texture": texture,
        "note_count": count,
        "notes": notes,
        "onsets": [round(START + i * note_duration, 4) for i in range(count)],
        "note_duration": round(note_duration, 4),
        "tonic_hz": round(midi_to_hz(tonic), 3),
        "level_db": DYNAMIC_LEVELS[dynamics],
        "duration": duration,
    }


def _partials(freq: float, t: np.ndarray, amps, decay: float, rng, sample_rate: int) -> np.ndarray:
    """Harmonics ``k * freq`` (below 0.45 * rate) with random phases, harmonic ``k`` decaying at rate
    ``decay * k`` (1/s), built as ``Im(z ** k)`` by repeated multiplication of ``z = exp((i w - decay) t)``.
    """
    z = np.exp((2j * np.pi * freq - decay) * t)
    out, zk = np.zeros_like(t), np.ones_like(z)
    for k, amp in enumerate(amps, start=1):
        zk *= z
        if k * freq >= 0.45 * sample_rate:
            break
        out += amp * (zk * np.exp(1j * rng.uniform(0, 2 * np.pi))).imag
    return out


def _karplus_strong(freq: float, n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Plucked string: a delay line holding the string's shape, averaged with itself (Karplus-Strong).

    The loop runs at an internal rate where the period ``L + 0.5`` samples is exact, then is linearly
    resampled to ``sample_rate``, so the pitch is exact without a fractional-delay filter.
    """
    period = max(int(round(sample_rate / freq - 0.5)), 8)
    inner_rate = freq * (period + 0.5)
    m = int(np.ceil(n * inner_rate / sample_rate)) + 2
    blocks = -(-m // period) + 1
    y = np.zeros(blocks * period)
    # initial string shape: plucked at 30 % of its length (a triangle), plus a little noise
    pos = np.arange(period) / period
    shape = np.where(pos < 0.3, pos / 0.3, (1 - pos) / 0.7) + 0.2 * rng.uniform(-1, 1, period)
    y[:period] = shape - shape.mean()
    for b in range(1, blocks):
        prev = y[(b - 1) * period : b * period]
        before = y[b * period - period - 1] if b > 1 else 0.0
        y[b * period : (b + 1) * period] = 0.996 * 0.5 * (prev + np.concatenate(([before], prev[:-1])))
    t_inner = np.arange(n) * inner_rate / sample_rate
    return np.interp(t_inner, np.arange(len(y)), y)


def _note(instrument: str, freq: float, n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(n) / sample_rate
    if instrument == "piano":  # decaying harmonics, harmonic k at rate 2.5 + 1.5 k (1/s)
        amps = [1.0 / k for k in range(1, 9)]
        wave = _partials(freq, t, amps, 1.5, rng, sample_rate) * np.exp(-2.5 * t) * np.minimum(t / 0.004, 1.0)
    elif instrument == "organ":  # sustained drawbar harmonics
        amps = [1.0, 0.5, 0.3, 0.2, 0.0, 0.1]
        wave = _partials(freq, t, amps, 0.0, rng, sample_rate) * np.minimum(t / 0.01, 1.0)
    elif instrument == "pluck":
        wave = _karplus_strong(freq, n, sample_rate, rng)
    else:  # bell: FM with an inharmonic 1.4 ratio and a decaying modulation index
        index = 1.0 * np.exp(-3.0 * t)
        mod = index * np.sin(2 * np.pi * 1.4 * freq * t)
        wave = np.sin(2 * np.pi * freq * t + mod + rng.uniform(0, 2 * np.pi)) * np.exp(-2.5 * t)
        wave *= np.minimum(t / 0.002, 1.0)
    fade = max(int(RELEASE * sample_rate), 1)
    wave[-fade:] *= np.linspace(1.0, 0.0, min(fade, n))
    return wave


def render(params: dict, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Waveform ``[N]`` (``N = round(duration * sample_rate)``) of a ``sample_params`` dict."""
    n_total = int(round(params["duration"] * sample_rate))
    out = np.zeros(n_total)
    note_n = int(round(params["note_duration"] * sample_rate))
    for onset, chord in zip(params["onsets"], params["notes"]):
        start = int(round(onset * sample_rate))
        n = min(note_n, n_total - start)
        if n <= 0:
            break
        for midi in chord:
            out[start : start + n] += _note(params["instrument"], midi_to_hz(midi), n, sample_rate, rng)
    return set_level(out, params["level_db"], sample_rate)
