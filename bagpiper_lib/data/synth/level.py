"""Sound level of a clip: the loudest short-window RMS, in dB relative to full scale.

The "loudness" of sound events and the "dynamics" of music are stated from this level, not from the
peak sample. A 3 ms click and a 300 ms beep with the same peak do not sound equally loud: the click
carries a fraction of the energy. Scaling each part to a target *level* makes a stated "loud" mean
the same thing for every event type and instrument, as an annotator hears it::

    level_db(x, 16000)                 # -21.3: the loudest 25 ms window's RMS, dBFS
    y = set_level(x, -12.0, 16000)     # scaled so level_db(y) == -12 (or less, if the peak would pass 0.99)
"""

from __future__ import annotations

import numpy as np

__all__ = ["LEVELS_DB", "LEVEL_WINDOW", "MAX_PEAK", "level_db", "set_level"]

LEVEL_WINDOW = 0.025  # seconds: a short-term window, about one log-mel analysis frame
MAX_PEAK = 0.99
# dBFS of the three stated levels, 9 dB apart: sound loudness quiet / moderate / loud and music
# dynamics soft / medium / loud
LEVELS_DB = (-30.0, -21.0, -12.0)


def _loudest_rms(x: np.ndarray, sample_rate: int) -> float:
    """Largest RMS over every ``LEVEL_WINDOW`` window of ``x`` (the whole of ``x`` when shorter; 0 when
    empty)."""
    if len(x) == 0:
        return 0.0
    n = max(min(int(round(LEVEL_WINDOW * sample_rate)), len(x)), 1)
    energy = np.concatenate(([0.0], np.cumsum(np.asarray(x, dtype=np.float64) ** 2)))
    return float(np.sqrt(max((energy[n:] - energy[:-n]).max(), 0.0) / n))


def level_db(x: np.ndarray, sample_rate: int) -> float:
    """The loudest ``LEVEL_WINDOW`` RMS of ``x`` in dBFS (``-inf`` for silence or empty audio)."""
    rms = _loudest_rms(x, sample_rate)
    return 20.0 * float(np.log10(rms)) if rms > 0 else float("-inf")


def set_level(x: np.ndarray, target_db: float, sample_rate: int, max_peak: float = MAX_PEAK) -> np.ndarray:
    """``x`` scaled to the level ``target_db`` dBFS, or less where that would lift the peak past
    ``max_peak`` (the scale is capped instead of clipping). Silence is returned unchanged."""
    rms = _loudest_rms(x, sample_rate)
    if rms <= 0:
        return x
    gain = 10.0 ** (target_db / 20.0) / rms
    peak = float(np.abs(x).max())
    return x * min(gain, max_peak / peak)
