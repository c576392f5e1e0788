"""The embedded synthetic corpus: audio clips generated in milliseconds with exact rich captions.

Three categories, each drawn from small discrete parameter sets (``ATTRIBUTES`` / ``VALUES``) so the
caption states every fact exactly and a tiny model can learn them:

- ``music``: a melody or chord progression: key, mode, tempo, instrument (piano / organ / pluck via
  Karplus-Strong / FM bell), dynamics, register, note count;
- ``sound``: 1-3 events (beep, click, noise burst, rising / falling sweep, thud) at stated onsets and
  durations over silence / a low hum / pink noise, at a loudness;
- ``speech``: formant-synthesised vowels (source-filter) with pitch, speaker trait, rate and the vowel
  sequence as the transcript.

A ``mixture_fraction`` of clips adds a quieter second category (category = the dominant one; the
caption mentions both). Pure numpy; deterministic by ``(seed, split, index)``::

    records = generate(200, seed=0)                  # list[Record], audio [N] float32 in [-1, 1]
    parse_caption(records[0].caption)                # {"category": ..., "key": ..., ...}
    attribute_accuracy(model_captions, records)      # {"category": 0.9, "key": 0.4, ...}
    chance_level("key")                              # 1 / 6
"""

from __future__ import annotations

import math
import zlib
from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import torch

from bagpiper_lib.data.records import CATEGORIES, Record
from bagpiper_lib.data.synth import music, sound, voice
from bagpiper_lib.data.synth.attributes import ATTRIBUTES, VALUES, chance_level
from bagpiper_lib.data.synth.captions import (
    MIX_MARKERS,
    TEMPLATES_PER_CATEGORY,
    long_caption,
    mixture_sentence,
    short_caption,
)
from bagpiper_lib.data.synth.level import MAX_PEAK, level_db, set_level
from bagpiper_lib.data.synth.parsing import parse_caption
from bagpiper_lib.data.synth.text import text_corpus

__all__ = [
    "ATTRIBUTES",
    "TEMPLATES_PER_CATEGORY",
    "VALUES",
    "attribute_accuracy",
    "chance_level",
    "generate",
    "parse_caption",
    "text_corpus",
    "timing_error",
]

_MODULES = {"music": music, "sound": sound, "speech": voice}
MIX_GAIN = 0.35  # level of the quieter part relative to the dominant one (-9 dB; see synth.level)
MIN_DURATION = 0.5


def _durations(duration: float | tuple[float, float]) -> np.ndarray:
    """Clip durations to draw from: the 0.1 s grid inside ``(low, high)``, or the one fixed value."""
    low, high = (duration, duration) if isinstance(duration, (int, float)) else map(float, duration)
    if not MIN_DURATION <= low <= high:
        raise ValueError(f"duration must satisfy {MIN_DURATION} <= low <= high, got {duration!r}")
    grid = np.arange(math.ceil(low * 10 - 1e-6), math.floor(high * 10 + 1e-6) + 1) / 10
    return grid if len(grid) else np.array([round(low, 2)])


def _split_code(split: str) -> int:
    if not isinstance(split, str) or not split:
        raise ValueError(f"split must be a non-empty string, got {split!r}")
    return zlib.crc32(split.encode())


def _one(
    category: str,
    rng: np.random.Generator,
    durations: np.ndarray,
    categories: tuple[str, ...],
    mixture_fraction: float,
    sample_rate: int,
) -> tuple[dict, np.ndarray, str, str]:
    """``(params, audio [N], caption, short_caption)`` of one clip, every draw taken from ``rng``."""
    duration = float(rng.choice(durations))
    params = _MODULES[category].sample_params(rng, duration)
    others = [c for c in categories if c != category] or [c for c in CATEGORIES if c != category]
    secondary = None
    if rng.random() < mixture_fraction:
        secondary = _MODULES[str(rng.choice(others))].sample_params(rng, duration)
    template = int(rng.integers(TEMPLATES_PER_CATEGORY))
    caption = long_caption(params, template)
    audio = _MODULES[category].render(params, sample_rate, rng)
    if secondary is not None:
        marker = int(rng.integers(len(MIX_MARKERS)))
        caption += " " + mixture_sentence(secondary, marker)
        extra = _MODULES[secondary["category"]].render(secondary, sample_rate, rng)
        under = level_db(audio, sample_rate) + 20.0 * math.log10(MIX_GAIN)
        audio = audio + set_level(extra, under, sample_rate)
        audio *= min(1.0, MAX_PEAK / max(np.abs(audio).max(), 1e-9))  # scale down rather than clip
        params = {
            **params,
            "mixed_with": secondary["category"],
            "mix": {"gain": MIX_GAIN, "params": secondary},
        }
    params["caption_template"] = template
    return params, np.clip(audio, -1.0, 1.0), caption, short_caption(params, secondary)


def generate(
    n: int,
    seed: int = 0,
    *,
    sample_rate: int = 16000,
    duration: float | tuple[float, float] = (1.0, 2.0),
    categories: Sequence[str] = CATEGORIES,
    mixture_fraction: float = 0.1,
    split: str = "train",
) -> list[Record]:
    """``n`` synthetic records, balanced over ``categories`` (round robin, shuffled per round).

    Args:
        n: number of records; record ``i`` depends only on ``(seed, split, i, settings)``, so a
            smaller ``n`` yields a prefix of a larger one.
        seed: corpus seed.
        sample_rate: audio rate (>= 8000).
        duration: seconds, a fixed value or a ``(low, high)`` range drawn on a 0.1 s grid (>= 0.5 s).
        categories: subset of ``("speech", "music", "sound")``.
        mixture_fraction: probability that a clip also holds a quieter clip of another category.
        split: any name; each split is an independent seed stream ("heldout" clips never equal
            "train" clips).

    Returns:
        ``Record`` s with ``audio [N]`` float32 in ``[-1, 1]`` (``N = round(duration * sample_rate)``),
        ``caption`` (multi-sentence), ``short_caption`` (one line), ``category`` and ``params`` (plain
        JSON data: every synthesis parameter, see ``bagpiper_lib.data.synth.{music,sound,voice}``,
        plus ``caption_template``, and for mixtures ``mixed_with`` and ``mix``).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if sample_rate < 8000:
        raise ValueError(f"sample_rate must be >= 8000, got {sample_rate}")
    categories = tuple(categories)
    if not categories or any(c not in CATEGORIES for c in categories):
        raise ValueError(
            f"categories must be a non-empty subset of {list(CATEGORIES)}, got {list(categories)}"
        )
    if not 0.0 <= mixture_fraction <= 1.0:
        raise ValueError(f"mixture_fraction must be in [0, 1], got {mixture_fraction}")
    durations, code, base = _durations(duration), _split_code(split), seed % (1 << 64)
    records = []
    order: list[int] = []
    for i in range(n):
        if i % len(categories) == 0:  # a fresh shuffle of the categories per round
            block_rng = np.random.default_rng(np.random.SeedSequence([base, code, i // len(categories), 1]))
            order = [int(k) for k in block_rng.permutation(len(categories))]
        category = categories[order[i % len(categories)]]
        rng = np.random.default_rng(np.random.SeedSequence([base, code, i, 0]))
        params, audio, caption, short = _one(
            category, rng, durations, categories, mixture_fraction, sample_rate
        )
        records.append(
            Record(
                id=f"synthetic-{split}-{seed}-{i:06d}",
                caption=caption,
                category=category,
                audio=torch.from_numpy(audio.astype(np.float32)),
                sample_rate=sample_rate,
                duration=params["duration"],
                short_caption=short,
                params=params,
            )
        )
    return records


def attribute_accuracy(predicted_captions: Sequence[str], records: Sequence[Record]) -> dict[str, float]:
    """Fraction of records whose predicted caption states each attribute correctly.

    ``"category"`` is scored over all records; each attribute of ``ATTRIBUTES[c]`` over the records of
    category ``c`` (a missing or wrong value counts as an error). Attributes of categories absent from
    ``records`` are left out. Compare with ``chance_level(attribute)``.
    """
    if len(predicted_captions) != len(records):
        raise ValueError(f"{len(predicted_captions)} captions for {len(records)} records")
    hits: dict[str, list[bool]] = defaultdict(list)
    for caption, record in zip(predicted_captions, records):
        parsed = parse_caption(caption)
        hits["category"].append(parsed.get("category") == record.category)
        for attribute in ATTRIBUTES[record.category]:
            hits[attribute].append(attribute in parsed and parsed[attribute] == record.params.get(attribute))
    return {name: float(np.mean(values)) for name, values in hits.items()}


def timing_error(predicted_captions: Sequence[str], records: Sequence[Record]) -> dict[str, float]:
    """Timing agreement of predicted captions with the ground truth, in seconds.

    Returns ``onset_mae`` (mean absolute error of the i-th stated event onset vs the i-th true onset,
    over sound records), ``onset_coverage`` (fraction of true onsets that got a stated onset),
    ``duration_mae`` and ``duration_coverage`` (clip duration, over all records). An MAE is ``nan``
    when nothing was stated.
    """
    if len(predicted_captions) != len(records):
        raise ValueError(f"{len(predicted_captions)} captions for {len(records)} records")
    onset_errors, onset_total, duration_errors = [], 0, []
    for caption, record in zip(predicted_captions, records):
        parsed = parse_caption(caption)
        if "duration" in parsed:
            duration_errors.append(abs(parsed["duration"] - record.params["duration"]))
        if record.category == "sound":
            truth = record.params["onsets"]
            onset_total += len(truth)
            onset_errors += [abs(p - t) for p, t in zip(parsed.get("onsets", []), truth)]
    return {
        "onset_mae": float(np.mean(onset_errors)) if onset_errors else float("nan"),
        "onset_coverage": len(onset_errors) / onset_total if onset_total else float("nan"),
        "duration_mae": float(np.mean(duration_errors)) if duration_errors else float("nan"),
        "duration_coverage": len(duration_errors) / len(records) if records else float("nan"),
    }
