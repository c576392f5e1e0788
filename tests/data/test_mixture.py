"""The task mixture hits its token ratios, balances categories, and restores exactly from its state."""

from __future__ import annotations

import pytest
import torch

from bagpiper_lib import sequence, tokenizers
from bagpiper_lib.data import synthetic
from bagpiper_lib.data.mixture import PRETRAIN_RATIOS, SFTItem, TaskMixture
from bagpiper_lib.data.records import Record
from bagpiper_lib.sequence.messages import SequenceBuilder
from bagpiper_lib.sequence.sample import Modality

K, N = 4, 32


@pytest.fixture(scope="module")
def builder():
    tok = tokenizers.build({"name": "bytes"})
    vocab = sequence.Vocabulary(tok.vocab_size, K, N, num_special=16)
    return SequenceBuilder(
        vocab,
        tok,
        sequence.patterns.build({"name": "delay", "num_codebooks": K}),
        audio_in_length=lambda n, sr: max(1, n // 320),
    )


def records(n_speech=2, n_music=6, n_sound=12):
    """A skewed corpus: speech is scarce and must be upsampled."""
    g = torch.Generator().manual_seed(0)
    out = []
    for category, count in (("speech", n_speech), ("music", n_music), ("sound", n_sound)):
        for i in range(count):
            frames = 3 + i % 5
            out.append(
                Record(
                    f"{category}{i}",
                    f"a {category} clip number {i}" + " and more" * (i % 3),
                    category,
                    audio=0.1 * torch.randn(320 * frames, generator=g),
                    sample_rate=16000,
                    codes=torch.randint(0, N, (K, frames), generator=g),
                )
            )
    return out


def test_token_ratios_and_category_balance(builder):
    mix = TaskMixture(builder, records(), synthetic.text_corpus(30), seed=0)
    samples = mix.take(900)
    total = sum(PRETRAIN_RATIOS.values())
    for task, share in mix.shares().items():
        assert share == pytest.approx(PRETRAIN_RATIOS[task] / total, abs=0.01), task
    for task in ("caption_to_audio", "audio_to_caption"):
        per_cat = [mix.category_tokens[(task, c)] for c in ("speech", "music", "sound")]
        assert max(per_cat) / min(per_cat) < 1.1, per_cat  # even by tokens although speech has 2 of 20 clips
    kinds = {s.id.split(":")[0] for s in samples}
    assert kinds == set(PRETRAIN_RATIOS)
    c2a = next(s for s in samples if s.id.startswith("caption_to_audio"))
    assert (c2a.modality == Modality.AUDIO_OUT).any() and c2a.loss_mask[:, 1:].any()
    a2c = next(s for s in samples if s.id.startswith("audio_to_caption"))
    assert len(a2c.audio_in) == 1 and not c2a.audio_in


def test_custom_ratios_and_sft_tasks(builder):
    recs = records(2, 2, 2)
    sft = [
        SFTItem(r.id, kind, "request?", "because", "answer")
        for r in recs
        for kind in ("understanding", "generation")
    ]
    mix = TaskMixture(builder, recs, ratios={"understanding": 3, "generation": 1}, sft=sft, seed=1)
    mix.take(400)
    shares = mix.shares()
    assert shares["understanding"] == pytest.approx(0.75, abs=0.02)
    assert set(shares) == {"understanding", "generation"}


def test_state_dict_resumes_exactly(builder):
    mix = TaskMixture(builder, records(), synthetic.text_corpus(10), seed=3)
    mix.take(17)
    state = mix.state_dict()
    expected = [s.tokens for s in mix.take(25)]
    again = TaskMixture(builder, records(), synthetic.text_corpus(10), seed=99)
    again.load_state_dict(state)
    assert all(torch.equal(a, s.tokens) for a, s in zip(expected, again.take(25)))


def test_same_seed_same_stream_other_seed_differs(builder):
    a = [s.id for s in TaskMixture(builder, records(), synthetic.text_corpus(10), seed=5).take(40)]
    b = [s.id for s in TaskMixture(builder, records(), synthetic.text_corpus(10), seed=5).take(40)]
    c = [s.id for s in TaskMixture(builder, records(), synthetic.text_corpus(10), seed=6).take(40)]
    assert a == b and a != c


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"ratios": {"karaoke": 1}}, r"unknown tasks \['karaoke'\]"),
        ({"ratios": {"text_only": 0}}, "no task a positive share"),
        ({"ratios": {"text_only": 1}, "texts": []}, "needs a text corpus"),
        ({"ratios": {"understanding": 1}}, "needs SFT items"),
    ],
)
def test_bad_mixtures(builder, kwargs, match):
    texts = kwargs.pop("texts", ["hello"])
    with pytest.raises(ValueError, match=match):
        TaskMixture(builder, records(1, 1, 1), texts, **kwargs)


def test_records_without_codes_are_named(builder):
    rec = records(1, 1, 1)
    rec[0].codes = None
    mix = TaskMixture(builder, rec, ratios={"caption_to_audio": 1}, seed=0)
    with pytest.raises(ValueError, match="has no codes; run the prepare step"):
        mix.take(6)
