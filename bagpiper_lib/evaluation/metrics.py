"""Text and embedding metrics: word / character error rate after normalisation, cosine similarity.

``normalize_text`` is the single normalisation every text metric shares::

    "Hello, World!  It's 3.5 dB -- isn't it?"  ->  "hello world it's 3.5 db isn't it"

NFKC, then lowercase; typographic apostrophes become ``'``; every Unicode punctuation character
(category ``P*``) becomes a space, except an apostrophe between two letters/digits (``don't``) and a
decimal point between two digits (``3.5``); whitespace runs collapse to one space. Hyphenated words
split (``well-known`` -> ``well known``), ``%`` is punctuation (category Po) and goes; symbols
(``+``, ``°``, ``$``) and digits are kept as they are.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

import torch

__all__ = [
    "normalize_text",
    "word_error_rate",
    "character_error_rate",
    "cosine_similarity",
    "mean_cosine",
    "as_matrix",
]

_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "\uff07": "'"})
_SPACES = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """Lowercase, strip punctuation (keeping intra-word apostrophes and decimal points), collapse spaces."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    text = unicodedata.normalize("NFKC", text).translate(_APOSTROPHES).lower()
    out = []
    last = len(text) - 1
    for i, ch in enumerate(text):
        if not unicodedata.category(ch).startswith("P"):
            out.append(ch)
            continue
        prev_ch = text[i - 1] if i > 0 else ""
        next_ch = text[i + 1] if i < last else ""
        intra_word_apostrophe = ch == "'" and prev_ch.isalnum() and next_ch.isalnum()
        decimal_point = ch == "." and prev_ch.isdigit() and next_ch.isdigit()
        out.append(ch if intra_word_apostrophe or decimal_point else " ")
    return _SPACES.sub(" ", "".join(out)).strip()


def _text_pairs(
    hyps: str | Sequence[str], refs: str | Sequence[str], normalize: bool, unit: str
) -> tuple[list[str], list[str]]:
    """Validate and (optionally) normalise aligned hypothesis/reference lists."""
    hyps = [hyps] if isinstance(hyps, str) else hyps
    refs = [refs] if isinstance(refs, str) else refs
    for name, texts in (("hyps", hyps), ("refs", refs)):
        if not isinstance(texts, Sequence):
            raise TypeError(f"{name} must be a str or a sequence of str, got {type(texts).__name__}")
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"{name}[{i}] must be a str, got {type(text).__name__}")
    if len(refs) == 0:
        raise ValueError("refs is empty: need at least one reference transcript")
    if len(hyps) != len(refs):
        raise ValueError(
            f"hyps and refs must have the same length, got {len(hyps)} hyps and {len(refs)} refs"
        )
    if normalize:
        hyps = [normalize_text(t) for t in hyps]
        refs = [normalize_text(t) for t in refs]
    else:
        hyps, refs = list(hyps), list(refs)
    for i, ref in enumerate(refs):
        empty = not ref.split() if unit == "word" else not ref
        if empty:
            after = " after normalisation" if normalize else ""
            raise ValueError(
                f"refs[{i}] has zero {unit}s{after} ({ref!r}); an error rate needs a non-empty reference"
            )
    return hyps, refs


def word_error_rate(hyps: str | Sequence[str], refs: str | Sequence[str], normalize: bool = True) -> float:
    """Corpus word error rate: (substitutions + deletions + insertions) / reference words, over all pairs.

    Args:
        hyps: hypothesis transcripts (a str counts as one).
        refs: reference transcripts, aligned with ``hyps``; none may be empty after normalisation.
        normalize: apply :func:`normalize_text` to both sides first (default), so case and
            punctuation do not count as errors.

    Computed by ``torchmetrics.functional.text.word_error_rate`` on whitespace-split words. Can
    exceed 1 when the hypotheses insert many words.
    """
    from torchmetrics.functional.text import word_error_rate as _wer

    hyps, refs = _text_pairs(hyps, refs, normalize, "word")
    return float(_wer(hyps, refs))


def character_error_rate(
    hyps: str | Sequence[str], refs: str | Sequence[str], normalize: bool = True
) -> float:
    """Corpus character error rate (edits / reference characters, spaces included), like :func:`word_error_rate`."""
    from torchmetrics.functional.text import char_error_rate as _cer

    hyps, refs = _text_pairs(hyps, refs, normalize, "character")
    return float(_cer(hyps, refs))


def as_matrix(values, name: str, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``values`` (tensor, array or nested list) as a finite 2-D CPU tensor ``[N, D]`` of ``dtype``."""
    if isinstance(values, torch.Tensor):
        tensor = values.detach().to(device="cpu")
    else:
        try:
            tensor = torch.as_tensor(values)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(f"{name} must be a tensor or array of shape [N, D]: {err}") from err
    if tensor.dim() != 2:
        raise ValueError(f"{name} must have shape [N, D], got {tuple(tensor.shape)}")
    if tensor.dtype == torch.bool or tensor.is_complex():
        raise ValueError(f"{name} must be real-valued, got dtype {tensor.dtype}")
    tensor = tensor.to(dtype)
    if not torch.isfinite(tensor).all():
        bad = (~torch.isfinite(tensor)).any(dim=1).nonzero().flatten()[:5].tolist()
        raise ValueError(f"{name} contains NaN or Inf (rows {bad}...); embeddings must be finite")
    return tensor


def cosine_similarity(a, b, eps: float = 1e-12) -> torch.Tensor:
    """Row-wise cosine similarity of ``a [N, D]`` and ``b [N, D]`` -> ``[N]`` float32.

    Computed in float64; a zero-norm row has similarity 0 with anything (norms clamped at ``eps``).
    """
    a = as_matrix(a, "a")
    b = as_matrix(b, "b")
    if a.shape != b.shape:
        raise ValueError(
            f"a and b must have the same shape [N, D], got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    dots = (a * b).sum(dim=1)
    norms = a.norm(dim=1).clamp_min(eps) * b.norm(dim=1).clamp_min(eps)
    return (dots / norms).clamp(-1.0, 1.0).float()


def mean_cosine(a, b) -> float:
    """Mean of :func:`cosine_similarity` over rows (e.g. audio vs. caption embeddings: a CLAP score)."""
    sims = cosine_similarity(a, b)
    if sims.numel() == 0:
        raise ValueError("a and b have no rows; mean_cosine needs at least one pair")
    return float(sims.double().mean())
