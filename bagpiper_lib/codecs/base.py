"""The ``AudioCodec`` contract shared by every discrete audio tokenizer.

A codec turns a waveform into ``K`` parallel streams of integer codes at ``frame_rate`` Hz and back.
Subclasses implement three small hooks on clean tensors; this base class owns everything a caller
can get wrong (shapes, dtypes, sample rates, channels, padding, code ranges) so every codec rejects
bad input with the same clear messages::

    encode(wav [B, N] | [B, C, N] | [N], lengths [B], sample_rate) -> codes [B, K, T], frames [B]
        validate -> down-mix -> resample -> pad N to a multiple of hop_length -> _encode
    decode(codes [B, K, T], lengths [B]) -> wav [B, T * hop_length], samples [B]
        validate -> _decode

Frame counts: ``T = ceil(N / hop_length)``; ``frames[b] = ceil(lengths[b] / hop_length)``. Codes past
an item's valid frames are 0 and decoded samples past its valid samples are 0.

Padded batches: item ``b`` of a padded batch gets exactly the codes it gets when encoded alone for
every frame ``t < frames[b] - context_frames``, the frames whose receptive field ends inside the item's
valid samples. Codecs whose encoder sees the whole clip (global attention, clip-level normalisation)
set ``context_frames = None``; their ragged batches are encoded in groups of equal length, so every
frame matches.
"""

from __future__ import annotations

import abc
import contextlib
import importlib
import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bagpiper_lib.audio import prepare_audio
from bagpiper_lib.utils import seeded

__all__ = [
    "AudioCodec",
    "conv_context_frames",
    "import_optional",
    "load_state",
    "load_strict",
    "resolve_bandwidth",
    "save_state",
    "seeded",
]


class AudioCodec(nn.Module, abc.ABC):
    """A frozen discrete audio tokenizer: ``encode`` waveforms to codes ``[B, K, T]`` and ``decode`` back.

    Subclasses set ``sample_rate``, ``hop_length`` (samples per frame), ``num_codebooks``,
    ``codebook_size`` and ``context_frames`` in ``__init__``, call :meth:`freeze` at its end, and
    implement :meth:`_encode`, :meth:`_decode` and :meth:`save_pretrained`.
    """

    sample_rate: int
    hop_length: int
    num_codebooks: int
    codebook_size: int
    context_frames: int | None = 0

    # ------------------------------------------------------------------ hooks
    @abc.abstractmethod
    def _encode(self, wav: torch.Tensor) -> torch.Tensor:
        """``wav [B, N]`` (mono, ``N`` a multiple of ``hop_length``) -> codes ``[B, K, N // hop_length]``."""

    @abc.abstractmethod
    def _decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Valid codes ``[B, K, T]`` -> ``wav [B, N']`` with ``N'`` close to ``T * hop_length``."""

    @abc.abstractmethod
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write the weights and config so that ``build({"name": ..., "pretrained": directory})`` reloads them."""

    # ------------------------------------------------------------------ properties
    @property
    def frame_rate(self) -> float:
        """Frames per second of the code streams."""
        return self.sample_rate / self.hop_length

    @property
    def device(self) -> torch.device:
        return next(self._tensors()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(t.dtype for t in self._tensors() if t.is_floating_point())

    def _tensors(self) -> Iterator[torch.Tensor]:
        yield from self.parameters()
        yield from self.buffers()

    def num_frames(self, num_samples: int | torch.Tensor) -> int | torch.Tensor:
        """Frames for ``num_samples`` samples at ``sample_rate``: ``ceil(num_samples / hop_length)``."""
        if isinstance(num_samples, torch.Tensor):
            return torch.div(num_samples + self.hop_length - 1, self.hop_length, rounding_mode="floor")
        return -(-int(num_samples) // self.hop_length)

    # ------------------------------------------------------------------ frozen by default
    def freeze(self) -> AudioCodec:
        """Eval mode and no gradients; :meth:`train` keeps it that way."""
        self.requires_grad_(False)
        return super().train(False)

    def train(self, mode: bool = True) -> AudioCodec:
        """Codecs are frozen tokenizers: ``train()`` leaves them in eval mode (dropout, norms untouched)."""
        return super().train(False)

    # ------------------------------------------------------------------ public API
    @torch.no_grad()
    def encode(
        self,
        wav: torch.Tensor,
        lengths: torch.Tensor | None = None,
        sample_rate: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode ``wav`` to codes.

        Args:
            wav: ``[N]``, ``[B, N]`` or ``[B, C, N]`` float samples in [-1, 1]; channels are averaged.
            lengths: valid samples per item ``[B]`` for a padded batch (at ``sample_rate``).
            sample_rate: rate of ``wav`` in Hz; resampled to :attr:`sample_rate` when different.
                ``None`` means it is already at :attr:`sample_rate`.

        Returns:
            ``codes [B, K, T]`` long in ``[0, codebook_size)`` with ``T = ceil(N' / hop_length)``
            (``N'`` the resampled length), and valid frame counts ``frames [B]``.
        """
        wav, lengths = prepare_audio(wav, lengths, sample_rate, self.sample_rate)
        wav = wav.to(device=self.device, dtype=self.dtype)
        lengths = lengths.to(wav.device)
        total = self.num_frames(wav.shape[-1])
        frames = self.num_frames(lengths)
        if self.context_frames is None and not bool((lengths == lengths[0]).all()):
            codes = wav.new_zeros((wav.shape[0], self.num_codebooks, total), dtype=torch.long)
            for length in lengths.unique().tolist():
                rows = (lengths == length).nonzero().squeeze(1)
                group = self._encode_padded(wav[rows, :length])
                codes[rows, :, : group.shape[-1]] = group
        else:
            codes = self._encode_padded(wav)
        valid = torch.arange(total, device=codes.device)[None, None] < frames[:, None, None]
        return codes.masked_fill(~valid, 0), frames

    def _half_precision(self) -> contextlib.AbstractContextManager:
        """Autocast to the codec's dtype where its weights are half precision.

        A bf16 run may leave a codec's weights and buffers in different dtypes (DeepSpeed and FSDP mixed
        precision cast parameters and buffers separately), and the reference implementations add float32
        intermediates to half-precision ones; autocast runs every matmul and convolution in one dtype.
        """
        dtype = self.dtype  # the first floating tensor's: O(1)
        if dtype not in (torch.bfloat16, torch.float16):
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def _encode_padded(self, wav: torch.Tensor) -> torch.Tensor:
        n = wav.shape[-1]
        total = self.num_frames(n)
        wav = nn.functional.pad(wav, (0, total * self.hop_length - n))
        with self._half_precision():
            codes = self._encode(wav)
        if codes.shape != (wav.shape[0], self.num_codebooks, total):
            raise RuntimeError(
                f"{type(self).__name__}._encode returned codes of shape {tuple(codes.shape)}, "
                f"expected {(wav.shape[0], self.num_codebooks, total)}"
            )
        return codes.long()

    @torch.no_grad()
    def decode(
        self, codes: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode ``codes [B, K, T]`` to ``wav [B, T * hop_length]`` at :attr:`sample_rate`.

        ``lengths [B]`` are valid frame counts (default: all ``T``); codes past them are ignored and
        may hold anything (e.g. pad ids). Returns the waveform and valid sample counts ``[B]``.
        """
        codes, lengths = self.check_codes(codes, lengths)
        valid = torch.arange(codes.shape[-1], device=codes.device)[None, None] < lengths[:, None, None]
        codes = codes.masked_fill(~valid, 0).to(self.device)
        with self._half_precision():
            wav = self._decode(codes).to(torch.float32)
        n = codes.shape[-1] * self.hop_length
        wav = nn.functional.pad(wav, (0, max(0, n - wav.shape[-1])))[:, :n]
        samples = (lengths * self.hop_length).to(wav.device)
        mask = torch.arange(n, device=wav.device)[None] < samples[:, None]
        return wav * mask, samples

    def check_codes(
        self, codes: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Validate ``codes [B, K, T]`` and frame ``lengths [B]``; return them (lengths defaulted)."""
        if not isinstance(codes, torch.Tensor):
            raise TypeError(f"codes must be a torch.Tensor of shape [B, K, T], got {type(codes).__name__}")
        if codes.dtype.is_floating_point or codes.dtype.is_complex or codes.dtype == torch.bool:
            raise ValueError(f"codes must be an integer tensor, got dtype {codes.dtype}")
        if codes.dim() != 3:
            raise ValueError(f"codes must have shape [B, K, T], got {tuple(codes.shape)}")
        batch, k, t = codes.shape
        if k != self.num_codebooks:
            raise ValueError(
                f"codes has {k} codebooks (dim 1) but this {type(self).__name__} decodes "
                f"num_codebooks={self.num_codebooks}"
            )
        if batch == 0 or t == 0:
            raise ValueError(f"codes is empty: shape {tuple(codes.shape)}; expected at least one frame")
        if lengths is None:
            lengths = torch.full((batch,), t, dtype=torch.long, device=codes.device)
        else:
            lengths = torch.as_tensor(lengths, device=codes.device)
            if lengths.shape != (batch,) or lengths.dtype.is_floating_point or lengths.dtype == torch.bool:
                raise ValueError(
                    f"lengths must be integer frame counts of shape [B] = [{batch}], got {lengths!r}"
                )
            lengths = lengths.long()
            if (lengths > t).any() or (lengths < 0).any():
                raise ValueError(f"lengths {lengths.tolist()} must lie in [0, T={t}] frames")
        valid = torch.arange(t, device=codes.device)[None, None] < lengths[:, None, None]
        bad = valid & ((codes < 0) | (codes >= self.codebook_size))
        if bad.any():
            b, kk, tt = (int(i) for i in bad.nonzero()[0])
            raise ValueError(
                f"codes out of range: codes[{b}, {kk}, {tt}] = {int(codes[b, kk, tt])}, expected values "
                f"in [0, codebook_size={self.codebook_size})"
            )
        return codes.long(), lengths

    def extra_repr(self) -> str:
        return (
            f"sample_rate={self.sample_rate}, frame_rate={self.frame_rate:g}, "
            f"num_codebooks={self.num_codebooks}, codebook_size={self.codebook_size}"
        )


def resolve_bandwidth(
    codec: str,
    bandwidths: list[float],
    codebooks_at: Callable[[float], int],
    bandwidth: float | None,
    num_codebooks: int | None,
) -> tuple[float, int]:
    """``(kbps, codebooks)`` a residual codec runs at, from ``bandwidth`` or ``num_codebooks`` (not both).

    ``bandwidth`` must be one of ``bandwidths`` (default: the largest). ``num_codebooks`` picks the lowest
    of ``bandwidths`` at which ``codebooks_at(kbps)`` equals it: every codec thus takes ``num_codebooks``
    (its first K residual levels), so a config that sets it keeps working when a sweep swaps the codec.
    ``codec`` names the model in the errors.
    """
    if num_codebooks is not None:
        if bandwidth is not None:
            raise ValueError(
                f"{codec}: give bandwidth or num_codebooks, not both (got bandwidth={bandwidth!r}, "
                f"num_codebooks={num_codebooks!r})"
            )
        counts = {float(b): int(codebooks_at(float(b))) for b in sorted(bandwidths)}
        matches = [
            kbps for kbps, k in counts.items() if k == num_codebooks and not isinstance(num_codebooks, bool)
        ]
        if not matches:
            choices = ", ".join(f"{k} at {kbps} kbps" for kbps, k in counts.items())
            raise ValueError(
                f"{codec}: num_codebooks={num_codebooks!r} matches none of its bandwidths; choose one of "
                f"{sorted(set(counts.values()))} codebooks ({choices})"
            )
        bandwidth = matches[0]
    kbps = float(bandwidths[-1] if bandwidth is None else bandwidth)
    if kbps not in bandwidths:
        raise ValueError(
            f"bandwidth {bandwidth!r} kbps is not supported by {codec}; choose one of {bandwidths}"
        )
    return kbps, int(codebooks_at(kbps))


def conv_context_frames(encoder: nn.Module, hop_length: int) -> int:
    """Frames at the end of a clip that zero padding may change, for a feed-forward conv encoder.

    Walks ``encoder``'s ``Conv1d`` layers in registration order (the forward order of SEANet- and
    DAC-style encoders) and sums each layer's reach ``(kernel - 1) * dilation`` in input samples,
    scaled by the stride accumulated before it. The bound is conservative: it counts the whole
    receptive field as look-ahead, even where the convolutions are centred.
    """
    reach, stride = 0, 1
    for module in encoder.modules():
        if isinstance(module, nn.Conv1d):
            reach += (module.kernel_size[0] - 1) * module.dilation[0] * stride
            stride *= module.stride[0]
    return math.ceil(reach / hop_length)


def import_optional(module: str, extra: str) -> Any:
    """Import an optional dependency, or fail in one line naming the ``pip install`` that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"this codec needs the optional package {module!r}, which is not installed: "
            f"pip install 'bagpiper-lib[{extra}]'"
        ) from err


CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def save_state(directory: str | Path, config: dict[str, Any], module: nn.Module) -> Path:
    """Write ``config.json`` (plain data) and ``model.safetensors`` (``module``'s state dict)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE))
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))
    return directory


def load_state(directory: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read what :func:`save_state` wrote: ``(config, state_dict)``; clear errors for missing files."""
    from safetensors.torch import load_file

    directory = Path(directory)
    missing = [f for f in (CONFIG_FILE, WEIGHTS_FILE) if not (directory / f).is_file()]
    if missing:
        raise FileNotFoundError(f"pretrained directory {str(directory)!r} lacks {', '.join(missing)}")
    config = json.loads((directory / CONFIG_FILE).read_text())
    return config, load_file(str(directory / WEIGHTS_FILE))


def load_strict(module: nn.Module, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """Load ``state`` into ``module``, or fail naming the missing, unexpected and mis-shaped tensors."""
    expected = module.state_dict()
    problems = {
        "missing": [k for k in expected if k not in state],
        "unexpected": [k for k in state if k not in expected],
        "shape mismatch": [
            f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
            for k, v in expected.items()
            if k in state and state[k].shape != v.shape
        ],
    }
    if any(problems.values()):
        detail = "; ".join(
            f"{what} ({len(keys)}): {', '.join(keys[:4])}{', ...' if len(keys) > 4 else ''}"
            for what, keys in problems.items()
            if keys
        )
        raise ValueError(
            f"weights in {str(source)!r} do not match the {type(module).__name__} architecture: {detail}"
        )
    module.load_state_dict(state, strict=True)
