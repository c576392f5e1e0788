"""Fréchet distance between Gaussians fitted to two sets of embeddings (FID / FAD).

For ``N(mu_a, S_a)`` and ``N(mu_b, S_b)``::

    d^2 = ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^{1/2})

Everything runs in float64 with torch only (no scipy). The trace of the matrix square root is taken
from the symmetric product ``M = S_a^{1/2} S_b S_a^{1/2}``: ``S_a S_b = S_a^{1/2} M S_a^{-1/2}`` is
similar to ``M``, so both have the same (real, non-negative) eigenvalues ``lambda_i`` and
``Tr((S_a S_b)^{1/2}) = sum_i sqrt(lambda_i)``. ``S_a^{1/2}`` and the ``lambda_i`` come from
``torch.linalg.eigh`` of symmetric matrices, which is stable for singular (rank-deficient)
covariances, e.g. fewer samples than dimensions; no ``eps * I`` is added and no imaginary part
appears. Rounding-level negative eigenvalues are clamped to 0; a covariance with clearly negative
eigenvalues is rejected. The result is clamped at 0 (it is a squared distance; rounding can give
``-1e-15`` for identical sets).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from bagpiper_lib.evaluation.metrics import as_matrix

__all__ = ["frechet_from_moments", "frechet_distance", "frechet_audio_distance", "gaussian_moments"]

_PSD_TOL = 1e-8  # relative to the largest eigenvalue


def _psd_eigh(matrix: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (clamped at 0) and eigenvectors of a symmetric PSD matrix; errors if it is not PSD."""
    if not torch.allclose(matrix, matrix.T, rtol=1e-6, atol=1e-9 * max(1.0, float(matrix.abs().max()))):
        raise ValueError(f"{name} must be a symmetric covariance matrix")
    values, vectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    scale = max(float(values.abs().max()), 1e-300) if values.numel() else 1.0
    if values.numel() and float(values.min()) < -_PSD_TOL * scale:
        raise ValueError(
            f"{name} is not positive semi-definite (smallest eigenvalue {float(values.min()):.3g}, "
            f"largest {scale:.3g})"
        )
    return values.clamp_min(0.0), vectors


def _trace_sqrt_product(sigma_a: torch.Tensor, sigma_b: torch.Tensor) -> torch.Tensor:
    """``Tr((S_a S_b)^{1/2})`` via the eigenvalues of ``S_a^{1/2} S_b S_a^{1/2}``."""
    values_a, vectors_a = _psd_eigh(sigma_a, "sigma_a")
    _psd_eigh(sigma_b, "sigma_b")
    sqrt_a = (vectors_a * values_a.sqrt()) @ vectors_a.T
    middle = sqrt_a @ sigma_b @ sqrt_a
    lambdas = torch.linalg.eigvalsh((middle + middle.T) / 2)
    return lambdas.clamp_min(0.0).sqrt().sum()


def frechet_from_moments(mu_a, sigma_a, mu_b, sigma_b) -> float:
    """Fréchet distance between ``N(mu_a [D], sigma_a [D, D])`` and ``N(mu_b [D], sigma_b [D, D])``.

    Covariances must be symmetric positive semi-definite (singular is fine).
    """
    tensors = {}
    for name, value, rank in (
        ("mu_a", mu_a, 1),
        ("sigma_a", sigma_a, 2),
        ("mu_b", mu_b, 1),
        ("sigma_b", sigma_b, 2),
    ):
        tensor = torch.as_tensor(value).detach().to(device="cpu", dtype=torch.float64)
        if tensor.dim() != rank:
            shape = "[D]" if rank == 1 else "[D, D]"
            raise ValueError(f"{name} must have shape {shape}, got {tuple(tensor.shape)}")
        if not torch.isfinite(tensor).all():
            raise ValueError(f"{name} contains NaN or Inf")
        tensors[name] = tensor
    dim = tensors["mu_a"].shape[0]
    for name in ("sigma_a", "mu_b", "sigma_b"):
        want = (dim,) * tensors[name].dim()
        if tuple(tensors[name].shape) != want:
            raise ValueError(
                f"{name} must have shape {list(want)} to match mu_a [D={dim}], got {list(tensors[name].shape)}"
            )
    diff = tensors["mu_a"] - tensors["mu_b"]
    sigma_a, sigma_b = tensors["sigma_a"], tensors["sigma_b"]
    trace_sqrt = _trace_sqrt_product(sigma_a, sigma_b)
    value = diff @ diff + torch.trace(sigma_a) + torch.trace(sigma_b) - 2.0 * trace_sqrt
    return max(float(value), 0.0)


def gaussian_moments(feats, name: str = "feats") -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``[D]`` and unbiased covariance ``[D, D]`` (divides by ``N - 1``) of ``feats [N, D]``, float64."""
    feats = as_matrix(feats, name)
    if feats.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 rows to estimate a covariance, got {feats.shape[0]}")
    mu = feats.mean(dim=0)
    centred = feats - mu
    sigma = centred.T @ centred / (feats.shape[0] - 1)
    return mu, sigma


def frechet_distance(feats_a, feats_b) -> float:
    """Fréchet distance between Gaussians fitted to ``feats_a [N, D]`` and ``feats_b [M, D]`` (N, M >= 2).

    Accepts tensors or arrays of any real dtype/device; computed on CPU in float64. Symmetric in its
    arguments, 0 for identical sets.
    """
    mu_a, sigma_a = gaussian_moments(feats_a, "feats_a")
    mu_b, sigma_b = gaussian_moments(feats_b, "feats_b")
    if mu_a.shape != mu_b.shape:
        raise ValueError(
            f"feats_a and feats_b must have the same feature dim D, got {mu_a.shape[0]} and {mu_b.shape[0]}"
        )
    return frechet_from_moments(mu_a, sigma_a, mu_b, sigma_b)


def frechet_audio_distance(
    wavs_a: Sequence[torch.Tensor] | torch.Tensor,
    wavs_b: Sequence[torch.Tensor] | torch.Tensor,
    embedder,
    sample_rate: int,
) -> float:
    """Fréchet audio distance: embed both sets with ``embedder`` and compare their Gaussians.

    Args:
        wavs_a, wavs_b: at least 2 waveforms each, a list of ``[N_i]`` tensors (any lengths) or a
            ``[B, N]`` tensor.
        embedder: an :class:`~bagpiper_lib.evaluation.embedders.AudioEmbedder`
            (``embed(wavs, sample_rate) -> [B, D]``), e.g. ``EncoderAudioEmbedder`` or ``ClapAudioEmbedder``.
        sample_rate: rate of both sets in Hz (embedders resample to their own rate).
    """
    for name, wavs in (("wavs_a", wavs_a), ("wavs_b", wavs_b)):
        if len(wavs) < 2:
            raise ValueError(f"{name} needs at least 2 waveforms for a Fréchet distance, got {len(wavs)}")
    if not callable(getattr(embedder, "embed", None)):
        raise TypeError(
            f"embedder must have an embed(wavs, sample_rate) method, got {type(embedder).__name__}"
        )
    feats_a = embedder.embed(wavs_a, sample_rate)
    feats_b = embedder.embed(wavs_b, sample_rate)
    return frechet_distance(feats_a, feats_b)
