"""The compact tokenizers: ``bytes`` (exact UTF-8 ids) and the trained byte-level ``bpe``."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bagpiper_lib import tokenizers
from bagpiper_lib.tokenizers.bpe import MIN_VOCAB_SIZE, BPETokenizer
from bagpiper_lib.tokenizers.corpus import TINY_CORPUS

# Any Unicode text (hypothesis excludes lone surrogates), plus text biased towards the hard cases:
# whitespace runs, non-Latin scripts, combining marks, emoji (incl. ZWJ sequences).
HARD = " \t\n\r\x0b\x0c\u00a0\u3000éüßçñ日本語中文한국어Ελληνικάكتابहिन्दी\u0301\u200d😀🎵👩‍🔬🇫🇷"
TEXTS = st.one_of(st.text(max_size=80), st.text(alphabet=HARD + "abc .,!?0123456789", max_size=80))
SAMPLES = ["", " ", "   \t\t\n\n  ", "A piano plays.", "café e\u0301", "日本語の音声", "👩‍🔬🎹🇫🇷", "x\r\ny"]

_BPE = tokenizers.build({"name": "bpe", "preset": "tiny"})
_BYTES = tokenizers.build({"name": "bytes", "preset": "tiny"})


# ---------------------------------------------------------------------- bytes
def test_bytes_exact_ids():
    assert _BYTES.vocab_size == 256
    assert _BYTES.encode("Hi!") == [72, 105, 33]
    assert _BYTES.encode("é🎵") == [0xC3, 0xA9, 0xF0, 0x9F, 0x8E, 0xB5]
    assert _BYTES.encode(" \n") == [32, 10]
    assert _BYTES.decode([0xE6, 0x97, 0xA5]) == "日"


def test_bytes_invalid_utf8_decodes_to_replacement_char():
    assert _BYTES.decode([0x61, 0xE6, 0x97]) == "a\ufffd"  # a character cut in the middle


@settings(max_examples=50, deadline=None)
@given(TEXTS)
def test_bytes_round_trip(text):
    ids = _BYTES.encode(text)
    assert len(ids) == len(text.encode("utf-8"))
    assert _BYTES.decode(ids) == text


# ---------------------------------------------------------------------- bpe
@pytest.mark.parametrize("text", SAMPLES)
def test_bpe_round_trip_samples(text):
    assert _BPE.decode(_BPE.encode(text)) == text


@settings(max_examples=50, deadline=None)
@given(TEXTS)
def test_bpe_round_trip(text):
    ids = _BPE.encode(text)
    assert all(0 <= i < _BPE.vocab_size for i in ids)
    assert _BPE.decode(ids) == text


def test_bpe_tiny_preset_is_deterministic_and_compresses_captions():
    again = tokenizers.build({"name": "bpe", "preset": "tiny"})
    assert again.backend.get_vocab() == _BPE.backend.get_vocab()
    assert _BPE.vocab_size == 384
    caption = TINY_CORPUS[0]
    assert len(_BPE.encode(caption)) < len(caption.encode("utf-8")) / 2


def test_bpe_train_on_own_texts_and_save(tmp_path):
    texts = ["the bell rings", "the bell rings twice", "a bell and a drum"] * 5
    tok = BPETokenizer.train(texts, vocab_size=270, min_frequency=2)
    assert 256 < tok.vocab_size <= 270
    assert len(tok.encode("the bell rings")) < len("the bell rings")
    with pytest.raises(ValueError, match=r"trained on in-memory texts.*save_pretrained\(dir\)"):
        tok.spec()
    tok.save_pretrained(tmp_path)
    loaded = tokenizers.build({"name": "bpe", "pretrained": str(tmp_path)})
    assert loaded.encode("the drum rings 🥁") == tok.encode("the drum rings 🥁")
    assert loaded.spec() == {"name": "bpe", "pretrained": str(tmp_path)}


def test_bpe_stops_early_on_small_corpus():
    tok = BPETokenizer.train(["ab ab ab"], vocab_size=5000)
    assert 256 < tok.vocab_size < 300


@pytest.mark.parametrize("vocab_size", [100, 256, 256.5, True])
def test_bpe_vocab_size_too_small(vocab_size):
    with pytest.raises(
        ValueError, match=rf"bpe vocab_size must be an int >= {MIN_VOCAB_SIZE} .*got {vocab_size!r}"
    ):
        tokenizers.build({"name": "bpe", "corpus": "tiny", "vocab_size": vocab_size})


def test_bpe_bad_corpus_and_arguments(tmp_path):
    with pytest.raises(
        ValueError, match=r"bpe corpus 'wiki' is not a built-in corpus \['synthetic', 'tiny'\]"
    ):
        tokenizers.build({"name": "bpe", "corpus": "wiki"})
    with pytest.raises(ValueError, match="bpe corpus is empty"):
        BPETokenizer.train([], vocab_size=300)
    with pytest.raises(TypeError, match=r"bpe corpus\[1\] must be a str, got int"):
        BPETokenizer.train(["ok", 3], vocab_size=300)
    with pytest.raises(TypeError, match="not a single str"):
        BPETokenizer.train("one text", vocab_size=300)
    with pytest.raises(ValueError, match="needs pretrained=<directory> or corpus="):
        tokenizers.build("bpe")
    with pytest.raises(ValueError, match="either pretrained=<dir> or corpus=..., not both"):
        tokenizers.build({"name": "bpe", "corpus": "tiny", "pretrained": str(tmp_path)})
    with pytest.raises(ValueError, match="min_frequency must be an int >= 1, got 0"):
        tokenizers.build({"name": "bpe", "corpus": "tiny", "min_frequency": 0})


def test_bpe_corrupt_or_missing_tokenizer_file(tmp_path):
    _BPE.save_pretrained(tmp_path)
    (tmp_path / "tokenizer.json").write_text('{"model": "garbage"}')
    with pytest.raises(ValueError, match=r"tokenizer.json' is not a valid tokenizers file"):
        tokenizers.build({"name": "bpe", "pretrained": str(tmp_path)})
    (tmp_path / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match="has no tokenizer.json"):
        tokenizers.build({"name": "bpe", "pretrained": str(tmp_path)})


def test_bpe_on_the_synthetic_corpus_compresses_its_captions():
    """The demo's tokenizer: trained on the embedded corpus' captions, lossless and ~2x shorter than bytes."""
    from bagpiper_lib import tokenizers
    from bagpiper_lib.data import synthetic

    tok = tokenizers.build({"name": "bpe", "corpus": "synthetic", "vocab_size": 512})
    assert tok.vocab_size == 512 and tok.spec()["corpus"] == "synthetic"
    captions = [r.caption for r in synthetic.generate(6, seed=3, split="heldout")]
    for caption in captions:
        ids = tok.encode(caption)
        assert tok.decode(ids) == caption
        assert len(ids) < 0.5 * len(caption.encode())
