"""The shared TextTokenizer contract: registry, input validation, batches, save/load dispatch."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from bagpiper_lib import tokenizers
from bagpiper_lib.registry import RegistryError
from bagpiper_lib.tokenizers.base import META_FILE, TextTokenizer

LIGHT = ["bytes", "bpe"]  # entries that build in milliseconds; qwen and hf have their own files


@pytest.fixture(params=LIGHT)
def tok(request) -> TextTokenizer:
    return tokenizers.build({"name": request.param, "preset": "tiny"})


def test_registry_lists_builtins_and_presets():
    assert {"qwen", "hf", "bytes", "bpe"} <= set(tokenizers.available())
    assert tokenizers.DEFAULT == "qwen"
    for name in ("qwen", "bytes", "bpe"):
        assert tokenizers.presets(name) == ["tiny"]


def test_unknown_name_suggests_close_matches():
    with pytest.raises(
        RegistryError,
        match=r"unknown tokenizer 'byte'\. Did you mean 'bytes'.*Available: bpe, bytes, hf, qwen",
    ):
        tokenizers.build("byte")


def test_spec_rebuilds_identical_tokenizer(tok):
    spec = tok.spec()
    assert json.loads(json.dumps(spec)) == spec  # plain data
    again = tokenizers.build(spec)
    text = "A piano plays a slow melody in C major at 90 BPM, soft dynamics."
    assert again.encode(text) == tok.encode(text)
    assert again.vocab_size == tok.vocab_size


def test_ids_in_range_and_no_specials_added(tok):
    assert tok.encode("") == []
    ids = tok.encode("Rain falls on a tin roof. 雨 🌧")
    assert all(isinstance(i, int) and 0 <= i < tok.vocab_size for i in ids)


def test_batch_matches_single(tok):
    texts = ["A dog barks.", "", "  two  spaces ", "音楽 🎵"]
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]
    assert tok.decode_batch(tok.encode_batch(texts)) == texts


def test_decode_accepts_tensors_and_arrays(tok):
    ids = tok.encode("A cello plays low notes.")
    assert tok.decode(torch.tensor(ids)) == tok.decode(np.array(ids)) == tok.decode(tuple(ids))


def test_pickle_round_trip(tok):
    again = pickle.loads(pickle.dumps(tok))
    assert again.encode("A flute plays.") == tok.encode("A flute plays.")


def test_save_load_round_trip_via_from_pretrained(tok, tmp_path):
    tok.save_pretrained(tmp_path / "t")
    text = "Birds chirp at 5 a.m.; 鳥が鳴く 🐦\n\tend"
    for loaded in (
        tokenizers.from_pretrained(tmp_path / "t"),
        tokenizers.build({"name": tok.name, "pretrained": str(tmp_path / "t")}),
    ):
        assert type(loaded) is type(tok)
        assert loaded.vocab_size == tok.vocab_size
        assert loaded.encode(text) == tok.encode(text)
        assert tokenizers.build(loaded.spec()).encode(text) == tok.encode(text)


# ---------------------------------------------------------------------- bad input
@pytest.mark.parametrize("bad", [b"bytes", 3, None, ["a list"]])
def test_encode_rejects_non_str(tok, bad):
    with pytest.raises(TypeError, match=r"encode: text must be a str, got"):
        tok.encode(bad)


def test_encode_rejects_lone_surrogate(tok):
    with pytest.raises(ValueError, match=r"lone surrogate '\\ud800' at index 1"):
        tok.encode("a\ud800b")


def test_encode_batch_names_bad_item(tok):
    with pytest.raises(TypeError, match=r"texts\[1\] must be a str, got int"):
        tok.encode_batch(["ok", 5])
    with pytest.raises(TypeError, match="use encode\\(\\) for a single string"):
        tok.encode_batch("not a list")


def test_decode_names_out_of_range_id(tok):
    with pytest.raises(
        ValueError,
        match=rf"ids\[2\] = {tok.vocab_size} is outside the {tok.name} vocabulary \[0, {tok.vocab_size}\)",
    ):
        tok.decode([1, 2, tok.vocab_size])
    with pytest.raises(ValueError, match=r"ids\[0\] = -1 is outside"):
        tok.decode([-1])
    with pytest.raises(ValueError, match=r"batch\[1\]\[0\] = 100000 is outside"):
        tok.decode_batch([[1], [100000]])


def test_decode_rejects_non_integer_ids(tok):
    with pytest.raises(TypeError, match=r"ids\[1\] = 1.5 is not an integer id"):
        tok.decode([1, 1.5])
    with pytest.raises(TypeError, match=r"ids\[0\] = True is not an integer id"):
        tok.decode([True])
    with pytest.raises(TypeError, match="must be a sequence of ints, got str"):
        tok.decode("abc")
    with pytest.raises(ValueError, match=r"must be 1-D \[L\], got shape \[1, 2\]"):
        tok.decode(torch.tensor([[1, 2]]))


def test_missing_pretrained_directory(tok, tmp_path):
    with pytest.raises(
        FileNotFoundError, match=rf"{tok.name} tokenizer: pretrained '.*nowhere' does not exist"
    ):
        tokenizers.build({"name": tok.name, "pretrained": str(tmp_path / "nowhere")})


def test_directory_that_is_not_a_tokenizer(tok, tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"\0")
    with pytest.raises(
        FileNotFoundError,
        match=rf"is not a saved bagpiper tokenizer: it has no {META_FILE} \(found: weights.bin\)",
    ):
        tokenizers.build({"name": tok.name, "pretrained": str(tmp_path)})
    with pytest.raises(FileNotFoundError, match="is not a saved bagpiper tokenizer"):
        tokenizers.from_pretrained(tmp_path)


def test_directory_of_another_tokenizer_kind(tmp_path):
    tokenizers.build("bytes").save_pretrained(tmp_path)
    with pytest.raises(
        ValueError, match=r"holds a 'bytes' tokenizer, not 'bpe'; build it with \{'name': 'bytes'"
    ):
        tokenizers.build({"name": "bpe", "pretrained": str(tmp_path)})


def test_malformed_meta_file(tmp_path):
    (tmp_path / META_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        tokenizers.from_pretrained(tmp_path)
    (tmp_path / META_FILE).write_text(json.dumps({"name": "bytes", "format": 99}))
    with pytest.raises(ValueError, match="has format 99; this library reads format 1"):
        tokenizers.from_pretrained(tmp_path)
