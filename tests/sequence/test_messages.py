"""Message builder, task templates and CFG condition dropout."""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bagpiper_lib import sequence, tokenizers
from bagpiper_lib.sequence import templates
from bagpiper_lib.sequence.messages import ConditionDropout, Message, SequenceBuilder
from bagpiper_lib.sequence.sample import Modality

K, N = 4, 16


@pytest.fixture(scope="module")
def tok():
    return tokenizers.build({"name": "bytes", "preset": "tiny"})


@pytest.fixture(scope="module")
def vocab(tok):
    return sequence.Vocabulary(tok.vocab_size, K, N, num_special=16)


@pytest.fixture(scope="module")
def builder(vocab, tok):
    pattern = sequence.patterns.build({"name": "delay", "num_codebooks": K})
    return SequenceBuilder(vocab, tok, pattern, audio_in_length=lambda n, sr: n // 320)


def text_ids(vocab, s):
    return [vocab.text_offset + b for b in s.encode()]


def test_caption_to_audio_layout_is_exact(builder, vocab):
    codes = torch.arange(12).view(K, 3) % N
    s = builder.build(templates.caption_to_audio("hi", codes, system=""))
    pad = vocab.codec_pad_ids().tolist()
    g = vocab.codes_to_global(codes)
    head = [
        vocab.bos,
        vocab.user,
        vocab.text,
        *text_ids(vocab, "hi"),
        vocab.eos,
        vocab.assistant,
        vocab.audio,
    ]
    # stream 0: specials/text, then codebook 0 with its delay tail of block-0 pads, then eos.
    expected0 = head + g[0].tolist() + [pad[0]] * 3 + [vocab.eos]
    assert s.tokens[:, 0].tolist() == expected0
    # stream 2: codebook 2 shifted right by 2 steps inside the audio segment.
    audio = len(head)
    assert s.tokens[audio : audio + 6, 2].tolist() == [pad[2], pad[2], *g[2].tolist(), pad[2]]
    assert s.tokens[:audio, 1:].eq(torch.tensor(pad[1:])).all()
    mods = s.modality.tolist()
    assert mods[3:5] == [Modality.TEXT] * 2 and mods[audio : audio + 6] == [Modality.AUDIO_OUT] * 6
    # Loss: assistant role token through eos in stream 0; streams 1.. only on the audio steps.
    first = head.index(vocab.assistant)
    assert s.loss_mask[:, 0].nonzero().flatten().tolist() == list(range(first, len(s)))
    assert s.loss_mask[:, 1:].any(1).nonzero().flatten().tolist() == list(range(audio, audio + 6))
    assert s.num_targets == len(s) - first


def test_audio_in_placeholders_and_spans(builder, vocab):
    wav = torch.zeros(320 * 5 + 17)
    s = builder.build(templates.audio_to_caption(wav, "ok", sample_rate=16000))
    (span,) = s.audio_in
    assert span.length == 5 and span.audio is wav and span.sample_rate == 16000
    assert s.tokens[span.start : span.start + 5, 0].eq(vocab.audio_in).all()
    assert s.tokens[span.start - 2 : span.start, 0].tolist() == [vocab.user, vocab.audio]
    assert not s.loss_mask[span.start : span.start + 5].any()
    assert (s.modality[span.start : span.start + 5] == Modality.AUDIO_IN).all()
    feats = torch.randn(7, 3)
    s2 = builder.build([Message("user", "audio_in", feats), Message("assistant", "text", "x")])
    assert s2.audio_in[0].length == 7 and s2.audio_in[0].start == 3


def test_eot_inside_a_turn_and_eos_at_its_end(builder, vocab):
    codes = torch.zeros(K, 2, dtype=torch.long)
    s = builder.build(templates.generation("make rain", "think", "rain falls", codes))
    ends = [t for t in s.tokens[:, 0].tolist() if t in (vocab.eos, vocab.eot)]
    # system eos, user eos, then assistant think eot, caption eot, audio eos
    assert ends == [vocab.eos, vocab.eos, vocab.eot, vocab.eot, vocab.eos]
    think = (s.modality == Modality.THINK).nonzero().flatten()
    assert s.tokens[think[0] - 1, 0] == vocab.think


def test_understanding_template_order(builder, vocab, tok):
    s = builder.build(
        templates.understanding(
            torch.zeros(640), "what?", "a dog barks", "it barks", "a dog", sample_rate=16000
        )
    )
    text = tok.decode(
        [t - vocab.text_offset for t in s.tokens[:, 0].tolist() if vocab.is_text(torch.tensor(t))]
    )
    assert text.index("what?") < text.index(templates.CAPTION_PREFIX + "a dog barks") < text.index("it barks")
    assert text.endswith("a dog")
    assert templates.SYSTEM_PROMPTS["understanding"] in text
    assert len(s.audio_in) == 1 and s.audio_in[0].length == 2


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["system", "user", "assistant"]),
            st.sampled_from(["text", "think", "audio_out"]),
            st.text(alphabet="abc xyz", max_size=6),
            st.integers(1, 4),
            st.booleans(),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_loss_mask_covers_exactly_the_target_messages(builder, vocab, spec):
    messages = []
    for role, modality, text, frames, flip in spec:
        content = torch.randint(0, N, (K, frames)) if modality == "audio_out" else text
        target = (role != "assistant") if flip else None
        messages.append(Message(role, modality, content, target=target))
    s = builder.build(messages)
    # Walk the layout by hand: bos, then header(2) + content + end per message.
    expected = [False]
    for m in messages:
        n = (
            builder.pattern.num_steps(m.content.shape[1])
            if m.modality == "audio_out"
            else len(m.content.encode())
        )
        expected += [m.is_target] * (n + 3)
    assert s.loss_mask[:, 0].tolist() == expected
    assert not (s.loss_mask[:, 1:].any(1) & (s.modality != Modality.AUDIO_OUT)).any()
    # Every position of a target audio message's steps is a target in all streams.
    out = (s.modality == Modality.AUDIO_OUT) & s.loss_mask[:, 0]
    assert s.loss_mask[out].all()


# ---------------------------------------------------------------------- condition dropout


def test_condition_dropout_keeps_one_audio_segment(builder, vocab):
    codes = torch.randint(0, N, (K, 3))
    s = builder.build(templates.generation("req", "cot", "cap", codes))
    d = ConditionDropout(vocab, p=1.0)(s, random.Random(0))
    (start, end) = ConditionDropout.audio_out_segments(s)[0]
    assert torch.equal(d.tokens[start : end + 1], s.tokens[start : end + 1])
    pads = vocab.codec_pad_ids()
    pads[0] = vocab.pad
    assert d.tokens[:start].eq(pads).all()
    assert not d.loss_mask[:start].any() and torch.equal(d.loss_mask[start:], s.loss_mask[start:])
    assert d.audio_in == []


def test_condition_dropout_probability_and_no_audio(builder, vocab):
    s = builder.build(templates.caption_to_audio("c", torch.zeros(K, 2, dtype=torch.long)))
    drop = ConditionDropout(vocab, p=0.25)
    rng = random.Random(1)
    hits = sum(drop(s, rng) is not s for _ in range(2000))
    assert 400 < hits < 600
    text = builder.build(templates.text_only("plain"))
    assert ConditionDropout(vocab, p=1.0)(text) is text
    with pytest.raises(ValueError, match=r"p must be a probability in \[0, 1\]"):
        ConditionDropout(vocab, p=1.5)


# ---------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "messages, error, match",
    [
        ([], ValueError, "conversation is empty"),
        ([Message("robot", "text", "x")], ValueError, r"message 0: unknown role 'robot'; expected one of"),
        ([Message("user", "video", "x")], ValueError, r"message 0: unknown modality 'video'"),
        ([Message("user", "text", 3)], TypeError, "content must be a str"),
        (
            [Message("assistant", "audio_out", torch.zeros(K + 1, 2, dtype=torch.long))],
            ValueError,
            rf"codes have {K + 1} codebooks; .* expect K={K}",
        ),
        ([Message("assistant", "audio_out", torch.full((K, 2), N))], ValueError, "codes out of range"),
        ([Message("user", "audio_in", torch.zeros(100))], ValueError, "needs sample_rate"),
        ([Message("user", "audio_in", torch.zeros(100), sample_rate=16000)], ValueError, "too short"),
    ],
)
def test_bad_conversations(builder, messages, error, match):
    with pytest.raises(error, match=match):
        builder.build(messages)


def test_components_that_do_not_fit_the_vocabulary(vocab, tok):
    delay = sequence.patterns.build({"name": "delay", "num_codebooks": K})
    with pytest.raises(ValueError, match="does not fit the vocabulary's text block"):
        SequenceBuilder(sequence.Vocabulary(tok.vocab_size + 1, K, N), tok, delay)
    with pytest.raises(ValueError, match=f"pattern has {K + 1} codebooks but the vocabulary has {K}"):
        SequenceBuilder(vocab, tok, sequence.patterns.build({"name": "delay", "num_codebooks": K + 1}))


def test_max_length(vocab, tok):
    b = SequenceBuilder(
        vocab, tok, sequence.patterns.build({"name": "parallel", "num_codebooks": K}), max_length=8
    )
    assert len(b.build(templates.text_only("abc"))) == 7
    with pytest.raises(ValueError, match="9 positions long, over max_length=8"):
        b.build(templates.text_only("abcde"))
