"""Codebook interleaving patterns: how K parallel code streams ``[B, K, T]`` are laid out in time.

Every pattern here is an affine map from (codebook k, frame t) to a step of the K-stream sequence::

    step(k, t) = t * stride + offset[k]            S(T) = (T - 1) * stride + max(offset) + 1 steps

``delay`` (default; MusicGen / Bagpiper): stride 1, offset[k] = delay[k] (default k). K = 4, T = 3,
``.`` = that stream's pad::

    step:        0   1   2   3   4   5
    stream 0:   a0  a1  a2   .   .   .
    stream 1:    .  b0  b1  b2   .   .
    stream 2:    .   .  c0  c1  c2   .
    stream 3:    .   .   .  d0  d1  d2

``parallel``: stride 1, no offsets (all codebooks of a frame in one step, S = T).

``flatten`` (the unrolled pattern of the MusicGen paper): stride K, offset[k] = k; one codebook per
step, so S = K * T::

    step:        0   1   2   3   4   5   6   7 ...
    stream 0:   a0   .   .   .  a1   .   .   . ...
    stream 1:    .  b0   .   .   .  b1   .   . ...
    stream 2:    .   .  c0   .   .   .  c1   . ...
    stream 3:    .   .   .  d0   .   .   .  d1 ...

``apply`` and ``revert`` copy one strided slice per codebook (no Python loop over time, no index
tensor: the memory-copy floor, for any per-codebook delays), so ``revert(apply(x)) == x`` exactly. ``code_mask`` tells which steps of each stream hold a code
(everything else is a forced pad, which inference enforces). ``revert_logits`` gathers per-step
logits back to frames and fills frames whose step does not exist in the input with NaN, loudly.
"""

from __future__ import annotations

import torch

__all__ = ["CodebookPattern", "DelayPattern", "ParallelPattern", "FlattenPattern"]


class CodebookPattern:
    """An affine layout ``step(k, t) = t * stride + offsets[k]`` of K code streams.

    Args:
        num_codebooks: K.
        offsets: per-codebook step offset, length K, non-negative integers.
        stride: steps per frame.
    """

    def __init__(self, num_codebooks: int, offsets: list[int], stride: int = 1):
        if not isinstance(num_codebooks, int) or num_codebooks < 1:
            raise ValueError(f"num_codebooks must be a positive int, got {num_codebooks!r}")
        offsets = [int(o) for o in offsets]
        if len(offsets) != num_codebooks:
            raise ValueError(
                f"need one offset per codebook: got {len(offsets)} for num_codebooks={num_codebooks}"
            )
        if min(offsets) < 0:
            raise ValueError(f"offsets (delays) must be >= 0, got {offsets}")
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        self.num_codebooks = num_codebooks
        self.offsets = offsets
        self.stride = int(stride)
        self._offsets = torch.tensor(offsets, dtype=torch.long)
        # Two codebooks must never share a step in their stream positions: steps are per-stream, so
        # collisions are impossible by construction; one frame's steps must also not reach the next
        # frame's steps of the same stream, which stride >= 1 guarantees.

    @property
    def max_delay(self) -> int:
        """Extra steps past the last frame's first step: ``max(offsets)``."""
        return max(self.offsets)

    def num_steps(self, num_frames: int) -> int:
        """Steps ``S`` that hold ``num_frames`` frames: ``(T - 1) * stride + max_delay + 1`` (0 for T = 0)."""
        if num_frames <= 0:
            return 0
        return (num_frames - 1) * self.stride + self.max_delay + 1

    def num_frames(self, num_steps: int) -> int:
        """Complete frames in ``num_steps`` steps (the inverse of :meth:`num_steps`)."""
        return max(0, (num_steps - self.max_delay - 1) // self.stride + 1)

    def _index(self, num_frames: int, device: torch.device) -> torch.Tensor:
        """``[K, T]`` step of every (codebook, frame)."""
        t = torch.arange(num_frames, device=device)
        return t[None, :] * self.stride + self._offsets.to(device)[:, None]

    def _check(self, x: torch.Tensor, name: str, rank: int = 3) -> None:
        if not isinstance(x, torch.Tensor) or x.dim() != rank:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{name} must have shape [B, K, T{', V' if rank == 4 else ''}], got {shape}")
        if x.shape[1] != self.num_codebooks:
            raise ValueError(
                f"{name} has {x.shape[1]} codebooks (dim 1); this pattern has K={self.num_codebooks}"
            )

    def apply(self, codes: torch.Tensor, pad_ids: torch.Tensor | int) -> torch.Tensor:
        """Lay out ``codes [B, K, T]`` as streams ``[B, K, S(T)]``; steps without a code hold ``pad_ids[k]``."""
        self._check(codes, "codes")
        batch, k, frames = codes.shape
        pad = torch.as_tensor(pad_ids, dtype=codes.dtype, device=codes.device)
        if pad.dim() == 0:
            pad = pad.expand(k)
        if pad.shape != (k,):
            raise ValueError(f"pad_ids must be a scalar or have shape [K={k}], got {tuple(pad.shape)}")
        out = pad[None, :, None].expand(batch, k, self.num_steps(frames)).clone()
        for cb in range(k):  # one strided slice copy per codebook: the memory-copy floor, no index tensor
            out[:, cb, self._steps(cb, frames)] = codes[:, cb]
        return out

    def _steps(self, k: int, frames: int) -> slice:
        """Steps of codebook ``k`` for ``frames`` frames, as a slice (``offset + t * stride``)."""
        start = self.offsets[k]
        return slice(start, start + max(frames - 1, 0) * self.stride + 1 if frames else start, self.stride)

    def revert(self, streams: torch.Tensor, num_frames: int | None = None) -> torch.Tensor:
        """Exact inverse of :meth:`apply`: ``streams [B, K, S] -> codes [B, K, T]``.

        ``num_frames`` defaults to the complete frames in ``S``; asking for more raises.
        """
        self._check(streams, "streams")
        frames = self.num_frames(streams.shape[-1]) if num_frames is None else int(num_frames)
        if self.num_steps(frames) > streams.shape[-1]:
            raise ValueError(
                f"{frames} frames need {self.num_steps(frames)} steps, streams have {streams.shape[-1]}; "
                "use revert_logits for partial sequences"
            )
        return torch.stack(
            [streams[:, cb, self._steps(cb, frames)] for cb in range(self.num_codebooks)], dim=1
        )

    def revert_logits(self, logits: torch.Tensor, num_frames: int | None = None) -> torch.Tensor:
        """``logits [B, K, S, V]`` per step -> ``[B, K, T, V]`` per frame.

        ``num_frames`` may exceed the complete frames in ``S`` (e.g. ``S`` frames of a partial
        decode); frames whose step lies past ``S`` do not exist and are NaN.
        """
        self._check(logits, "logits", rank=4)
        batch, k, steps, vocab = logits.shape
        frames = self.num_frames(steps) if num_frames is None else int(num_frames)
        if steps == 0:  # nothing to gather from: every requested frame is missing
            return logits.new_full((batch, k, frames, vocab), float("nan"))
        index = self._index(frames, logits.device)
        exists = index < steps
        gathered = logits.gather(
            2, index.clamp(max=max(steps - 1, 0))[None, :, :, None].expand(batch, k, frames, vocab)
        )
        return gathered.masked_fill(~exists[None, :, :, None], float("nan"))

    def code_mask(self, num_steps: int, num_frames: int | None = None, device=None) -> torch.Tensor:
        """BoolTensor ``[K, S]``: True where stream k holds a code at step s; False = forced pad.

        With ``num_frames`` unknown (still generating) only the leading offsets are forced pad,
        and every later step may hold a code; with it known, steps past the last frame are pad too.
        """
        steps = torch.arange(num_steps, device=device)
        rel = steps[None, :] - self._offsets.to(device)[:, None]  # [K, S]
        mask = (rel >= 0) & (rel % self.stride == 0)
        if num_frames is not None:
            mask &= rel < int(num_frames) * self.stride
        return mask

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_codebooks={self.num_codebooks}, offsets={self.offsets}, stride={self.stride})"


class DelayPattern(CodebookPattern):
    """MusicGen / Bagpiper delay interleave: codebook k shifted right by ``delays[k]`` (default k)."""

    def __init__(self, num_codebooks: int, delays: list[int] | None = None):
        super().__init__(
            num_codebooks, list(range(num_codebooks)) if delays is None else list(delays), stride=1
        )
        self.delays = self.offsets


class ParallelPattern(CodebookPattern):
    """All codebooks of a frame in the same step (no delay)."""

    def __init__(self, num_codebooks: int):
        super().__init__(num_codebooks, [0] * num_codebooks, stride=1)


class FlattenPattern(CodebookPattern):
    """Unrolled: frame t's codebook k at step ``t * K + k``, one codebook per step."""

    def __init__(self, num_codebooks: int):
        super().__init__(num_codebooks, list(range(num_codebooks)), stride=num_codebooks)
