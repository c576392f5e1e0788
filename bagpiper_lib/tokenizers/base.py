"""The ``TextTokenizer`` contract shared by every text tokenizer, and the on-disk format they share.

A text tokenizer maps a string to ids in ``[0, vocab_size)`` and back. The sequence layer places this
block of ``vocab_size`` ids after its own special slots (see ``Vocabulary`` in ``bagpiper_lib.sequence``),
so a tokenizer never adds special tokens itself: no bos, eos, pad or chat markers. Structure tokens are
owned by the sequence vocabulary, and plain text must never be able to forge one.

::

    encode(text: str) -> ids list[int]            validate -> _encode
    decode(ids [L] (list, tuple, 1-D tensor/array)) -> str     validate -> _decode
    encode_batch(texts [B]) -> [B] lists of ids;  decode_batch([B] id sequences) -> [B] strings

``decode`` never raises for ids in range: bytes that do not form valid UTF-8 (a sequence cut inside a
character) decode to U+FFFD. Text containing a lone surrogate (not encodable as UTF-8) is rejected.

On disk, ``save_pretrained(dir)`` writes the tokenizer's own files plus ``bagpiper_tokenizer.json``
(``{"name": <registry name>, "format": 1, "config": {...}}``), so ``tokenizers.from_pretrained(dir)`` or
``tokenizers.build({"name": ..., "pretrained": dir})`` rebuilds it and reproduces ``encode`` exactly.
"""

from __future__ import annotations

import abc
import json
import numbers
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

__all__ = ["META_FILE", "TextTokenizer", "check_text", "read_meta", "require_directory", "write_meta"]

META_FILE = "bagpiper_tokenizer.json"
FORMAT_VERSION = 1


class TextTokenizer(abc.ABC):
    """A text tokenizer producing ids in ``[0, vocab_size)``, with no special tokens added.

    Subclasses set ``vocab_size`` in ``__init__`` and the class attribute ``name`` (their registry
    name), and implement :meth:`_encode`, :meth:`_decode`, :meth:`spec` and :meth:`save_pretrained`.
    """

    name: ClassVar[str]
    vocab_size: int

    # ------------------------------------------------------------------ hooks
    @abc.abstractmethod
    def _encode(self, text: str) -> list[int]:
        """Valid ``text`` -> ids in ``[0, vocab_size)``."""

    @abc.abstractmethod
    def _decode(self, ids: list[int]) -> str:
        """Ids already checked to be ints in ``[0, vocab_size)`` -> text."""

    @abc.abstractmethod
    def spec(self) -> dict[str, Any]:
        """Plain-data spec such that ``tokenizers.build(spec)`` rebuilds an identical tokenizer."""

    @abc.abstractmethod
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write the tokenizer so ``build({"name": self.name, "pretrained": directory})`` reloads it."""

    def _encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self._encode(text) for text in texts]

    # ------------------------------------------------------------------ public API
    def encode(self, text: str) -> list[int]:
        """``text`` -> ids ``[L]``, each in ``[0, vocab_size)``; no special tokens are added."""
        check_text(text, f"{self.name}.encode: text")
        return self._encode(text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """``texts [B]`` -> ``[B]`` id lists, the same as ``[encode(t) for t in texts]``."""
        if isinstance(texts, str) or not isinstance(texts, Sequence):
            raise TypeError(
                f"{self.name}.encode_batch: texts must be a list or tuple of str, got {type(texts).__name__}"
                + ("; use encode() for a single string" if isinstance(texts, str) else "")
            )
        for i, text in enumerate(texts):
            check_text(text, f"{self.name}.encode_batch: texts[{i}]")
        return self._encode_batch(list(texts))

    def decode(self, ids: Sequence[int]) -> str:
        """Ids ``[L]`` (list, tuple, or 1-D integer tensor/array) -> text. Raises on ids outside the vocabulary."""
        return self._decode(self._check_ids(ids, f"{self.name}.decode: ids"))

    def decode_batch(self, batch: Sequence[Sequence[int]]) -> list[str]:
        """``[B]`` id sequences -> ``[B]`` strings."""
        if not isinstance(batch, Sequence) and not hasattr(batch, "tolist"):
            raise TypeError(
                f"{self.name}.decode_batch: batch must be a sequence of id sequences, got {type(batch).__name__}"
            )
        return [
            self._decode(self._check_ids(ids, f"{self.name}.decode_batch: batch[{i}]"))
            for i, ids in enumerate(batch)
        ]

    def _check_ids(self, ids: Any, what: str) -> list[int]:
        if isinstance(ids, (str, bytes)):
            raise TypeError(f"{what} must be a sequence of ints, got {type(ids).__name__} {ids!r:.60}")
        if hasattr(ids, "tolist") and not isinstance(ids, (list, tuple)):  # torch tensor / numpy array
            shape = tuple(getattr(ids, "shape", ()))
            if len(shape) != 1:
                raise ValueError(f"{what} must be 1-D [L], got shape {list(shape)}")
            ids = ids.tolist()
        elif not isinstance(ids, Sequence):
            raise TypeError(f"{what} must be a sequence of ints, got {type(ids).__name__}")
        out: list[int] = []
        for i, value in enumerate(ids):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise TypeError(f"{what}[{i}] = {value!r} is not an integer id")
            value = int(value)
            if not 0 <= value < self.vocab_size:
                raise ValueError(
                    f"{what}[{i}] = {value} is outside the {self.name} vocabulary [0, {self.vocab_size}); "
                    "ids from the global sequence vocabulary must have the text offset removed first"
                )
            out.append(value)
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size})"


def check_text(text: Any, what: str) -> None:
    """Raise unless ``text`` is a ``str`` that UTF-8 can encode (no lone surrogates)."""
    if not isinstance(text, str):
        hint = "; use encode_batch() for a list of strings" if isinstance(text, (list, tuple)) else ""
        raise TypeError(f"{what} must be a str, got {type(text).__name__} {text!r:.60}{hint}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(
            f"{what} holds a lone surrogate {text[err.start]!r} at index {err.start}; "
            "text must be valid Unicode (encodable as UTF-8)"
        ) from err


def require_directory(path: str | Path, what: str) -> Path:
    """``path`` as a ``Path`` if it is an existing directory, else a clear ``FileNotFoundError``."""
    if not isinstance(path, (str, Path)):
        raise TypeError(f"{what} must be a directory path (str or Path), got {type(path).__name__}")
    directory = Path(path)
    if not directory.is_dir():
        state = "is a file, not a directory" if directory.exists() else "does not exist"
        raise FileNotFoundError(
            f"{what} {str(directory)!r} {state}; expected a directory written by save_pretrained()"
        )
    return directory


def write_meta(directory: str | Path, name: str, config: dict[str, Any]) -> Path:
    """Create ``directory`` and write ``bagpiper_tokenizer.json`` naming the tokenizer and its config."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta = {"name": name, "format": FORMAT_VERSION, "config": config}
    (directory / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return directory


def read_meta(
    directory: str | Path, expected: str | None = None, *, required: bool = True
) -> tuple[str | None, dict[str, Any]]:
    """Read ``bagpiper_tokenizer.json`` of a saved tokenizer; return ``(name, config)``.

    Without the file and with ``required=False`` this returns ``(None, {})`` (a foreign directory,
    e.g. a Hugging Face checkpoint).

    Raises ``FileNotFoundError`` for a missing directory or (when ``required``) a missing file, and
    ``ValueError`` when the file is malformed or names another tokenizer than ``expected``.
    """
    what = f"{expected} tokenizer: pretrained" if expected else "pretrained"
    directory = require_directory(directory, what)
    path = directory / META_FILE
    if not path.is_file():
        if not required:
            return None, {}
        found = ", ".join(sorted(p.name for p in directory.iterdir())[:8]) or "nothing"
        raise FileNotFoundError(
            f"{str(directory)!r} is not a saved bagpiper tokenizer: it has no {META_FILE} (found: {found}); "
            "expected a directory written by TextTokenizer.save_pretrained()"
        )
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{str(path)!r} is not valid JSON: {err}") from err
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str):
        raise ValueError(f"{str(path)!r} must hold a JSON object with a string 'name', got {meta!r:.100}")
    if meta.get("format") != FORMAT_VERSION:
        raise ValueError(
            f"{str(path)!r} has format {meta.get('format')!r}; this library reads format {FORMAT_VERSION}"
        )
    if expected is not None and meta["name"] != expected:
        raise ValueError(
            f"{str(directory)!r} holds a {meta['name']!r} tokenizer, not {expected!r}; "
            f"build it with {{'name': {meta['name']!r}, 'pretrained': {str(directory)!r}}}"
        )
    config = meta.get("config", {})
    if not isinstance(config, dict):
        raise ValueError(f"{str(path)!r}: 'config' must be a JSON object, got {config!r:.100}")
    return meta["name"], config
