"""Adaptors: encoder features ``[B, T, D_in]`` -> LLM-sized frames ``[B, T // k, D_out]``.

The adaptor sits between the (usually frozen) audio encoder and the backbone; its outputs replace the
audio placeholder positions of the token sequence. Three entries:

* ``mlp`` — ``Linear -> GELU -> Linear`` (the Bagpiper paper).
* ``linear`` — one ``Linear`` (the ESPnet reference implementation).
* ``transformer`` — ``Linear``, then pre-norm self-attention blocks over each clip's frames, then
  ``Linear``: temporal context for encoders that have none (log-mel features, a frozen codec's
  frames), so the backbone receives frames that already relate onsets, levels and pitches.

Frame stacking (``downsample = k``): ``k`` consecutive frames are concatenated along the feature axis
before the projection, so the projection sees ``k * input_dim`` features and the frame rate drops by
``k``. Output frame ``t`` holds input frames ``t*k .. t*k + k - 1`` in order; it is exactly a reshape::

    feats  [B, T, D]   f0 f1 | f2 f3 | f4 f5 | f6      (k = 2, T = 7)
    stacked [B, 3, 2D]  [f0 f1] [f2 f3] [f4 f5]        trailing partial group (f6) dropped

A trailing partial group is dropped, for the tensor and for every item: ``T_out = T // k`` and
``lengths_out = lengths // k``. An item with ``0 < lengths[b] < k`` frames would vanish, so it is an
error rather than a silent drop. Output frames at padded positions (``t >= lengths_out[b]``) are
exactly zero.

Clip statistics (``global_stats=True``, any adaptor): each stacked frame is concatenated with the mean
and the maximum of its clip's stacked frames (valid frames only) before the projection, as ECAPA-TDNN
appends global statistics to its frames. A clip-level property that sits in a few frames (the level of
a short sound event: its loudest frame) then reaches every frame, where the backbone's attention, an
average, would otherwise dilute it.

Registry: ``build({"name": "mlp", "input_dim": 32, "output_dim": 64, "downsample": 2})``; plugins
register through the entry-point group ``bagpiper_lib.adaptors``.
"""

from __future__ import annotations

import math
import operator

import torch
from torch import nn

from bagpiper_lib.registry import Registry

__all__ = [
    "Adaptor",
    "MLPAdaptor",
    "LinearAdaptor",
    "TransformerAdaptor",
    "registry",
    "available",
    "build",
    "register",
]

registry = Registry("adaptor", group="bagpiper_lib.adaptors")
available = registry.available
build = registry.build
register = registry.register


def _positive_int(name: str, value: object) -> int:
    """``value`` as an int >= 1, or a ``ValueError`` naming ``name``."""
    if not isinstance(value, bool):
        try:
            number = operator.index(value)
        except TypeError:
            number = None
        if number is not None and number >= 1:
            return number
    raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


class Adaptor(nn.Module):
    """Frame stacking, validation and padding for a projection ``[*, k * input_dim] -> [*, output_dim]``.

    Subclasses build ``self.proj`` (any module mapping the last axis) in ``__init__``.

    Args:
        input_dim: feature size ``D_in`` of the encoder output.
        output_dim: feature size ``D_out`` of the result (the backbone's hidden size).
        downsample: ``k``, frames stacked into one output frame (1 = no stacking).
        global_stats: concatenate the clip's mean and max stacked frame to every stacked frame.
    """

    proj: nn.Module

    def __init__(self, input_dim: int, output_dim: int, downsample: int = 1, global_stats: bool = False):
        super().__init__()
        self.input_dim = _positive_int("input_dim", input_dim)
        self.output_dim = _positive_int("output_dim", output_dim)
        self.downsample = _positive_int("downsample", downsample)
        if not isinstance(global_stats, bool):
            raise ValueError(f"global_stats must be true or false, got {global_stats!r}")
        self.global_stats = global_stats

    @property
    def stacked_dim(self) -> int:
        """Input size of the projection: ``downsample * input_dim``, three times that with ``global_stats``."""
        return self.downsample * self.input_dim * (3 if self.global_stats else 1)

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Valid output frames ``[B]`` for valid input frames ``lengths [B]``: ``lengths // downsample``."""
        return torch.div(lengths, self.downsample, rounding_mode="floor")

    def forward(
        self, feats: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``feats [B, T, input_dim]``, ``lengths [B]`` (default all ``T``) -> ``out [B, T // k, output_dim]``,
        ``lengths // k``. Output past an item's valid frames is exactly zero."""
        lengths = self._check(feats, lengths)
        batch, frames, dim = feats.shape
        k = self.downsample
        out_frames = frames // k
        out_lengths = self.output_lengths(lengths)
        stacked = feats[:, : out_frames * k].reshape(batch, out_frames, k * dim)
        valid = torch.arange(out_frames, device=feats.device)[None, :, None] < out_lengths[:, None, None]
        weight = next(self.proj.parameters())
        stacked = stacked.to(weight.dtype).masked_fill(~valid, 0.0)
        if self.global_stats:
            stacked = torch.cat([stacked, *_clip_stats(stacked, valid, out_lengths)], dim=-1).masked_fill(
                ~valid, 0.0
            )
        out = self._project(stacked, valid[..., 0]).masked_fill(~valid, 0.0)
        return out, out_lengths

    def _project(self, stacked: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """``stacked [B, T', stacked_dim]`` (zero where ``~valid [B, T']``) -> ``[B, T', output_dim]``.
        Frame-wise by default; a subclass mixing frames must keep each item's valid frames independent
        of padding."""
        return self.proj(stacked)

    def _check(self, feats: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        if not isinstance(feats, torch.Tensor):
            raise TypeError(f"feats must be a torch.Tensor of shape [B, T, D_in], got {type(feats).__name__}")
        if feats.dim() != 3:
            raise ValueError(
                f"feats must have shape [B, T, D_in] (rank 3), got rank {feats.dim()}: {tuple(feats.shape)}"
            )
        if not feats.is_floating_point():
            raise ValueError(f"feats must be floating point, got dtype {feats.dtype}")
        batch, frames, dim = feats.shape
        if dim != self.input_dim:
            raise ValueError(
                f"feats has feature size {dim} (dim 2) but this {type(self).__name__} was built with "
                f"input_dim={self.input_dim}"
            )
        if lengths is None:
            return torch.full((batch,), frames, dtype=torch.long, device=feats.device)
        lengths = torch.as_tensor(lengths, device=feats.device)
        if lengths.shape != (batch,) or lengths.dtype.is_floating_point or lengths.dtype == torch.bool:
            raise ValueError(
                f"lengths must be integer frame counts of shape [B] = [{batch}], got "
                f"dtype {lengths.dtype} shape {tuple(lengths.shape)}"
            )
        lengths = lengths.long()
        if (lengths < 0).any() or (lengths > frames).any():
            raise ValueError(f"lengths {lengths.tolist()} must lie in [0, T={frames}] frames of feats")
        short = (lengths > 0) & (lengths < self.downsample)
        if short.any():
            raise ValueError(
                f"lengths {lengths.tolist()}: items with fewer than downsample={self.downsample} frames "
                "would produce no output frame; use a smaller downsample or longer audio"
            )
        return lengths

    def extra_repr(self) -> str:
        stats = ", global_stats=True" if self.global_stats else ""
        return (
            f"input_dim={self.input_dim}, output_dim={self.output_dim}, downsample={self.downsample}{stats}"
        )


def _clip_stats(
    stacked: torch.Tensor, valid: torch.Tensor, lengths: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """Mean and max over each item's valid frames of ``stacked [B, T', D]``, broadcast to ``[B, T', D]``
    (zero for an item without frames)."""
    count = lengths.clamp(min=1).to(stacked.dtype)[:, None, None]
    mean = stacked.sum(dim=1, keepdim=True) / count  # padding is already zero
    peak = stacked.masked_fill(~valid, float("-inf")).amax(dim=1, keepdim=True)
    peak = peak.masked_fill((lengths == 0)[:, None, None], 0.0)
    return mean.expand_as(stacked), peak.expand_as(stacked)


@register("mlp", presets={"tiny": {"input_dim": 32, "output_dim": 64}})
class MLPAdaptor(Adaptor):
    """``Linear(k * input_dim, hidden_dim) -> GELU -> Linear(hidden_dim, output_dim)`` (the paper).

    ``hidden_dim`` defaults to ``output_dim``. Shapes: ``[B, T, input_dim] -> [B, T // k, output_dim]``.
    """

    def __init__(
        self,
        input_dim: int,
        output_dim: int,
        hidden_dim: int | None = None,
        downsample: int = 1,
        global_stats: bool = False,
    ):
        super().__init__(input_dim, output_dim, downsample, global_stats)
        self.hidden_dim = self.output_dim if hidden_dim is None else _positive_int("hidden_dim", hidden_dim)
        self.proj = nn.Sequential(
            nn.Linear(self.stacked_dim, self.hidden_dim),
            nn.GELU(),
            nn.Linear(self.hidden_dim, self.output_dim),
        )

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, hidden_dim={self.hidden_dim}"


@register("linear", presets={"tiny": {"input_dim": 32, "output_dim": 64}})
class LinearAdaptor(Adaptor):
    """``Linear(k * input_dim, output_dim)`` (the ESPnet reference). ``[B, T, input_dim] -> [B, T // k, output_dim]``."""

    def __init__(self, input_dim: int, output_dim: int, downsample: int = 1, global_stats: bool = False):
        super().__init__(input_dim, output_dim, downsample, global_stats)
        self.proj = nn.Linear(self.stacked_dim, self.output_dim)


def _sinusoids(frames: int, dim: int, device, dtype) -> torch.Tensor:
    """``[frames, dim]`` sine / cosine positions (the Transformer's, base 10000); odd ``dim`` pads a 0."""
    half = dim // 2
    inv = torch.exp(
        -torch.arange(half, device=device, dtype=torch.float32) * (math.log(10000.0) / max(half, 1))
    )
    angles = torch.arange(frames, device=device, dtype=torch.float32)[:, None] * inv[None]
    out = torch.cat([angles.sin(), angles.cos(), angles.new_zeros(frames, dim - 2 * half)], dim=1)
    return out.to(dtype)


@register(
    "transformer", presets={"tiny": {"input_dim": 32, "output_dim": 64, "num_layers": 1, "num_heads": 2}}
)
class TransformerAdaptor(Adaptor):
    """``Linear(k * input_dim, hidden_dim)`` + sinusoidal positions, ``num_layers`` pre-norm Transformer
    blocks (``num_heads`` heads, GELU feed-forward of ``ffn_dim``) attending over each item's valid
    frames only, ``LayerNorm``, ``Linear(hidden_dim, output_dim)``.

    ``hidden_dim`` defaults to ``output_dim`` and ``ffn_dim`` to ``4 * hidden_dim``. An item's output
    does not depend on the other items of the batch or on padding. Shapes as for every adaptor:
    ``[B, T, input_dim] -> [B, T // k, output_dim]``.
    """

    def __init__(
        self,
        input_dim: int,
        output_dim: int,
        hidden_dim: int | None = None,
        num_layers: int = 2,
        num_heads: int = 4,
        ffn_dim: int | None = None,
        downsample: int = 1,
        dropout: float = 0.0,
        global_stats: bool = False,
    ):
        super().__init__(input_dim, output_dim, downsample, global_stats)
        self.hidden_dim = self.output_dim if hidden_dim is None else _positive_int("hidden_dim", hidden_dim)
        self.num_layers = _positive_int("num_layers", num_layers)
        self.num_heads = _positive_int("num_heads", num_heads)
        if self.hidden_dim % self.num_heads:
            raise ValueError(f"hidden_dim={self.hidden_dim} must be divisible by num_heads={self.num_heads}")
        self.ffn_dim = 4 * self.hidden_dim if ffn_dim is None else _positive_int("ffn_dim", ffn_dim)
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout!r}")
        self.proj = nn.Linear(self.stacked_dim, self.hidden_dim)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                self.hidden_dim,
                self.num_heads,
                self.ffn_dim,
                float(dropout),
                activation="gelu",
                batch_first=True,
                norm_first=True,
            )
            for _ in range(self.num_layers)
        )
        self.norm = nn.LayerNorm(self.hidden_dim)
        self.out = nn.Linear(self.hidden_dim, self.output_dim)

    def _project(self, stacked: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        x = self.proj(stacked)
        x = x + _sinusoids(x.shape[1], x.shape[2], x.device, x.dtype)
        # an item without frames attends to its first (zero) frame, so no row of the softmax is empty;
        # its output is zeroed by the caller
        pad = ~valid
        pad[:, 0] &= valid.any(dim=1)
        for layer in self.layers:
            x = layer(x, src_key_padding_mask=pad)
        return self.out(self.norm(x))

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, hidden_dim={self.hidden_dim}, num_layers={self.num_layers}, "
            f"num_heads={self.num_heads}, ffn_dim={self.ffn_dim}"
        )
