"""DSP checks of audio against synthetic-corpus parameters: estimators on known signals, scores on
ground-truth clips, and clear drops on mismatched or silent audio."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bagpiper_lib.data import synthetic
from bagpiper_lib.evaluation.dsp import detect_onsets, dsp_checks, estimate_f0, estimate_tempo, expected_f0

SR = 16000


@pytest.fixture(scope="module")
def corpus():
    return synthetic.generate(90, seed=0)


def _melodies(records):
    return [r for r in records if r.category == "music" and r.params["texture"] == "melody"]


def _mismatched(records, differs):
    """``(wavs, records)``: each record paired with the audio of the next record (cyclically) for which
    ``differs(own_params, other_params)`` holds."""
    wavs = []
    for i, record in enumerate(records):
        others = records[i + 1 :] + records[:i]
        wavs.append(next(o.audio for o in others if differs(record.params, o.params)))
    return wavs, records


@pytest.mark.parametrize("freq", [65.0, 110.0, 137.5, 220.0, 333.0, 480.0])
def test_estimate_f0_pure_sine_within_one_percent(freq):
    t = np.arange(SR) / SR
    wav = 0.5 * np.sin(2 * np.pi * freq * t + 0.3)
    assert estimate_f0(wav, SR) == pytest.approx(freq, rel=0.01)
    assert estimate_f0(torch.tensor(wav, dtype=torch.float32), SR) == pytest.approx(freq, rel=0.01)


def test_estimate_f0_silence_and_noise_are_nan():
    assert np.isnan(estimate_f0(np.zeros(SR), SR))
    assert np.isnan(estimate_f0(np.zeros(10), SR))
    assert np.isnan(estimate_f0(np.random.default_rng(0).normal(0, 0.1, SR), SR))


def test_detect_onsets_on_clicks():
    times = [0.12, 0.4, 0.53, 0.9, 1.37]
    rng = np.random.default_rng(0)
    wav = rng.normal(0, 0.002, int(1.6 * SR))
    for t in times:
        start = round(t * SR)
        n = round(0.004 * SR)
        wav[start : start + n] += rng.uniform(-0.6, 0.6, n) * np.exp(-np.arange(n) / (0.001 * SR))
    onsets = detect_onsets(wav, SR)
    assert len(onsets) == len(times)
    assert np.abs(np.array(onsets) - times).max() <= 0.02
    assert detect_onsets(np.zeros(SR), SR) == []
    # 0.25 s between clicks -> 240 onsets per minute
    pulse = np.zeros(2 * SR)
    pulse[round(0.1 * SR) :: SR // 4] = 0.8
    assert estimate_tempo(pulse, SR) == pytest.approx(240.0, rel=0.02)
    assert estimate_tempo(np.zeros(SR), SR) is None


def test_ground_truth_passes(corpus):
    scores = dsp_checks([r.audio for r in corpus], corpus)
    assert scores["num_pitch"] == sum(r.category == "speech" for r in corpus) >= 20
    assert scores["num_onsets"] == sum(r.category == "sound" for r in corpus) >= 20
    assert scores["num_tempo"] >= 8
    for attribute in ("pitch", "onsets", "tempo"):
        assert scores[attribute] >= 0.9, scores


def test_expected_f0_from_params():
    assert expected_f0({"f0": 123.0}) == 123.0
    assert expected_f0({"speaker": "female", "pitch": "mid"}) == 200.0
    assert expected_f0({"speaker": "robot"}) is None


def test_swapped_voices_fail_pitch(corpus):
    speech = [r for r in corpus if r.category == "speech"]
    wavs, records = _mismatched(speech, lambda a, b: abs(np.log(a["f0"] / b["f0"])) > 0.2)
    assert dsp_checks(wavs, records)["pitch"] <= 0.2


def test_swapped_sounds_lose_onsets(corpus):
    sounds = [r for r in corpus if r.category == "sound"]
    wavs, records = _mismatched(sounds, lambda a, b: a["onsets"] != b["onsets"])
    clean = dsp_checks([r.audio for r in sounds], sounds)["onsets"]
    assert dsp_checks(wavs, records)["onsets"] <= min(0.6, clean - 0.3)


def test_swapped_melodies_fail_tempo(corpus):
    melodies = _melodies(corpus)

    def unrelated(a, b):
        return all(abs(np.log(a["tempo"] * k / b["tempo"])) > 0.2 for k in (0.5, 1.0, 2.0))

    wavs, records = _mismatched(melodies, unrelated)
    assert dsp_checks(wavs, records)["tempo"] <= 0.2


def test_silent_or_short_audio_scores_zero(corpus):
    silent = [torch.zeros_like(r.audio) for r in corpus]
    scores = dsp_checks(silent, corpus)
    assert (scores["pitch"], scores["onsets"], scores["tempo"]) == (0.0, 0.0, 0.0)
    short = [r.audio[: int(0.05 * SR)] for r in corpus]
    scores = dsp_checks(short, corpus)
    assert (scores["pitch"], scores["onsets"], scores["tempo"]) == (0.0, 0.0, 0.0)


def test_counts_resampled_audio_and_errors(corpus):
    speech = [r for r in corpus if r.category == "speech"][:6]
    scores = dsp_checks([r.audio for r in speech], speech)
    assert scores["num_pitch"] == 6 and scores["num_onsets"] == scores["num_tempo"] == 0
    assert "onsets" not in scores and "tempo" not in scores
    # audio at another rate: pass the rate explicitly (24 kHz via linear interpolation)
    up = [np.interp(np.arange(int(len(r.audio) * 1.5)) / 1.5, np.arange(len(r.audio)), r.audio.numpy())
          for r in speech]  # fmt: skip
    assert dsp_checks(up, speech, sample_rate=24000)["pitch"] == scores["pitch"]
    with pytest.raises(ValueError):
        dsp_checks([speech[0].audio], speech)
