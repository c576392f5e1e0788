"""Attention isolation for packed rows: segment ids, block-diagonal causal masks, varlen offsets.

A packed row concatenates several samples; ``position_ids`` restart inside the row where a new sample
begins. A new segment starts wherever ``position_ids[b, t] != position_ids[b, t - 1] + 1`` (a restart
at 0, or any other jump), so one row ``[0 1 2 0 1 0 1 2 3]`` holds three samples::

    position_ids  0 1 2 | 0 1 | 0 1 2 3
    segment_ids   0 0 0 | 1 1 | 2 2 2 2

and token ``q`` may attend token ``k`` iff ``segment[q] == segment[k]`` and ``k <= q``
(block-diagonal causal)::

          k: 0 1 2 3 4 5 6 7 8
    q = 0    x . . . . . . . .
    q = 2    x x x . . . . . .
    q = 4    . . . x x . . . .
    q = 8    . . . . . x x x x

Every attention backend receives the same pattern in its own form:

* ``sdpa``: a boolean mask ``[B, 1, T, T]`` (True = attend), :func:`block_causal_mask`;
* ``eager``: the same as an additive float mask (0 / dtype min), :func:`additive_mask`;
* ``flex_attention``: a ``BlockMask`` built from :func:`block_causal_mask_mod`;
* ``flash_attention_*``: no mask; the batch is flattened to one row and the sample boundaries go in
  as cumulative sequence lengths for the varlen kernel, :func:`varlen_kwargs`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = [
    "segment_starts",
    "segment_ids",
    "block_causal_mask",
    "additive_mask",
    "block_causal_mask_mod",
    "flex_block_mask",
    "varlen_kwargs",
]


def segment_starts(position_ids: torch.Tensor) -> torch.Tensor:
    """BoolTensor ``[B, T]``: True where a sample starts (always at ``t = 0``).

    Args:
        position_ids: ``[B, T]`` integer positions; a sample continues while they count up by one.
    """
    starts = torch.ones_like(position_ids, dtype=torch.bool)
    starts[:, 1:] = position_ids[:, 1:] != position_ids[:, :-1] + 1
    return starts


def segment_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """LongTensor ``[B, T]``: index of the packed sample each token belongs to, 0-based per row."""
    return segment_starts(position_ids).long().cumsum(-1) - 1


def block_causal_mask(
    segments: torch.Tensor,
    *,
    sliding_window: int | None = None,
    padding_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Boolean attention mask ``[B, 1, T, T]`` (True = may attend), block-diagonal and causal.

    Args:
        segments: ``[B, T]`` segment ids (:func:`segment_ids`).
        sliding_window: if set, token ``q`` sees only keys ``k > q - sliding_window`` (the transformers
            convention for sliding-attention layers).
        padding_mask: optional ``[B, T]`` (1/True = real token). Padding keys are hidden; every query
            keeps itself visible so that no row is empty (an all-masked softmax row would be NaN).
    """
    length = segments.shape[-1]
    idx = torch.arange(length, device=segments.device)
    allowed = idx[None, :] <= idx[:, None]  # [T(q), T(k)] causal
    if sliding_window is not None:
        allowed = allowed & (idx[None, :] > idx[:, None] - sliding_window)
    mask = allowed[None] & (segments[:, :, None] == segments[:, None, :])  # [B, T, T]
    if padding_mask is not None:
        keep = padding_mask.to(torch.bool)[:, None, :] | torch.eye(
            length, dtype=torch.bool, device=idx.device
        )
        mask = mask & keep
    return mask[:, None]


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Boolean mask -> additive float mask of ``dtype`` (0 where attended, ``finfo(dtype).min`` elsewhere)."""
    zero = torch.zeros((), dtype=dtype, device=mask.device)
    return torch.where(mask, zero, torch.finfo(dtype).min)


def block_causal_mask_mod(
    segments: torch.Tensor,
    *,
    sliding_window: int | None = None,
    padding_mask: torch.Tensor | None = None,
) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """The flex-attention ``mask_mod(b, h, q, k) -> bool`` of :func:`block_causal_mask` (same arguments)."""
    keep = None if padding_mask is None else padding_mask.to(torch.bool)

    def mask_mod(b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        allowed = (k <= q) & (segments[b, q] == segments[b, k])
        if sliding_window is not None:
            allowed = allowed & (k > q - sliding_window)
        if keep is not None:
            allowed = allowed & (keep[b, k] | (k == q))
        return allowed

    return mask_mod


def flex_block_mask(
    segments: torch.Tensor,
    *,
    sliding_window: int | None = None,
    padding_mask: torch.Tensor | None = None,
):
    """A flex-attention ``BlockMask`` for :func:`block_causal_mask_mod` over ``[B, T]`` segments."""
    from torch.nn.attention.flex_attention import create_block_mask

    batch, length = segments.shape
    mod = block_causal_mask_mod(segments, sliding_window=sliding_window, padding_mask=padding_mask)
    return create_block_mask(mod, B=batch, H=None, Q_LEN=length, KV_LEN=length, device=segments.device)


def varlen_kwargs(position_ids: torch.Tensor) -> dict[str, torch.Tensor | int]:
    """Flash-attention varlen arguments for the batch flattened to one row of ``B * T`` tokens.

    Every row start and every sample start inside a row opens a new sequence, so samples of
    different rows and of the same row never see each other.

    Args:
        position_ids: ``[B, T]``.

    Returns:
        ``cu_seq_lens_q`` / ``cu_seq_lens_k``: int32 ``[S + 1]`` cumulative lengths of the ``S``
        sequences; ``max_length_q`` / ``max_length_k``: the longest sequence (int).
    """
    flat = segment_starts(position_ids).reshape(-1)
    starts = flat.nonzero().view(-1)
    total = torch.tensor([flat.numel()], device=flat.device, dtype=starts.dtype)
    cu_seqlens = torch.cat([starts, total]).to(torch.int32)
    longest = int(cu_seqlens.diff().max())
    return {
        "cu_seq_lens_q": cu_seqlens,
        "cu_seq_lens_k": cu_seqlens,
        "max_length_q": longest,
        "max_length_k": longest,
    }
