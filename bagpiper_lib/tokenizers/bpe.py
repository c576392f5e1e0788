"""``bpe``: a small byte-level BPE trained on a corpus with the ``tokenizers`` library.

Byte-level means the 256 byte symbols are always in the vocabulary (ids ``0..255`` hold them in the
order of the ByteLevel alphabet, not by byte value) and merges are learned on top, so any string
encodes and ``decode(encode(text)) == text`` exactly: no normalisation, no unknown token, whitespace
runs and leading spaces kept. Training is deterministic (ties break on symbol ids), so
``{"name": "bpe", "preset": "tiny"}`` yields the same vocabulary on every machine in milliseconds.

::

    tok = BPETokenizer.train(texts, vocab_size=2000)           # texts: iterable of str
    tok = tokenizers.build({"name": "bpe", "preset": "tiny"})  # built-in captions, vocab 384
    tok.save_pretrained(d); tokenizers.build({"name": "bpe", "pretrained": d})
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from bagpiper_lib.tokenizers.base import TextTokenizer, check_text, read_meta, write_meta
from bagpiper_lib.tokenizers.corpus import CORPORA

__all__ = ["BPETokenizer", "MIN_VOCAB_SIZE", "train_bpe"]

NUM_BYTE_SYMBOLS = 256
MIN_VOCAB_SIZE = NUM_BYTE_SYMBOLS + 1  # every byte plus at least one merge
TOKENIZER_FILE = "tokenizer.json"


def train_bpe(texts: Sequence[str], vocab_size: int, min_frequency: int = 2) -> tokenizers.Tokenizer:
    """Train a byte-level BPE ``tokenizers.Tokenizer`` with at most ``vocab_size`` ids and no special tokens.

    The result has exactly ``vocab_size`` ids unless the corpus runs out of symbol pairs seen at least
    ``min_frequency`` times, in which case it stops early with fewer.
    """
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(
            f"bpe vocab_size must be an int >= {MIN_VOCAB_SIZE} (the {NUM_BYTE_SYMBOLS} byte symbols of the "
            f"byte-level alphabet plus at least one merge), got {vocab_size!r}"
        )
    if isinstance(min_frequency, bool) or not isinstance(min_frequency, int) or min_frequency < 1:
        raise ValueError(f"bpe min_frequency must be an int >= 1, got {min_frequency!r}")
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer, length=len(texts))
    return tok


class BPETokenizer(TextTokenizer):
    """A byte-level BPE; ``vocab_size`` is the trained size (``>= 256``).

    Args:
        pretrained: a directory written by :meth:`save_pretrained`; excludes ``corpus``.
        corpus: what to train on: the name of a built-in corpus (``"tiny"``) or a sequence of str.
        vocab_size: the largest vocabulary to train, ``>= 257``; ignored with ``pretrained``.
        min_frequency: a merge needs its pair to occur at least this often in the corpus.

    ``spec()`` can rebuild tokenizers loaded from a directory or trained on a built-in corpus; one
    trained on in-memory texts must be saved first (its spec would have to carry the whole corpus).
    """

    name = "bpe"

    def __init__(
        self,
        pretrained: str | Path | None = None,
        *,
        corpus: str | Sequence[str] | None = None,
        vocab_size: int = 384,
        min_frequency: int = 2,
    ):
        if pretrained is not None:
            if corpus is not None:
                raise ValueError("bpe tokenizer: pass either pretrained=<dir> or corpus=..., not both")
            self._tok = _load(pretrained)
            self._spec: dict[str, Any] | None = {"name": self.name, "pretrained": str(pretrained)}
        elif corpus is not None:
            texts = _corpus_texts(corpus)
            self._tok = train_bpe(texts, vocab_size, min_frequency)
            self._spec = None
            if isinstance(corpus, str):
                self._spec = {
                    "name": self.name,
                    "corpus": corpus,
                    "vocab_size": vocab_size,
                    "min_frequency": min_frequency,
                }
        else:
            raise ValueError(
                f"bpe tokenizer needs pretrained=<directory> or corpus=<one of {sorted(CORPORA)} or a list of "
                "str>; or use preset='tiny'"
            )
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, *, min_frequency: int = 2) -> BPETokenizer:
        """Train on ``texts`` (an iterable of str) with at most ``vocab_size`` ids (``>= 257``)."""
        if isinstance(texts, str):
            raise TypeError("bpe train: texts must be an iterable of str, not a single str")
        return cls(corpus=list(texts), vocab_size=vocab_size, min_frequency=min_frequency)

    @property
    def backend(self) -> tokenizers.Tokenizer:
        """The underlying ``tokenizers.Tokenizer`` (e.g. to wrap in ``transformers.PreTrainedTokenizerFast``)."""
        return self._tok

    def _encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def _encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [enc.ids for enc in self._tok.encode_batch(texts, add_special_tokens=False)]

    def _decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=False)

    def spec(self) -> dict[str, Any]:
        if self._spec is None:
            raise ValueError(
                "this bpe tokenizer was trained on in-memory texts, so no plain-data spec rebuilds it; "
                "call save_pretrained(dir) and use {'name': 'bpe', 'pretrained': dir}"
            )
        return dict(self._spec)

    def save_pretrained(self, directory: str | Path) -> Path:
        directory = write_meta(directory, self.name, {"vocab_size": self.vocab_size})
        self._tok.save(str(directory / TOKENIZER_FILE))
        return directory

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={self.vocab_size})"


def _corpus_texts(corpus: str | Sequence[str]) -> list[str]:
    if isinstance(corpus, str):
        if corpus == "synthetic":  # captions and texts of the embedded synthetic corpus (the demo's data)
            from bagpiper_lib.data import synthetic

            return [r.caption for r in synthetic.generate(300, seed=0, duration=0.5)] + synthetic.text_corpus(
                300
            )
        if corpus not in CORPORA:
            raise ValueError(
                f"bpe corpus {corpus!r} is not a built-in corpus {sorted([*CORPORA, 'synthetic'])}; pass a list of str to "
                "train on your own texts"
            )
        return list(CORPORA[corpus])
    if not isinstance(corpus, Sequence):
        raise TypeError(
            f"bpe corpus must be a built-in corpus name or a sequence of str, got {type(corpus).__name__}"
        )
    texts = list(corpus)
    if not texts:
        raise ValueError("bpe corpus is empty; expected at least one training text")
    for i, text in enumerate(texts):
        check_text(text, f"bpe corpus[{i}]")
    return texts


def _load(pretrained: str | Path) -> tokenizers.Tokenizer:
    read_meta(pretrained, BPETokenizer.name)
    path = Path(pretrained) / TOKENIZER_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"bpe tokenizer: {str(pretrained)!r} has no {TOKENIZER_FILE}; save it with save_pretrained()"
        )
    try:
        tok = tokenizers.Tokenizer.from_file(str(path))
    except Exception as err:  # the Rust loader raises a bare Exception on malformed files
        raise ValueError(f"bpe tokenizer: {str(path)!r} is not a valid tokenizers file: {err}") from err
    if not isinstance(tok.model, models.BPE):
        raise ValueError(
            f"bpe tokenizer: {str(path)!r} holds a {type(tok.model).__name__} model, expected BPE"
        )
    return tok
