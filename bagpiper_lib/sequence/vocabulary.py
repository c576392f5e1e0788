"""The global token vocabulary: special slots, then the text tokenizer's ids, then K codec blocks.

Layout (all offsets derived from the parts, never hard-coded)::

    [0, num_special)                          special slots: pad bos eos eot system user assistant
                                              text audio think audio_in ... spare room
    [text_offset, text_offset + text_size)    text tokenizer ids (local id i -> text_offset + i)
    [codec_offset + k * (N + 1), ... + N + 1) codec block k: its pad id, then codes 0 .. N-1
                                              (local code c of codebook k -> block_k + 1 + c)

``Vocabulary.reference(text_vocab_size)`` reproduces the public reference layout: 256 special slots
(pad 0, bos 1, eos 2, eot 3, system 4, user 5, assistant 6, text 7, audio 8), text at 256, then
8 blocks of 1025 X-Codec ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["Vocabulary", "SPECIAL_TOKENS"]

# Names of the special slots, in slot order. The first nine are the reference layout's; the others
# live in its spare room, so appending names never moves an existing id.
SPECIAL_TOKENS: tuple[str, ...] = (
    "pad",
    "bos",
    "eos",
    "eot",
    "system",
    "user",
    "assistant",
    "text",
    "audio",
    "think",
    "audio_in",
)


@dataclass(frozen=True)
class Vocabulary:
    """Offsets of every id family; special ids are attributes (``vocab.pad``, ``vocab.assistant`` ...).

    Args:
        text_vocab_size: ids the text tokenizer can emit (its ``vocab_size``).
        num_codebooks: K, the codec's codebook count.
        codebook_size: N, entries per codebook.
        num_special: special slots reserved before the text block (>= the named ones; the rest is
            spare room for later special tokens without moving text or codec ids).
    """

    text_vocab_size: int
    num_codebooks: int
    codebook_size: int
    num_special: int = 64

    def __post_init__(self) -> None:
        for name in ("text_vocab_size", "num_codebooks", "codebook_size", "num_special"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.num_special < len(SPECIAL_TOKENS):
            raise ValueError(
                f"num_special={self.num_special} leaves no slot for the {len(SPECIAL_TOKENS)} named special "
                f"tokens {list(SPECIAL_TOKENS)}"
            )

    @classmethod
    def reference(cls, text_vocab_size: int, num_codebooks: int = 8, codebook_size: int = 1024) -> Vocabulary:
        """The reference layout: 256 special slots, text at 256, 8 x 1025 codec ids."""
        return cls(text_vocab_size, num_codebooks, codebook_size, num_special=256)

    @classmethod
    def for_components(cls, tokenizer, codec, num_special: int = 64) -> Vocabulary:
        """From anything with ``vocab_size`` (a text tokenizer) and ``num_codebooks``/``codebook_size``."""
        for obj, attrs in ((tokenizer, ("vocab_size",)), (codec, ("num_codebooks", "codebook_size"))):
            missing = [a for a in attrs if not hasattr(obj, a)]
            if missing:
                raise TypeError(f"{type(obj).__name__} lacks {missing}; cannot size the vocabulary from it")
        return cls(int(tokenizer.vocab_size), int(codec.num_codebooks), int(codec.codebook_size), num_special)

    # ------------------------------------------------------------------ offsets
    @property
    def text_offset(self) -> int:
        return self.num_special

    @property
    def codec_offset(self) -> int:
        return self.text_offset + self.text_vocab_size

    @property
    def block_size(self) -> int:
        """Ids per codec block: one pad plus ``codebook_size`` codes."""
        return self.codebook_size + 1

    @property
    def size(self) -> int:
        """Total number of ids (rows of the embedding table)."""
        return self.codec_offset + self.num_codebooks * self.block_size

    def __len__(self) -> int:
        return self.size

    def special(self, name: str) -> int:
        """Id of the special token ``name`` (one of :data:`SPECIAL_TOKENS`)."""
        try:
            return SPECIAL_TOKENS.index(name)
        except ValueError:
            raise KeyError(f"unknown special token {name!r}; known: {list(SPECIAL_TOKENS)}") from None

    def block_start(self, k: int) -> int:
        """First id of codec block ``k`` (its pad id)."""
        if not 0 <= k < self.num_codebooks:
            raise ValueError(f"codebook index {k} outside [0, {self.num_codebooks})")
        return self.codec_offset + k * self.block_size

    def codec_pad_ids(self) -> torch.Tensor:
        """LongTensor ``[K]``: the pad id of each codec block (stream k's pad)."""
        return self.codec_offset + torch.arange(self.num_codebooks) * self.block_size

    def empty_step_ids(self) -> torch.Tensor:
        """LongTensor ``[K]``: a step that holds nothing — ``pad`` in stream 0, each codec pad elsewhere
        (what condition dropout writes and what an unconditional CFG prefix is made of)."""
        ids = self.codec_pad_ids()
        ids[0] = self.pad
        return ids

    # ------------------------------------------------------------------ conversions
    def text_to_global(self, ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """Local text ids -> global ids (LongTensor)."""
        ids = torch.as_tensor(ids, dtype=torch.long)
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.text_vocab_size):
            raise ValueError(
                f"text ids must lie in [0, text_vocab_size={self.text_vocab_size}), got {ids.tolist()}"
            )
        return ids + self.text_offset

    def global_to_text(self, ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """Global ids in the text block -> local text ids."""
        ids = torch.as_tensor(ids, dtype=torch.long)
        if ids.numel() and (not self.is_text(ids).all()):
            raise ValueError(
                f"ids {ids.tolist()} are not all in the text block [{self.text_offset}, {self.codec_offset})"
            )
        return ids - self.text_offset

    def codes_to_global(self, codes: torch.Tensor) -> torch.Tensor:
        """Codec codes ``[..., K, T]`` (values in ``[0, N)``) -> global ids of each codebook's block."""
        codes = torch.as_tensor(codes)
        if codes.dim() < 2 or codes.shape[-2] != self.num_codebooks:
            raise ValueError(
                f"codes must have shape [..., K={self.num_codebooks}, T], got {tuple(codes.shape)} "
                f"(wrong number of codebooks for this vocabulary?)"
            )
        if codes.dtype.is_floating_point or codes.dtype == torch.bool:
            raise ValueError(f"codes must be integers, got dtype {codes.dtype}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise ValueError(
                f"codes out of range: min {int(codes.min())}, max {int(codes.max())}; expected values in "
                f"[0, codebook_size={self.codebook_size})"
            )
        return codes.long() + (self.codec_pad_ids() + 1).to(codes.device)[:, None]

    def global_to_codes(self, ids: torch.Tensor) -> torch.Tensor:
        """Global ids ``[..., K, T]`` of the codec blocks -> codes in ``[0, N)``; a pad id -> -1."""
        ids = torch.as_tensor(ids, dtype=torch.long)
        if ids.dim() < 2 or ids.shape[-2] != self.num_codebooks:
            raise ValueError(f"ids must have shape [..., K={self.num_codebooks}, T], got {tuple(ids.shape)}")
        local = ids - self.codec_pad_ids().to(ids.device)[:, None]
        if ids.numel() and (int(local.min()) < 0 or int(local.max()) > self.codebook_size):
            raise ValueError(f"ids are not all in their stream's codec block (K={self.num_codebooks})")
        return local - 1

    def is_text(self, ids: torch.Tensor) -> torch.Tensor:
        return (ids >= self.text_offset) & (ids < self.codec_offset)

    def is_codec(self, ids: torch.Tensor) -> torch.Tensor:
        return (ids >= self.codec_offset) & (ids < self.size)

    def codebook_range(self, k: int, with_pad: bool = True) -> tuple[int, int]:
        """Half-open id range ``[lo, hi)`` of codebook ``k`` (with or without its pad id)."""
        start = self.block_start(k)
        return (start if with_pad else start + 1), start + self.block_size


def _special_property(index: int, name: str) -> property:
    return property(lambda self: index, doc=f"Id of the ``<{name}>`` special token.")


for _index, _name in enumerate(SPECIAL_TOKENS):
    setattr(Vocabulary, _name, _special_property(_index, _name))
