"""Conversations -> K-stream samples: the message builder and classifier-free-guidance condition dropout.

A conversation is a list of :class:`Message` (role, modality, content, target). The builder lays it out
as ``<bos>`` then, per message, ``<role> <modality> content <end>`` where ``<end>`` is ``<eot>`` when the
next message has the same role (the turn goes on) and ``<eos>`` when the turn ends::

    position:  bos | user audio [audio_in x F] eos | assistant text [caption ...] eos
    stream 0:  bos   user audio  <audio_in> ...  eos  assistant text  c1 c2 ...      eos
    stream k:  pad_k ...                                                  (pad_k everywhere)

Audio output content (codes ``[K, T]``) goes through the codebook pattern and fills all K streams::

    assistant audio [S(T) steps of the pattern] eos
    stream 0:  ... a0 a1 a2 pad0 pad0 pad0
    stream 1:  ... pad1 b0 b1 b2 pad1 pad1      (delay pattern, K = 4)

Loss: every position of a target message (role token through its end token) is a target in stream 0;
streams 1..K-1 are targets only at audio-output steps. Audio-input placeholders are never targets.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from bagpiper_lib.sequence.patterns import CodebookPattern
from bagpiper_lib.sequence.sample import AudioSpan, Modality, Sample
from bagpiper_lib.sequence.vocabulary import Vocabulary

__all__ = ["ROLES", "MODALITIES", "Message", "SequenceBuilder", "ConditionDropout"]

ROLES = ("system", "user", "assistant")
MODALITIES = ("text", "think", "audio_in", "audio_out")
_MODALITY_TOKEN = {"text": "text", "think": "think", "audio_in": "audio", "audio_out": "audio"}
_MODALITY_KIND = {
    "text": Modality.TEXT,
    "think": Modality.THINK,
    "audio_in": Modality.AUDIO_IN,
    "audio_out": Modality.AUDIO_OUT,
}


@dataclass
class Message:
    """One message of a conversation.

    Args:
        role: ``"system"``, ``"user"`` or ``"assistant"``.
        modality: ``"text"`` / ``"think"`` (content: str), ``"audio_in"`` (content: waveform ``[N]``
            with ``sample_rate``, or features ``[F, D]``), ``"audio_out"`` (content: codes ``[K, T]``).
        target: whether the message carries loss; default: ``role == "assistant"``.
        sample_rate: rate of an ``audio_in`` waveform.
    """

    role: str
    modality: str
    content: Any
    target: bool | None = None
    sample_rate: int | None = None

    @property
    def is_target(self) -> bool:
        return self.role == "assistant" if self.target is None else bool(self.target)


class SequenceBuilder:
    """Builds :class:`Sample` tensors from conversations.

    Args:
        vocab: the global vocabulary.
        tokenizer: a text tokenizer with ``encode(str) -> list[int]`` and ``vocab_size`` equal to
            ``vocab.text_vocab_size``.
        pattern: the codebook pattern for audio output (its ``num_codebooks`` must equal the vocab's).
        audio_in_length: ``(num_samples, sample_rate) -> placeholder positions`` for waveform audio
            input (the encoder + adaptor output length). Features ``[F, D]`` need none: F positions.
        max_length: reject conversations longer than this many positions (``None``: no limit).
    """

    def __init__(
        self,
        vocab: Vocabulary,
        tokenizer,
        pattern: CodebookPattern,
        audio_in_length: Callable[[int, int], int] | None = None,
        max_length: int | None = None,
    ):
        if getattr(tokenizer, "vocab_size", None) != vocab.text_vocab_size:
            raise ValueError(
                f"tokenizer vocab_size {getattr(tokenizer, 'vocab_size', None)} does not fit the vocabulary's "
                f"text block of {vocab.text_vocab_size} ids"
            )
        if pattern.num_codebooks != vocab.num_codebooks:
            raise ValueError(
                f"pattern has {pattern.num_codebooks} codebooks but the vocabulary has {vocab.num_codebooks}"
            )
        self.vocab = vocab
        self.tokenizer = tokenizer
        self.pattern = pattern
        self.audio_in_length = audio_in_length
        self.max_length = max_length
        # samples are built on the CPU, whatever the default device was when the builder was made
        self._codec_pads = vocab.codec_pad_ids().cpu()

    @property
    def num_streams(self) -> int:
        return self.vocab.num_codebooks

    def _column(self, ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """Stream-0 ids ``[n]`` -> ``[n, K]`` with each other stream's codec pad."""
        ids = torch.as_tensor(ids, dtype=torch.long)
        out = self._codec_pads[None, :].repeat(ids.shape[0], 1)
        out[:, 0] = ids
        return out

    def _content(self, index: int, message: Message) -> tuple[torch.Tensor, AudioSpan | None]:
        """Content positions ``[n, K]`` of one message, plus its audio-in span (start relative to content)."""
        where = f"message {index} ({message.role}/{message.modality})"
        if message.modality in ("text", "think"):
            if not isinstance(message.content, str):
                raise TypeError(f"{where}: content must be a str, got {type(message.content).__name__}")
            return self._column(self.vocab.text_to_global(self.tokenizer.encode(message.content))), None
        if message.modality == "audio_in":
            length = self._audio_in_positions(where, message)
            span = AudioSpan(0, length, message.content, message.sample_rate)
            return self._column([self.vocab.audio_in] * length), span
        codes = message.content
        if not isinstance(codes, torch.Tensor) or codes.dim() != 2:
            raise ValueError(
                f"{where}: content must be codes [K, T], got {getattr(codes, 'shape', type(codes))}"
            )
        if codes.shape[0] != self.num_streams:
            raise ValueError(
                f"{where}: codes have {codes.shape[0]} codebooks; the vocabulary and pattern expect K={self.num_streams}"
            )
        try:  # a Sample lives on the CPU, where samples are packed: codes from a GPU codec move there
            ids = self.vocab.codes_to_global(codes.cpu())
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from err
        return self.pattern.apply(ids[None], self._codec_pads)[0].T, None

    def _audio_in_positions(self, where: str, message: Message) -> int:
        audio = message.content
        if not isinstance(audio, torch.Tensor) or audio.dim() not in (1, 2):
            raise ValueError(
                f"{where}: content must be a waveform [N] or features [F, D], got {type(audio).__name__}"
            )
        if audio.dim() == 2:
            length = audio.shape[0]
        else:
            if message.sample_rate is None or self.audio_in_length is None:
                raise ValueError(
                    f"{where}: a waveform needs sample_rate and a builder with audio_in_length to size its placeholders"
                )
            length = int(self.audio_in_length(audio.shape[0], int(message.sample_rate)))
        if length <= 0:
            raise ValueError(f"{where}: audio input yields {length} placeholder positions; it is too short")
        return length

    def build(self, messages: Sequence[Message], id: str = "") -> Sample:
        """Lay out ``messages``; see the module docstring for the format."""
        if not messages:
            raise ValueError("conversation is empty; expected at least one message")
        vocab = self.vocab
        parts = [self._column([vocab.bos])]
        kinds = [torch.tensor([Modality.SPECIAL])]
        masks = [torch.zeros(1, self.num_streams, dtype=torch.bool)]
        spans: list[AudioSpan] = []
        position = 1
        for i, message in enumerate(messages):
            if message.role not in ROLES:
                raise ValueError(f"message {i}: unknown role {message.role!r}; expected one of {list(ROLES)}")
            if message.modality not in MODALITIES:
                raise ValueError(
                    f"message {i}: unknown modality {message.modality!r}; expected one of {list(MODALITIES)}"
                )
            content, span = self._content(i, message)
            more = i + 1 < len(messages) and messages[i + 1].role == message.role
            head = self._column(
                [vocab.special(message.role), vocab.special(_MODALITY_TOKEN[message.modality])]
            )
            tail = self._column([vocab.eot if more else vocab.eos])
            n = content.shape[0]
            parts += [head, content, tail]
            kind = _MODALITY_KIND[message.modality]
            kinds += [
                torch.full((2,), Modality.SPECIAL),
                torch.full((n,), kind),
                torch.tensor([Modality.SPECIAL]),
            ]
            mask = torch.zeros(n + 3, self.num_streams, dtype=torch.bool)
            if message.is_target and message.modality != "audio_in":
                mask[:, 0] = True
                if message.modality == "audio_out":
                    mask[2 : 2 + n, 1:] = True
            masks.append(mask)
            if span is not None:
                spans.append(span.shifted(position + 2))
            position += n + 3
        if self.max_length is not None and position > self.max_length:
            raise ValueError(f"conversation is {position} positions long, over max_length={self.max_length}")
        return Sample(torch.cat(parts), torch.cat(masks), torch.cat(kinds).long(), spans, id)


class ConditionDropout:
    """CFG condition dropout: with probability ``p`` keep one assistant audio-output segment and make
    everything else pad with no loss (audio-input features dropped), so the model also learns the
    unconditional distribution that guidance subtracts.

    The kept segment is the audio steps plus the end token after them; everything before it,
    including its ``<assistant> <audio>`` header, becomes pad, matching inference where the
    unconditional row is an all-pad prefix as long as the conditional context. Samples without an
    assistant audio output are returned unchanged.
    """

    def __init__(self, vocab: Vocabulary, p: float = 0.05):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be a probability in [0, 1], got {p}")
        self.vocab = vocab
        self.p = float(p)
        self._pads = vocab.empty_step_ids()

    def __call__(self, sample: Sample, rng: random.Random | None = None) -> Sample:
        rng = rng or random
        segments = self.audio_out_segments(sample)
        if not segments or rng.random() >= self.p:
            return sample
        start, end = segments[rng.randrange(len(segments))]
        keep = torch.zeros(len(sample), dtype=torch.bool)
        keep[start : end + 1] = True  # audio steps and their end token
        tokens = torch.where(keep[:, None], sample.tokens, self._pads[None, :])
        loss_mask = sample.loss_mask & keep[:, None]
        modality = torch.where(keep, sample.modality, torch.full_like(sample.modality, Modality.SPECIAL))
        return Sample(tokens, loss_mask, modality, [], sample.id)

    @staticmethod
    def audio_out_segments(sample: Sample) -> list[tuple[int, int]]:
        """``(start, end)`` position ranges (end exclusive) of target audio-output runs."""
        is_out = (sample.modality == Modality.AUDIO_OUT) & sample.loss_mask[:, 0]
        if not bool(is_out.any()):
            return []
        edges = torch.diff(
            is_out.int(), prepend=torch.zeros(1, dtype=torch.int), append=torch.zeros(1, dtype=torch.int)
        )
        starts = (edges == 1).nonzero().flatten().tolist()
        ends = (edges == -1).nonzero().flatten().tolist()
        return list(zip(starts, ends))
