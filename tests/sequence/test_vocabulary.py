"""Vocabulary: the reference offsets, round trips, disjoint id families and bad input."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bagpiper_lib.sequence import SPECIAL_TOKENS, Vocabulary

PROPERTY = settings(max_examples=60, deadline=None)
QWEN3_VOCAB = 151669  # len() of the Qwen3 tokenizer, incl. its added tokens


@st.composite
def vocabularies(draw) -> Vocabulary:
    return Vocabulary(
        text_vocab_size=draw(st.integers(1, 300)),
        num_codebooks=draw(st.integers(1, 8)),
        codebook_size=draw(st.integers(1, 64)),
        num_special=draw(st.integers(len(SPECIAL_TOKENS), 40)),
    )


# --------------------------------------------------------------------------- reference layout
def test_reference_offsets():
    vocab = Vocabulary.reference(text_vocab_size=QWEN3_VOCAB)
    named = {
        "pad": 0,
        "bos": 1,
        "eos": 2,
        "eot": 3,
        "system": 4,
        "user": 5,
        "assistant": 6,
        "text": 7,
        "audio": 8,
    }
    for name, index in named.items():
        assert getattr(vocab, name) == index
        assert vocab.special(name) == index
    assert vocab.num_special == 256
    assert vocab.text_offset == 256
    codec_offset = 256 + QWEN3_VOCAB
    assert vocab.codec_offset == codec_offset == 151925
    assert vocab.num_codebooks == 8 and vocab.codebook_size == 1024 and vocab.block_size == 1025
    for k in range(8):
        assert vocab.block_start(k) == codec_offset + 1025 * k
    assert vocab.codec_pad_ids().tolist() == [codec_offset + 1025 * k for k in range(8)]
    assert vocab.size == len(vocab) == codec_offset + 8 * 1025 == 160125
    assert vocab.text_to_global([0, QWEN3_VOCAB - 1]).tolist() == [256, codec_offset - 1]
    codes = torch.tensor([[0, 1023]] * 8)
    ids = vocab.codes_to_global(codes)
    assert ids[0].tolist() == [codec_offset + 1, codec_offset + 1024]
    assert ids[7].tolist() == [codec_offset + 7 * 1025 + 1, vocab.size - 1]


def test_special_ids_do_not_depend_on_layout():
    small = Vocabulary(10, 2, 4, num_special=len(SPECIAL_TOKENS))
    big = Vocabulary.reference(QWEN3_VOCAB)
    for index, name in enumerate(SPECIAL_TOKENS):
        assert getattr(small, name) == getattr(big, name) == small.special(name) == index
    assert small.think == 9 and small.audio_in == 10
    assert small.text_offset == len(SPECIAL_TOKENS)


# --------------------------------------------------------------------------- round trips
@PROPERTY
@given(data=st.data(), vocab=vocabularies())
def test_text_round_trip(data, vocab):
    ids = data.draw(st.lists(st.integers(0, vocab.text_vocab_size - 1), max_size=20))
    global_ids = vocab.text_to_global(ids)
    assert global_ids.dtype == torch.long
    assert vocab.is_text(global_ids).all() and not vocab.is_codec(global_ids).any()
    assert vocab.global_to_text(global_ids).tolist() == ids


@PROPERTY
@given(vocab=vocabularies(), batch=st.integers(1, 3), frames=st.integers(0, 12), seed=st.integers(0, 2**16))
def test_codes_round_trip(vocab, batch, frames, seed):
    generator = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, vocab.codebook_size, (batch, vocab.num_codebooks, frames), generator=generator)
    ids = vocab.codes_to_global(codes)
    assert ids.shape == codes.shape and ids.dtype == torch.long
    assert vocab.is_codec(ids).all() and not vocab.is_text(ids).any()
    for k in range(vocab.num_codebooks):
        lo, hi = vocab.codebook_range(k, with_pad=False)
        assert ((ids[:, k] >= lo) & (ids[:, k] < hi)).all()
    assert torch.equal(vocab.global_to_codes(ids), codes)


@PROPERTY
@given(vocab=vocabularies())
def test_codec_pads_map_to_minus_one(vocab):
    pads = vocab.codec_pad_ids()
    assert pads.shape == (vocab.num_codebooks,)
    assert torch.equal(pads, torch.tensor([vocab.block_start(k) for k in range(vocab.num_codebooks)]))
    assert vocab.global_to_codes(pads[:, None]).flatten().tolist() == [-1] * vocab.num_codebooks


@PROPERTY
@given(vocab=vocabularies())
def test_id_families_are_disjoint_and_cover(vocab):
    ids = torch.arange(vocab.size)
    special = ids < vocab.text_offset
    text = vocab.is_text(ids)
    codec = vocab.is_codec(ids)
    assert torch.equal(special.long() + text.long() + codec.long(), torch.ones_like(ids))
    assert int(special.sum()) == vocab.num_special
    assert int(text.sum()) == vocab.text_vocab_size
    assert int(codec.sum()) == vocab.num_codebooks * (vocab.codebook_size + 1)
    # Ids past the end belong to no family.
    beyond = torch.tensor([vocab.size, vocab.size + 7])
    assert not vocab.is_codec(beyond).any() and not vocab.is_text(beyond).any()
    # Codebook ranges tile the codec block in order, each led by its pad.
    edges = [vocab.codec_offset]
    for k in range(vocab.num_codebooks):
        lo, hi = vocab.codebook_range(k)
        assert lo == edges[-1] and hi - lo == vocab.codebook_size + 1
        assert vocab.codebook_range(k, with_pad=False) == (lo + 1, hi)
        edges.append(hi)
    assert edges[-1] == vocab.size


def test_codes_to_global_keeps_leading_dims_and_accepts_int32():
    vocab = Vocabulary(5, 2, 3, num_special=16)
    codes = torch.tensor([[[0, 2], [1, 0]]], dtype=torch.int32)
    ids = vocab.codes_to_global(codes)
    assert ids.dtype == torch.long
    assert ids.tolist() == [[[22, 24], [27, 26]]]  # codec_offset 21; block 1 (pad) starts at 25
    assert vocab.codes_to_global(codes[0]).tolist() == ids[0].tolist()


# --------------------------------------------------------------------------- for_components
def test_for_components_with_stand_ins():
    tokenizer = SimpleNamespace(vocab_size=300)
    codec = SimpleNamespace(num_codebooks=4, codebook_size=16)
    vocab = Vocabulary.for_components(tokenizer, codec)
    assert vocab == Vocabulary(300, 4, 16)
    assert vocab.text_offset == 64 and vocab.size == 64 + 300 + 4 * 17
    assert Vocabulary.for_components(tokenizer, codec, num_special=256).text_offset == 256


@pytest.mark.parametrize(
    ("tokenizer", "codec", "missing"),
    [
        (SimpleNamespace(), SimpleNamespace(num_codebooks=4, codebook_size=16), r"\['vocab_size'\]"),
        (SimpleNamespace(vocab_size=10), SimpleNamespace(num_codebooks=4), r"\['codebook_size'\]"),
        (SimpleNamespace(vocab_size=10), object(), r"\['num_codebooks', 'codebook_size'\]"),
    ],
)
def test_for_components_missing_attribute(tokenizer, codec, missing):
    with pytest.raises(TypeError, match=rf"lacks {missing}; cannot size the vocabulary"):
        Vocabulary.for_components(tokenizer, codec)


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("ids", [[-1], [10], [3, 10], torch.tensor([[0, 11]])])
def test_text_ids_out_of_range(ids):
    vocab = Vocabulary(10, 2, 4)
    with pytest.raises(ValueError, match=r"text ids must lie in \[0, text_vocab_size=10\)"):
        vocab.text_to_global(ids)


def test_global_ids_outside_text_block():
    vocab = Vocabulary(10, 2, 4)
    for bad in ([vocab.eos], [vocab.codec_offset], [vocab.text_offset - 1, vocab.text_offset]):
        with pytest.raises(ValueError, match=r"are not all in the text block \[64, 74\)"):
            vocab.global_to_text(bad)


@pytest.mark.parametrize("value", [-1, 4, 100])
def test_codes_out_of_range(value):
    vocab = Vocabulary(10, 2, 4)
    codes = torch.tensor([[0, 1], [2, value]])
    with pytest.raises(ValueError, match=r"codes out of range.*\[0, codebook_size=4\)"):
        vocab.codes_to_global(codes)


def test_codes_must_be_integers():
    with pytest.raises(ValueError, match="codes must be integers"):
        Vocabulary(10, 2, 4).codes_to_global(torch.zeros(2, 3))


@pytest.mark.parametrize("shape", [(3, 5), (1, 1, 5), (5,)])
def test_codes_wrong_number_of_codebooks(shape):
    vocab = Vocabulary(10, 2, 4)
    with pytest.raises(ValueError, match=r"codes must have shape \[\.\.\., K=2, T\]"):
        vocab.codes_to_global(torch.zeros(shape, dtype=torch.long))
    with pytest.raises(ValueError, match=r"ids must have shape \[\.\.\., K=2, T\]"):
        vocab.global_to_codes(torch.full(shape, vocab.codec_offset, dtype=torch.long))


def test_global_ids_outside_codec_blocks():
    vocab = Vocabulary(10, 2, 4)
    block1 = vocab.block_start(1)
    # Stream 0 holding an id of block 1, and a text id in stream 1.
    for ids in ([[block1], [block1]], [[vocab.codec_offset], [vocab.text_offset]]):
        with pytest.raises(ValueError, match=r"not all in their stream's codec block \(K=2\)"):
            vocab.global_to_codes(torch.tensor(ids))


def test_num_special_too_small():
    with pytest.raises(
        ValueError, match=rf"num_special=5 leaves no slot for the {len(SPECIAL_TOKENS)} named"
    ):
        Vocabulary(10, 2, 4, num_special=5)


@pytest.mark.parametrize("field", ["text_vocab_size", "num_codebooks", "codebook_size", "num_special"])
@pytest.mark.parametrize("value", [0, -3, 2.5, True])
def test_non_positive_sizes(field, value):
    kwargs = {"text_vocab_size": 10, "num_codebooks": 2, "codebook_size": 4, "num_special": 64, field: value}
    with pytest.raises(ValueError, match=rf"{field} must be a positive int, got {value!r}"):
        Vocabulary(**kwargs)


def test_unknown_special_name_and_codebook_index():
    vocab = Vocabulary(10, 2, 4)
    with pytest.raises(KeyError, match="unknown special token 'assistent'"):
        vocab.special("assistent")
    for k in (-1, 2):
        with pytest.raises(ValueError, match=rf"codebook index {k} outside \[0, 2\)"):
            vocab.codebook_range(k)
