"""Tests of ``bagpiper_lib.data.synthetic``: determinism, splits, caption round trips, accuracy
scoring, and DSP checks that each clip's audio matches its stated parameters."""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bagpiper_lib.data import synthetic
from bagpiper_lib.data.records import CATEGORIES
from bagpiper_lib.data.synth import music
from bagpiper_lib.data.synth.level import level_db, set_level
from bagpiper_lib.data.synth.music import DYNAMIC_LEVELS, MAX_NOTES, MIN_TAIL, midi_to_hz
from bagpiper_lib.data.synth.sound import LOUDNESS_LEVELS
from bagpiper_lib.data.synth.voice import F0_HZ

SR = 16000
EXTRA_KEYS = {"music": ("note_count",), "sound": ("onsets", "event_durations"), "speech": ("vowel_count",)}


@pytest.fixture(scope="module")
def timed_corpus():
    """300 records, a third of them mixtures (every category and template occurs often), and the
    seconds their generation took."""
    start = time.perf_counter()
    records = synthetic.generate(300, seed=1, mixture_fraction=0.3)
    return records, time.perf_counter() - start


@pytest.fixture(scope="module")
def corpus(timed_corpus):
    return timed_corpus[0]


@pytest.fixture(scope="module")
def clean():
    """Single-category clips for the DSP checks."""
    return synthetic.generate(150, seed=5, mixture_fraction=0.0)


def _digest(record) -> str:
    return hashlib.sha256(record.audio.numpy().tobytes()).hexdigest()


# ---------------------------------------------------------------------------- generation


def test_same_seed_identical_different_seed_differs():
    a, b = synthetic.generate(12, seed=7), synthetic.generate(12, seed=7)
    assert [_digest(r) for r in a] == [_digest(r) for r in b]
    assert [(r.id, r.caption, r.short_caption, r.params) for r in a] == [
        (r.id, r.caption, r.short_caption, r.params) for r in b
    ]
    c = synthetic.generate(12, seed=8)
    assert {_digest(r) for r in a}.isdisjoint(_digest(r) for r in c)
    assert [r.caption for r in a] != [r.caption for r in c]


def test_smaller_n_is_a_prefix():
    small, large = synthetic.generate(5, seed=2), synthetic.generate(11, seed=2)
    assert [(r.id, r.caption, _digest(r)) for r in small] == [
        (r.id, r.caption, _digest(r)) for r in large[:5]
    ]


def test_heldout_never_equals_train():
    train = synthetic.generate(60, seed=0)
    heldout = synthetic.generate(60, seed=0, split="heldout")
    assert {_digest(r) for r in train}.isdisjoint(_digest(r) for r in heldout)
    assert {r.id for r in train}.isdisjoint(r.id for r in heldout)
    assert len({_digest(r) for r in train}) == len(train)


def test_balanced_categories_and_subsets(corpus):
    assert Counter(r.category for r in corpus) == {c: 100 for c in CATEGORIES}
    only = synthetic.generate(10, categories=("music", "sound"), mixture_fraction=1.0)
    assert Counter(r.category for r in only) == {"music": 5, "sound": 5}
    assert all(
        r.params["mixed_with"] in ("music", "sound") and r.params["mixed_with"] != r.category for r in only
    )


def test_audio_valid_and_params_json(corpus):
    for r in corpus:
        x = r.audio.numpy()
        assert r.audio.dim() == 1 and x.dtype == np.float32 and r.sample_rate == SR
        assert np.isfinite(x).all() and np.abs(x).max() <= 1.0
        assert np.sqrt(np.mean(x**2)) > 1e-3
        assert len(x) == round(r.params["duration"] * SR) and r.duration == r.params["duration"]
        assert 1.0 <= r.duration <= 2.0 and abs(r.duration * 10 - round(r.duration * 10)) < 1e-9
        assert json.loads(json.dumps(r.params)) == r.params
        assert r.caption.count(". ") >= 1 and "\n" not in r.short_caption
    assert len({r.id for r in corpus}) == len(corpus)


@pytest.mark.parametrize(("rate", "duration"), [(8000, 0.5), (22050, (1.2, 1.4)), (24000, 3.0)])
def test_sample_rate_and_duration(rate, duration):
    records = synthetic.generate(6, seed=3, sample_rate=rate, duration=duration)
    for r in records:
        low, high = (duration, duration) if isinstance(duration, float) else duration
        assert r.sample_rate == rate and low - 1e-9 <= r.duration <= high + 1e-9
        assert r.audio.shape == (round(r.duration * rate),)
        assert np.isfinite(r.audio.numpy()).all() and r.audio.abs().max() <= 1.0
        assert synthetic.parse_caption(r.caption)["duration"] == pytest.approx(r.duration)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n": -1},
        {"n": 3, "sample_rate": 4000},
        {"n": 3, "duration": (0.2, 1.0)},
        {"n": 3, "duration": (2.0, 1.0)},
        {"n": 3, "categories": ("speech", "noise")},
        {"n": 3, "categories": ()},
        {"n": 3, "mixture_fraction": 1.5},
        {"n": 3, "split": ""},
    ],
)
def test_invalid_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        synthetic.generate(**kwargs)


def test_generation_speed(timed_corpus):
    records, seconds = timed_corpus
    assert len(records) == 300 and seconds < 30.0  # 200 clips take about 1.5 s of one CPU core


# ---------------------------------------------------------------------------- captions


def test_parse_recovers_every_attribute_of_every_template(corpus):
    seen = Counter((r.category, r.params["caption_template"], "mixed_with" in r.params) for r in corpus)
    for c in CATEGORIES:
        for t in range(synthetic.TEMPLATES_PER_CATEGORY):
            assert seen[(c, t, False)] > 0 and seen[(c, t, True)] > 0, (c, t)
    for r in corpus:
        parsed = synthetic.parse_caption(r.caption)
        assert parsed["category"] == r.category, r.caption
        assert parsed["duration"] == pytest.approx(r.params["duration"]), r.caption
        assert parsed.get("mixed_with") == r.params.get("mixed_with"), r.caption
        for key in (*synthetic.ATTRIBUTES[r.category], *EXTRA_KEYS[r.category]):
            assert parsed[key] == r.params[key], (key, r.caption)


def test_short_caption_states_category_and_attributes(corpus):
    shared = {
        "music": ("key", "mode", "tempo", "instrument", "dynamics", "texture"),
        "sound": ("events", "background"),
        "speech": ("pitch", "speaker", "vowels"),
    }
    for r in corpus:
        parsed = synthetic.parse_caption(r.short_caption)
        assert parsed["category"] == r.category and parsed.get("mixed_with") == r.params.get("mixed_with")
        assert all(parsed[k] == r.params[k] for k in shared[r.category]), r.short_caption


def test_accuracy_is_one_on_ground_truth_and_timing_exact(corpus):
    acc = synthetic.attribute_accuracy([r.caption for r in corpus], corpus)
    expected = {"category", *(a for c in CATEGORIES for a in synthetic.ATTRIBUTES[c])}
    assert set(acc) == expected and all(v == 1.0 for v in acc.values())
    timing = synthetic.timing_error([r.caption for r in corpus], corpus)
    assert timing == {"onset_mae": 0.0, "onset_coverage": 1.0, "duration_mae": 0.0, "duration_coverage": 1.0}


def _swap(pattern: str, values: list[str], caption: str) -> str:
    """Replace the first match of ``pattern`` (one group) by the next value in ``values``."""
    match = re.search(pattern, caption)
    if not match:
        return caption
    nxt = values[(values.index(match.group(1)) + 1) % len(values)]
    return caption[: match.start(1)] + nxt + caption[match.end(1) :]


def test_accuracy_drops_on_corrupted_captions(corpus):
    records = [r for r in corpus if "mixed_with" not in r.params]
    corrupted = []
    for r in records:
        c = _swap(r"\b([A-G]) (?:major|minor)", list("CDEFGA"), r.caption)
        c = _swap(r"\b(60|90|120|150) (?:BPM|beats)", ["60", "90", "120", "150"], c)
        c = _swap(r"\b(beep|click|thud)\b", ["beep", "click", "thud"], c)
        c = _swap(r"\b(male|female|child)-like", ["male", "female", "child"], c)
        corrupted.append(c)
    acc = synthetic.attribute_accuracy(corrupted, records)
    for attribute in ("key", "tempo", "speaker"):
        assert acc[attribute] == 0.0, attribute
    assert acc["events"] < 0.5 and acc["mode"] == 1.0 and acc["category"] == 1.0
    # another record's caption of a different category: category accuracy drops to zero
    others = [
        next(o.caption for o in records[i:] + records[:i] if o.category != r.category)
        for i, r in enumerate(records)
    ]
    assert synthetic.attribute_accuracy(others, records)["category"] == 0.0
    missing = synthetic.attribute_accuracy(["Nothing to report."] * len(records), records)
    assert set(missing) == set(acc) and all(v == 0.0 for v in missing.values())
    with pytest.raises(ValueError):
        synthetic.attribute_accuracy(["x"], records)


def test_chance_levels():
    assert synthetic.chance_level("category") == pytest.approx(1 / 3)
    assert synthetic.chance_level("key") == pytest.approx(1 / 6)
    assert synthetic.chance_level("mode") == pytest.approx(1 / 2)
    assert synthetic.chance_level("tempo") == pytest.approx(1 / 4)
    assert synthetic.chance_level("instrument") == pytest.approx(1 / 4)
    assert synthetic.chance_level("speaker") == pytest.approx(1 / 3)
    assert synthetic.chance_level("events") == pytest.approx(1 / (6 + 36 + 216))
    assert synthetic.chance_level("vowels") == pytest.approx(1 / (5 + 25 + 125 + 625))
    for category, attributes in synthetic.ATTRIBUTES.items():
        for a in attributes:
            assert 0.0 < synthetic.chance_level(a) < 1.0, (category, a)
    with pytest.raises(KeyError, match="tempo"):
        synthetic.chance_level("tempi")


_VOCAB = ["A", "minor", "C major", "BPM", "90", "0.20 s", "at", "from", "beep", "thud", "sweep", "rising",
          "voice", "a-e-o", '"a e"', "vowel", "Underneath,", "seconds", "-second", "events", "three", "99999",
          "register", "high", "low-pitched", "child-like", "(", ")", ",", ";", ".", ":", "then", "and"]  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(st.one_of(st.text(max_size=300), st.lists(st.sampled_from(_VOCAB), max_size=40).map(" ".join)))
def test_parse_never_raises(text):
    parsed = synthetic.parse_caption(text)
    assert isinstance(parsed, dict)
    assert parsed.get("category", "music") in CATEGORIES


def test_parse_non_text_and_empty():
    assert synthetic.parse_caption(None) == {} and synthetic.parse_caption("") == {}
    assert synthetic.parse_caption("A loud beep.") == {
        "category": "sound",
        "events": ["beep"],
        "event_count": 1,
        "loudness": "loud",
    }


def test_text_corpus():
    texts = synthetic.text_corpus(50, seed=0)
    assert texts == synthetic.text_corpus(50, seed=0) and texts != synthetic.text_corpus(50, seed=1)
    assert len(texts) == 50 and len(set(texts)) > 40
    assert all(t[0].isupper() and t.endswith(".") for t in texts)


# ---------------------------------------------------------------------------- DSP sanity


def _peak_hz(x: np.ndarray) -> float:
    """Strongest spectral peak of ``x`` (Hann window, 1/16 Hz bins)."""
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x)), 16 * SR))
    return float(np.fft.rfftfreq(16 * SR, 1 / SR)[np.argmax(spectrum)])


def test_music_first_note_is_the_tonic(clean):
    melodies = [r for r in clean if r.category == "music" and r.params["texture"] == "melody"]
    assert {r.params["instrument"] for r in melodies} == {"piano", "organ", "pluck", "bell"}
    for r in melodies:
        p, x = r.params, r.audio.numpy().astype(np.float64)
        start = round(p["onsets"][0] * SR)
        peak = _peak_hz(x[start : start + round(p["note_duration"] * SR)])
        assert p["notes"][0][0] % 12 == {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9}[p["key"]]
        assert midi_to_hz(p["notes"][0][0]) == pytest.approx(p["tonic_hz"], rel=1e-4)
        assert abs(12 * math.log2(peak / p["tonic_hz"])) < 0.25, (p["instrument"], p["register"], peak)
        assert level_db(x, SR) == pytest.approx(p["level_db"], abs=1e-6) or np.abs(x).max() >= 0.989


@pytest.mark.parametrize("duration", [0.5, 0.6, 0.65, 1.0, 1.23, 1.5, 3.0, 6.0])
def test_music_tempo_and_mode_can_be_heard(duration):
    """Both textures move in eighth notes, with as many onsets as fit while the last sounds
    ``MIN_TAIL``: two or more from 0.65 s. Every clip of two or more notes (every progression) plays a
    pitch class of the stated mode that the other mode lacks, and none outside its scale."""
    scales = {"major": ({0, 2, 4, 5, 7, 9, 11}, {4, 9, 11}), "minor": ({0, 2, 3, 5, 7, 8, 10}, {3, 8, 10})}
    rng, seen = np.random.default_rng(0), Counter()
    for _ in range(300):
        p = music.sample_params(rng, duration)
        eighth, onsets = 30.0 / p["tempo"], np.array(p["onsets"])
        assert p["note_duration"] == pytest.approx(eighth, abs=1e-4) and len(onsets) == p["note_count"]
        assert np.diff(onsets) == pytest.approx(np.full(len(onsets) - 1, eighth), abs=2e-4)
        assert onsets[-1] <= duration - MIN_TAIL + 1e-6
        assert p["note_count"] == MAX_NOTES or onsets[-1] + eighth > duration - MIN_TAIL + 1e-6
        assert p["note_count"] >= (2 if duration >= 0.65 else 1)
        scale, only_this_mode = scales[p["mode"]]
        classes = {(m - p["notes"][0][0]) % 12 for chord in p["notes"] for m in chord}
        assert classes <= scale, p
        if p["texture"] == "chords" or p["note_count"] >= 2:
            assert classes & only_this_mode, p
        seen[p["texture"], p["note_count"] >= 2] += 1
    assert seen["melody", True] + seen["chords", True] > 0


def _f0_autocorrelation(x: np.ndarray) -> float:
    x = x - x.mean()
    ac = np.correlate(x, x, "full")[len(x) - 1 :]
    lo, hi = SR // 400, SR // 70
    window = ac[lo:hi]
    lag = lo + int(np.flatnonzero(window >= 0.9 * window.max())[0])
    while lag + 1 < hi and ac[lag + 1] > ac[lag]:  # climb to the local maximum
        lag += 1
    return SR / lag


def test_voice_f0_matches_pitch_class(clean):
    voices = [r for r in clean if r.category == "speech"]
    assert {(r.params["speaker"], r.params["pitch"]) for r in voices} == set(F0_HZ)
    for r in voices:
        p, x = r.params, r.audio.numpy().astype(np.float64)
        start, n = round(p["onset"] * SR), round(p["vowel_duration"] * SR)
        f0 = _f0_autocorrelation(x[start + SR // 50 : start + n - SR // 50])
        nearest = min(F0_HZ, key=lambda k: abs(math.log(F0_HZ[k] / f0)))
        assert nearest == (p["speaker"], p["pitch"]) and f0 == pytest.approx(p["f0"], rel=0.03)
        assert np.abs(x[: start - 1]).max() == 0.0  # silent before the voice enters


def test_sound_onsets_are_energy_rises(clean):
    sounds = [r for r in clean if r.category == "sound"]
    assert {r.params["background"] for r in sounds} == {"silence", "hum", "noise"}
    hop, frame = SR // 400, SR // 200  # 2.5 ms hop, 5 ms frames
    for r in sounds:
        p, x = r.params, r.audio.numpy().astype(np.float64)
        rms = np.sqrt(np.convolve(x**2, np.ones(frame) / frame, mode="valid")[::hop])
        centres = (np.arange(len(rms)) * hop + frame / 2) / SR
        for onset, dur in zip(p["onsets"], p["event_durations"]):
            threshold = 0.25 * rms[(centres >= onset) & (centres < onset + dur)].max()
            rises = np.flatnonzero((np.abs(centres - onset) <= 0.06) & (rms > threshold))
            assert len(rises) and abs(centres[rises[0]] - onset) <= 0.03, (p["events"], onset)
        if p["background"] == "silence":
            assert np.abs(x[: round(p["onsets"][0] * SR)]).max() == 0.0
        if p["background"] == "silence":  # the loudest event is at the stated level (or capped at 0.99)
            assert level_db(x, SR) == pytest.approx(p["level_db"], abs=1e-6) or np.abs(x).max() >= 0.989


def test_level_helpers():
    t = np.arange(SR) / SR
    sine = 0.5 * np.sin(2 * np.pi * 1000 * t)
    assert level_db(sine, SR) == pytest.approx(20 * math.log10(0.5 / math.sqrt(2)), abs=0.01)
    burst = np.zeros(SR)
    burst[8000:8400] = 1.0  # 25 ms at full scale: the loudest window holds all of it
    assert level_db(burst, SR) == pytest.approx(0.0, abs=1e-9)
    assert level_db(np.zeros(100), SR) == float("-inf") and level_db(np.zeros(0), SR) == float("-inf")
    assert level_db(set_level(sine, -30.0, SR), SR) == pytest.approx(-30.0, abs=1e-9)
    capped = set_level(sine, 0.0, SR)  # a sine at 0 dB RMS would peak at 1.41: capped at 0.99 instead
    assert np.abs(capped).max() == pytest.approx(0.99) and level_db(capped, SR) < -3.0
    assert set_level(np.zeros(10), -20.0, SR).tolist() == [0.0] * 10


def test_stated_loudness_and_dynamics_are_heard_whatever_the_event_or_instrument():
    """The level orders the classes for every event type and instrument: a "loud" click is louder than a
    "moderate" beep (peak-normalised events were not: a click carries a fraction of a beep's energy)."""
    records = synthetic.generate(240, seed=9, categories=("music", "sound"), mixture_fraction=0.0)
    for attribute, levels in (("loudness", LOUDNESS_LEVELS), ("dynamics", DYNAMIC_LEVELS)):
        names = sorted(levels, key=levels.get)
        bounds = [(levels[a] + levels[b]) / 2 for a, b in zip(names, names[1:])]  # midpoints
        seen = set()
        for r in records:
            if attribute not in r.params:
                continue
            measured = level_db(r.audio.numpy().astype(np.float64), SR)
            heard = names[int(np.searchsorted(bounds, measured))]
            assert heard == r.params[attribute], (r.params, measured)
            seen.add(r.params[attribute])
        assert seen == set(names)
