"""Probes: documented keys and ranges on a tiny model; exact scores from oracle stubs; clear errors."""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import pytest
import torch

from bagpiper_lib.data import synthetic
from bagpiper_lib.evaluation import KeywordAnswerer, probes, report
from bagpiper_lib.model import PRESETS, BagpiperModel

SETTINGS = probes.GenerationSettings(max_steps=3, temperature=0.0, seed=0, cfg_scale=1.0)  # no CFG: 5x faster
KEYS = {
    "understanding": {
        "num_items",
        "wer",
        "text_cosine",
        "mean_caption_words",
        "qa_accuracy",
        "qa_chance",
        "num_questions",
        "attributes",
        "attribute_accuracy_mean",
        "attribute_chance_mean",
    },
    "generation": {
        "num_items",
        "empty_clips",
        "fad",
        "audio_cosine",
        "generated_seconds_mean",
        "reference_seconds_mean",
        "duration_abs_error_mean",
        "dsp",
    },
    "cycle": {
        "num_items",
        "empty_clips",
        "audio_cycle_cosine",
        "text_cycle_cosine",
        "text_cycle_wer",
        "attributes",
        "attribute_accuracy_mean",
        "attribute_chance_mean",
    },
}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def records():
    return synthetic.generate(5, seed=0, split="heldout", duration=1.0)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return BagpiperModel.from_config("tiny")


class Oracle:
    """A "model" whose captions and audio are the references: every score must be perfect."""

    def __init__(self, records, audio_in=True, audio_out=True):
        self.records = records
        self.encoder = object() if audio_in else None
        self.codec = SimpleNamespace(sample_rate=records[0].sample_rate) if audio_out else None

    def caption(self, wavs, sample_rate, seed=None, **text):
        return [next(r.caption for r in self.records if torch.equal(r.audio, w)) for w in wavs]

    def synthesize(self, captions, seed=None, **audio):
        return [next(r.audio.clone() for r in self.records if r.caption == c) for c in captions]


def in_unit(value, low=0.0):
    return low - 1e-6 <= value <= 1 + 1e-6


def test_probes_on_tiny_model(model, records):
    results = probes.run_probes(model, "understanding,generation,cycle", records, SETTINGS)
    assert list(results) == list(probes.PROBES)
    for name, result in results.items():
        assert set(result.metrics) == KEYS[name] and result.metrics["num_items"] == len(records)
        assert [item["id"] for item in result.items] == [r.id for r in records]
    u, g, c = (results[n].metrics for n in probes.PROBES)
    assert u["wer"] >= 0 and in_unit(u["text_cosine"], -1) and u["mean_caption_words"] >= 0
    assert in_unit(u["qa_accuracy"]) and 0.25 <= u["qa_chance"] <= 0.5 and u["num_questions"] >= len(records)
    for metrics in (u, c):
        table = metrics["attributes"]
        assert table["category"]["count"] == len(records) and {"tempo", "pitch", "events"} <= set(table)
        assert all(in_unit(v["accuracy"]) and 0 < v["chance"] <= 1 for v in table.values())
        assert in_unit(metrics["attribute_accuracy_mean"]) and in_unit(metrics["attribute_chance_mean"])
    assert g["fad"] is None or (g["fad"] >= 0 and math.isfinite(g["fad"]))
    assert in_unit(g["audio_cosine"], -1) and 0 <= g["empty_clips"] <= len(records)
    assert g["generated_seconds_mean"] >= 0 and g["reference_seconds_mean"] == pytest.approx(1.0)
    assert (
        in_unit(c["audio_cycle_cosine"], -1)
        and in_unit(c["text_cycle_cosine"], -1)
        and c["text_cycle_wer"] >= 0
    )
    pair = results["generation"].audio[0]
    assert pair.generated_rate == model.codec.sample_rate and pair.reference.shape == records[0].audio.shape


def test_oracle_understanding_scores_perfectly(records):
    result = probes.understanding_probe(Oracle(records), records, SETTINGS)
    metrics = result.metrics
    assert metrics["qa_accuracy"] == 1.0 and metrics["num_questions"] >= 3 * len(records)
    assert all(v["accuracy"] == 1.0 for v in metrics["attributes"].values())
    assert metrics["wer"] == 0.0 and metrics["text_cosine"] == pytest.approx(1.0)
    assert all(item["qa_correct"] == item["qa_total"] > 0 for item in result.items)


def test_oracle_generation_and_cycle(records):
    # no audio input: the audio embedder falls back to a tiny whisper encoder
    generation = probes.generation_probe(Oracle(records, audio_in=False), records, SETTINGS).metrics
    assert generation["fad"] == pytest.approx(0.0, abs=1e-6) and generation["audio_cosine"] == pytest.approx(
        1.0
    )
    assert generation["empty_clips"] == 0 and generation["duration_abs_error_mean"] == 0.0
    # The oracle returns the reference audio: the DSP checks pass on every clip they can score.
    dsp = generation["dsp"]
    scored = [k for k in ("pitch", "onsets", "tempo") if dsp.get(f"num_{k}")]
    assert scored and all(dsp[k] >= 0.9 for k in scored)
    cycle = probes.cycle_probe(Oracle(records), records, SETTINGS).metrics
    assert cycle["audio_cycle_cosine"] == pytest.approx(1.0) and cycle["text_cycle_cosine"] == pytest.approx(
        1.0
    )
    assert cycle["attribute_accuracy_mean"] == 1.0 and cycle["text_cycle_wer"] == 0.0


def test_keyword_answerer_reads_every_reference_caption():
    records = synthetic.generate(90, seed=1, split="qa", duration=0.5, mixture_fraction=0.5)
    captions = [r.caption for r in records]
    scores = report.qa_scores(captions, records, KeywordAnswerer(), seed=3)
    assert scores["qa_accuracy"] == 1.0 and scores["num_questions"] > 200
    shuffled = report.qa_scores(captions[1:] + captions[:1], records, KeywordAnswerer(), seed=3)
    assert shuffled["qa_accuracy"] < 0.8  # the wrong caption does not answer


def test_questions_are_deterministic_and_valid(records):
    for record in records:
        questions = report.synthetic_questions(record, seed=2)
        assert questions == report.synthetic_questions(record, seed=2)
        for q in questions:
            assert 2 <= len(q["choices"]) <= 4 and len(set(q["choices"])) == len(q["choices"])
    own = dataclasses.replace(
        records[0], params={"questions": [{"question": "?", "choices": ["x"], "answer": 0}]}
    )
    assert report.record_questions(own) == [{"question": "?", "choices": ["x"], "answer": 0}]
    bad = dataclasses.replace(
        records[0], params={"questions": [{"question": "?", "choices": [], "answer": 0}]}
    )
    with pytest.raises(ValueError, match="choices"):
        report.record_questions(bad)


def test_unknown_probe_and_missing_modalities(model, records):
    with pytest.raises(probes.ProbeError, match="did you mean 'understanding'"):
        probes.resolve_probes("understandin,cycle")
    with pytest.raises(probes.ProbeError, match="no probe given"):
        probes.resolve_probes(" , ")
    deaf = BagpiperModel.from_config({**PRESETS["tiny"], "encoder": None})
    for name in ("understanding", "cycle"):
        with pytest.raises(probes.ProbeError, match=f"the {name} probe needs audio input.*no audio encoder"):
            probes.run_probes(deaf, ["generation", name], records, SETTINGS)
    with pytest.raises(probes.ProbeError, match="generation probe needs audio output"):
        probes.generation_probe(Oracle(records, audio_out=False), records, SETTINGS)


class NaNEmbedder:
    def embed(self, items, sample_rate=None):
        out = torch.ones(len(items), 4)
        out[-1, 0] = float("nan")
        return out


def test_bad_outputs_and_inputs_are_reported(records):
    short = Oracle(records)
    short.caption = lambda wavs, sr, **kw: ["a caption"] * (len(wavs) - 1)
    with pytest.raises(
        probes.ProbeError, match="understanding probe: model.caption returned 4 outputs for 5"
    ):
        probes.understanding_probe(short, records, SETTINGS)
    with pytest.raises(probes.ProbeError, match="generation probe.*NaN or Inf.*" + records[-1].id):
        probes.generation_probe(Oracle(records), records, SETTINGS, audio_embedder=NaNEmbedder())
    with pytest.raises(probes.ProbeError, match="understanding probe.*text embedder returned NaN"):
        probes.understanding_probe(Oracle(records), records, SETTINGS, text_embedder=NaNEmbedder())
    empty_ref = [dataclasses.replace(records[0], caption="...")]
    with pytest.raises(probes.ProbeError, match="reference caption is empty"):
        probes.understanding_probe(Oracle(empty_ref), empty_ref, SETTINGS)
    with pytest.raises(probes.ProbeError, match="no records"):
        probes.understanding_probe(Oracle(records), [], SETTINGS)
    with pytest.raises(ValueError, match="4 captions for 5 references"):
        report.caption_scores(["x"] * 4, [r.caption for r in records], None)
    with pytest.raises(ValueError, match="temperature"):
        probes.GenerationSettings(temperature=-1)
