"""Audio utilities in pure torch: input validation, mono down-mix, polyphase resampling, file IO.

No torchaudio here: the core runs with any torch >= 2.4.

The resampler reproduces ``scipy.signal.resample_poly(x, up, down)`` with its default window
(``("kaiser", 5.0)``, half length ``10 * max(up, down)``): the same windowed-sinc FIR is designed
in float64 and applied as a strided polyphase convolution, one output phase per channel, so the cost
is O(N * taps / down) instead of scipy's explicit up-sampling.
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["resample", "prepare_audio", "pad_waveforms", "load_audio", "save_audio"]


@lru_cache(maxsize=32)
def _polyphase_kernel(up: int, down: int) -> tuple[torch.Tensor, int]:
    """Kernel ``[up, 1, W]`` (float64) and left padding for the strided polyphase convolution.

    Output sample ``j = p + up * t`` equals ``sum_u x[t * down + u] * h_c(p * down - u * up)`` with
    ``h_c(d) = h[half_len + d]`` the centred low-pass FIR (zero outside ``|d| <= half_len``).
    """
    max_rate = max(up, down)
    half_len = 10 * max_rate
    taps = 2 * half_len + 1
    cutoff = 1.0 / max_rate
    n = torch.arange(taps, dtype=torch.float64) - half_len
    window = torch.kaiser_window(taps, periodic=False, beta=5.0, dtype=torch.float64)
    h = cutoff * torch.sinc(cutoff * n) * window
    h = h / h.sum() * up
    u_min = -(half_len // up)  # ceil(-half_len / up)
    u_max = ((up - 1) * down + half_len) // up
    u = torch.arange(u_min, u_max + 1)
    d = torch.arange(up)[:, None] * down - u[None, :] * up  # [up, W]
    valid = d.abs() <= half_len
    kernel = torch.where(valid, h[(d + half_len).clamp(0, taps - 1)], torch.zeros((), dtype=torch.float64))
    return kernel[:, None, :], -u_min


def resample(wav: torch.Tensor, orig_sr: int, new_sr: int) -> torch.Tensor:
    """Resample ``wav [..., N]`` from ``orig_sr`` to ``new_sr`` Hz along the last axis.

    Returns ``[..., ceil(N * new_sr / orig_sr)]``, matching ``scipy.signal.resample_poly`` to
    float32 precision. Integer rates only; equal rates return the input unchanged.
    """
    for name, value in (("orig_sr", orig_sr), ("new_sr", new_sr)):
        try:
            valid = value > 0 and int(value) == value
        except (TypeError, ValueError, OverflowError):  # None, str, inf, ...
            valid = False
        if not valid:
            raise ValueError(f"{name} must be a positive integer sample rate in Hz, got {value!r}")
    orig_sr, new_sr = int(orig_sr), int(new_sr)
    if orig_sr == new_sr:
        return wav
    g = math.gcd(orig_sr, new_sr)
    up, down = new_sr // g, orig_sr // g
    if not wav.is_floating_point():
        raise ValueError(f"wav must be a floating-point tensor, got dtype {wav.dtype}")
    lead, n_in = wav.shape[:-1], wav.shape[-1]
    n_out = -(-n_in * up // down)
    if wav.numel() == 0:
        return wav.new_zeros((*lead, n_out))
    kernel, left = _polyphase_kernel(up, down)
    n_steps = -(-n_out // up)  # output frames of `up` samples each
    width = kernel.shape[-1]
    right = max(0, (n_steps - 1) * down + width - left - n_in)
    x = wav.reshape(-1, 1, n_in)
    compute_dtype = torch.float64 if wav.dtype == torch.float64 else torch.float32
    x = F.pad(x.to(compute_dtype), (left, right))
    y = F.conv1d(x, kernel.to(device=wav.device, dtype=compute_dtype), stride=down)  # [M, up, n_steps]
    y = y.transpose(1, 2).reshape(x.shape[0], -1)[:, :n_out]
    return y.to(wav.dtype).reshape(*lead, n_out)


def pad_waveforms(wavs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """1-D waveforms ``[N_i]`` -> a zero-padded float32 batch ``[B, max N_i]`` and ``lengths [B]`` (long)."""
    lengths = torch.tensor([w.shape[0] for w in wavs])
    batch = torch.zeros(len(wavs), int(lengths.max()))
    for row, wav in enumerate(wavs):
        batch[row, : wav.shape[0]] = wav
    return batch, lengths


def prepare_audio(
    wav: torch.Tensor,
    lengths: torch.Tensor | None = None,
    sample_rate: int | None = None,
    target_sample_rate: int | None = None,
    min_samples: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate a waveform batch and bring it to mono at ``target_sample_rate``.

    Args:
        wav: ``[N]``, ``[B, N]`` or ``[B, C, N]`` floating point; ``C > 1`` is averaged to mono.
        lengths: valid samples per item ``[B]`` (at ``sample_rate``); default: all ``N``.
        sample_rate: rate of ``wav``; resampled to ``target_sample_rate`` when they differ.
        min_samples: the shortest valid length accepted (after resampling).

    Returns:
        ``wav [B, N']`` float and ``lengths [B]`` long, both at ``target_sample_rate``. Samples past
        an item's length are zeroed so padding content never leaks into a model.
    """
    if not isinstance(wav, torch.Tensor):
        raise TypeError(f"wav must be a torch.Tensor of shape [B, N] or [B, C, N], got {type(wav).__name__}")
    if wav.dim() not in (1, 2, 3):
        raise ValueError(f"wav must have shape [N], [B, N] or [B, C, N], got {tuple(wav.shape)}")
    if not wav.is_floating_point():
        raise ValueError(f"wav must be floating point (samples in [-1, 1]), got dtype {wav.dtype}")
    if wav.numel() == 0:
        raise ValueError(f"wav is empty: shape {tuple(wav.shape)}; expected at least one sample per item")
    if wav.dim() == 1:
        wav = wav[None]
    elif wav.dim() == 3:
        wav = wav.mean(dim=1)
    batch, n = wav.shape
    if not torch.isfinite(wav).all():
        raise ValueError("wav contains NaN or Inf samples; clean the audio before encoding")
    if lengths is None:
        lengths = torch.full((batch,), n, dtype=torch.long, device=wav.device)
    else:
        lengths = torch.as_tensor(lengths, device=wav.device)
        if lengths.shape != (batch,):
            raise ValueError(f"lengths must have shape [B] = [{batch}], got {tuple(lengths.shape)}")
        if lengths.dtype.is_floating_point or lengths.dtype == torch.bool:
            raise ValueError(f"lengths must be integer sample counts, got dtype {lengths.dtype}")
        lengths = lengths.long()
        if (lengths > n).any():
            raise ValueError(f"lengths {lengths.tolist()} exceed the number of samples in wav ({n})")
        if (lengths <= 0).any():
            raise ValueError(f"lengths must be positive, got {lengths.tolist()}")
    if (
        sample_rate is not None
        and target_sample_rate is not None
        and int(sample_rate) != int(target_sample_rate)
    ):
        # zero the padding first: the filter would otherwise smear it into the valid samples
        wav = wav * (torch.arange(n, device=wav.device)[None] < lengths[:, None])
        wav = resample(wav, int(sample_rate), int(target_sample_rate))
        lengths = torch.clamp(-(-lengths * int(target_sample_rate) // int(sample_rate)), max=wav.shape[-1])
    if (lengths < min_samples).any():
        rate = target_sample_rate or sample_rate
        at = f" at {rate} Hz" if rate else ""
        raise ValueError(
            f"audio too short: lengths {lengths.tolist()} samples{at}, need at least min_samples={min_samples}"
        )
    mask = torch.arange(wav.shape[-1], device=wav.device)[None] < lengths[:, None]
    return wav * mask, lengths


def load_audio(path: str | Path, sample_rate: int | None = None) -> tuple[torch.Tensor, int]:
    """Read an audio file with ``soundfile`` as mono float32 ``[N]``; resample if ``sample_rate`` given.

    Raises ``ValueError`` naming the file when it is missing, unreadable or corrupt.
    """
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"audio file {str(path)!r} does not exist")
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as err:  # soundfile raises several types for corrupt files
        raise ValueError(f"cannot read audio file {str(path)!r}: {err}") from err
    wav = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1)))
    if wav.numel() == 0:
        raise ValueError(f"audio file {str(path)!r} is empty")
    if sample_rate is not None and sample_rate != sr:
        wav, sr = resample(wav, sr, sample_rate), sample_rate
    return wav, int(sr)


def save_audio(path: str | Path, wav: torch.Tensor, sample_rate: int) -> None:
    """Write mono ``wav [N]`` (float in [-1, 1]) as 16-bit PCM WAV."""
    import soundfile as sf

    if wav.dim() > 1 and wav.shape[:-1].numel() != 1:
        raise ValueError(f"wav must be mono [N] or [1, N], got shape {tuple(wav.shape)}")
    wav = wav.detach().float().cpu().reshape(-1).clamp(-1.0, 1.0).numpy()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), wav, int(sample_rate), subtype="PCM_16")
