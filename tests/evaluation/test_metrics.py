"""WER/CER against hand-counted edits, text normalisation, cosine similarity on crafted vectors."""

from __future__ import annotations

import math

import pytest
import torch

from bagpiper_lib import evaluation
from bagpiper_lib.evaluation import character_error_rate, cosine_similarity, mean_cosine, normalize_text

REF = "the quick brown fox jumps over the lazy dog"  # 9 words


def test_wer_counts_one_substitution_and_one_deletion():
    hyp = "the quick brown cat jumps over lazy dog"  # fox -> cat, second "the" deleted
    assert evaluation.word_error_rate([hyp], [REF]) == pytest.approx(2 / 9)
    assert evaluation.word_error_rate(hyp, REF) == pytest.approx(2 / 9)  # a str is one pair


def test_wer_is_corpus_level_over_all_reference_words():
    hyps = ["the quick brown cat jumps over lazy dog", "hello there world"]  # + 1 insertion
    refs = [REF, "hello world"]
    assert evaluation.word_error_rate(hyps, refs) == pytest.approx(3 / 11)
    assert evaluation.word_error_rate([""], ["two words"]) == pytest.approx(1.0)  # all deleted
    assert evaluation.word_error_rate(["a b c d"], ["a"]) == pytest.approx(3.0)  # can exceed 1


def test_normalisation_makes_case_and_punctuation_free():
    hyp = "The QUICK, brown fox... jumps over -- the LAZY dog!"
    assert evaluation.word_error_rate([hyp], [REF]) == 0.0
    assert evaluation.word_error_rate([hyp], [REF], normalize=False) > 0.5
    assert character_error_rate([hyp], [REF]) == 0.0


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Don't STOP\u2014believin'!", "don't stop believin"),
        ("'quoted' words", "quoted words"),
        ("It\u2019s 3.5 kHz, at 1.", "it's 3.5 khz at 1"),
        ("well-known   \t\n  sound", "well known sound"),
        ("  ?!.  ", ""),
        (
            "50% louder + echo \u00b0C",
            "50 louder + echo \u00b0c",
        ),  # % is punctuation; + and \u00b0 are symbols
    ],
)
def test_normalize_text(raw, expected):
    assert normalize_text(raw) == expected


def test_character_error_rate_by_hand():
    assert character_error_rate(["abed"], ["abcd"]) == pytest.approx(1 / 4)
    assert character_error_rate(["ab"], ["abcd"], normalize=False) == pytest.approx(2 / 4)


def test_bad_text_input_fails_clearly():
    with pytest.raises(ValueError, match="same length.*2 hyps and 1 refs"):
        evaluation.word_error_rate(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="refs is empty"):
        evaluation.word_error_rate([], [])
    with pytest.raises(ValueError, match=r"refs\[1\] has zero words after normalisation"):
        evaluation.word_error_rate(["a", "b"], ["a", " ...! "])
    with pytest.raises(ValueError, match=r"refs\[0\] has zero words"):
        evaluation.word_error_rate(["a"], ["   "], normalize=False)
    with pytest.raises(ValueError, match=r"refs\[0\] has zero characters"):
        character_error_rate(["a"], ["--"])
    with pytest.raises(TypeError, match=r"hyps\[1\] must be a str"):
        evaluation.word_error_rate(["a", 3], ["a", "b"])
    with pytest.raises(TypeError, match="text must be a str"):
        normalize_text(None)


def test_cosine_on_crafted_vectors():
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0], [3.0, 4.0], [1.0, 0.0]])
    b = torch.tensor([[0.0, 1.0], [2.0, 2.0], [1.0, 0.0], [-3.0, -4.0], [1.0, math.sqrt(3.0)]])
    sims = cosine_similarity(a, b)
    assert sims.shape == (5,) and sims.dtype == torch.float32
    torch.testing.assert_close(sims, torch.tensor([0.0, 1.0, 0.0, -1.0, 0.5]), atol=1e-6, rtol=0)
    assert mean_cosine(a, b) == pytest.approx(0.5 / 5, abs=1e-6)
    assert mean_cosine([[1.0, 2.0]], [[2.0, 4.0]]) == pytest.approx(1.0)  # lists are accepted


def test_cosine_bad_input_fails_clearly():
    with pytest.raises(ValueError, match="same shape"):
        cosine_similarity(torch.ones(2, 3), torch.ones(2, 4))
    with pytest.raises(ValueError, match="b contains NaN or Inf"):
        cosine_similarity(torch.ones(2, 3), torch.tensor([[1.0, 2.0, 3.0], [float("nan"), 0.0, 0.0]]))
    with pytest.raises(ValueError, match=r"a must have shape \[N, D\]"):
        cosine_similarity(torch.ones(3), torch.ones(3))
    with pytest.raises(ValueError, match="no rows"):
        mean_cosine(torch.ones(0, 3), torch.ones(0, 3))
