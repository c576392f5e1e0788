"""Multi-stream next-token loss, computed in chunks so full-vocabulary logits never exist all at once.

For target positions ``P`` (gathered out of the batch) and streams ``k``::

    stream 0    logits over the whole vocabulary          [P, V]
    stream k>0  logits over the codec ids only            [P, K * (N + 1)]   (shared head)
                or over codebook k's block only            [P, N + 1]        (own_codebook / per-codebook head)

Each chunk of positions computes its logits in float32 inside ``torch.utils.checkpoint``, so backward
recomputes them instead of keeping ``[P, V]`` activations: peak memory is one chunk's logits.

Weights: a codec token counts ``codec_weight`` (default ``1 / K``: one audio frame weighs one text
token), every other token 1. The total is the weighted sum divided by the number of stream-0 target
positions (the reference normalisation). Reported besides: text loss (stream-0 non-codec targets),
audio loss (all codec targets) and per-codebook losses and accuracies, as means over their tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

__all__ = ["LossOutput", "StreamTargets", "multistream_loss"]


@dataclass
class StreamTargets:
    """What the loss needs per target position ``p`` (already shifted for next-token prediction).

    ``hidden [P, H]`` hidden state predicting position p; ``tokens [P, K]`` target ids;
    ``mask [P, K]`` which of them count.
    """

    hidden: torch.Tensor
    tokens: torch.Tensor
    mask: torch.Tensor


@dataclass
class LossOutput:
    loss: torch.Tensor
    text_loss: torch.Tensor
    audio_loss: torch.Tensor
    codebook_losses: torch.Tensor  # [K]
    text_accuracy: torch.Tensor
    audio_accuracy: torch.Tensor
    codebook_accuracies: torch.Tensor  # [K]
    num_targets: int


def multistream_loss(
    targets: StreamTargets,
    logits_fn: Callable[[torch.Tensor, int], tuple[torch.Tensor, int]],
    *,
    num_streams: int,
    codec_offset: int,
    codec_weight: float,
    chunk_size: int = 1024,
    checkpoint_chunks: bool = True,
) -> LossOutput:
    """Chunked loss.

    Args:
        targets: hidden states, target ids and masks of the target positions.
        logits_fn: ``(hidden [C, H], stream k) -> (logits [C, V_k] float32, id_offset)``: the logits of
            stream k restricted to ids ``[id_offset, id_offset + V_k)``.
        num_streams: K.
        codec_offset: first codec id; ids at or above it are codec tokens.
        codec_weight: weight of a codec token.
        chunk_size: positions per chunk.
        checkpoint_chunks: recompute chunk logits in backward (memory) instead of storing them.
    """
    hidden, tokens, mask = targets.hidden, targets.tokens, targets.mask
    if hidden.shape[0] != tokens.shape[0] or tokens.shape != mask.shape or tokens.shape[1] != num_streams:
        raise ValueError(
            f"targets disagree: hidden {tuple(hidden.shape)}, tokens {tuple(tokens.shape)}, mask {tuple(mask.shape)}, "
            f"num_streams={num_streams}"
        )
    device = hidden.device
    weighted = torch.zeros((), device=device, dtype=torch.float32)
    # Detached report sums: rows text / audio / codebook 0..K-1; columns loss, correct, count.
    stats = torch.zeros(2 + num_streams, 3, device=device, dtype=torch.float64)
    for start in range(0, hidden.shape[0], chunk_size):
        h = hidden[start : start + chunk_size]
        t = tokens[start : start + chunk_size]
        m = mask[start : start + chunk_size].bool()
        if checkpoint_chunks and torch.is_grad_enabled() and h.requires_grad:
            ce, correct = checkpoint(_chunk, h, t, m, logits_fn, num_streams, use_reentrant=False)
        else:
            ce, correct = _chunk(h, t, m, logits_fn, num_streams)
        codec = (t >= codec_offset) & m
        text = m & ~codec
        text[:, 1:] = False  # text and special targets only exist in stream 0
        weight = torch.where(codec, codec_weight, 1.0) * m
        weighted = weighted + (ce * weight).sum()
        with torch.no_grad():
            for row, sel in ((0, text), (1, codec)):
                stats[row] += torch.stack([(ce * sel).sum(), (correct * sel).sum(), sel.sum()]).double()
            stats[2:, 0] += (ce * codec).sum(0).double()
            stats[2:, 1] += (correct * codec).sum(0).double()
            stats[2:, 2] += codec.sum(0).double()
    num_targets = int(mask[:, 0].sum())
    mean = (stats[:, 0] / stats[:, 2]).float()  # NaN where a group has no token: nothing to report
    accuracy = (stats[:, 1] / stats[:, 2]).float()
    return LossOutput(
        loss=weighted / max(num_targets, 1),
        text_loss=mean[0],
        audio_loss=mean[1],
        codebook_losses=mean[2:],
        text_accuracy=accuracy[0],
        audio_accuracy=accuracy[1],
        codebook_accuracies=accuracy[2:],
        num_targets=num_targets,
    )


def _chunk(h, t, m, logits_fn, num_streams) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token cross entropy and correctness ``[C, K]`` (zero where not a target)."""
    ce = h.new_zeros(t.shape, dtype=torch.float32)
    correct = h.new_zeros(t.shape, dtype=torch.float32)
    for k in range(num_streams):
        rows = m[:, k].nonzero().squeeze(1)  # only the positions where stream k has a target
        if rows.numel() == 0:
            continue
        logits, offset = logits_fn(h[rows], k)
        local = t[rows, k] - offset
        inside = (local >= 0) & (local < logits.shape[-1])
        if not bool(inside.all()):
            bad = int(t[rows, k][~inside][0])
            raise ValueError(
                f"target id {bad} of stream {k} lies outside that stream's output ids "
                f"[{offset}, {offset + logits.shape[-1]})"
            )
        ce = ce.index_put(
            (rows, torch.full_like(rows, k)), F.cross_entropy(logits.float(), local, reduction="none")
        )
        hit = (logits.argmax(-1) == local).float()
        correct = correct.index_put((rows, torch.full_like(rows, k)), hit)
    return ce, correct
