"""Codebook patterns: ``DelayPattern.apply`` + ``revert`` against the memory-copy floor.

The floor is a plain per-codebook slicing loop (``out[:, k, d:d + T] = codes[:, k]`` and back), which
moves every code exactly once per direction. Entries (all asserting exact equality with the loop):

* ``patterns.delay``: ``[B, K, T]`` = ``[16, 8, 1500]``, default delays ``0..K-1``;
* ``patterns.delay_arbitrary``: the same shape with arbitrary per-codebook delays;
* ``patterns.delay_ragged``: a batch of items of ragged lengths, one ``[1, K, T_i]`` call each (as the
  sequence builder calls it per sample);
* ``patterns.first_call``: a length the pattern has never seen vs a length it has (no per-length
  layout may be built in Python).

Targets: ``<= 1.5x`` the loop, ``<= 2x`` first vs repeated call.
"""

from __future__ import annotations

from typing import Any

import torch

from benchmarks.harness import Target, entry, time_pair

NAME = "patterns"

SIZES: dict[str, dict[str, Any]] = {
    "full": {"batch": 16, "codebooks": 8, "frames": 1500, "ragged": (200, 1500), "repeats": 101, "inner": 10},
    "quick": {"batch": 16, "codebooks": 8, "frames": 1500, "ragged": (200, 1500), "repeats": 41, "inner": 5},
    "smoke": {"batch": 2, "codebooks": 4, "frames": 50, "ragged": (5, 50), "repeats": 3, "inner": 1},
}


def slicing_apply(codes: torch.Tensor, pad_ids: torch.Tensor, delays: list[int]) -> torch.Tensor:
    """The floor: ``[B, K, T] -> [B, K, T + max(delays)]`` by one slice copy per codebook."""
    batch, k, frames = codes.shape
    out = pad_ids[None, :, None].expand(batch, k, frames + max(delays)).clone()
    for i, d in enumerate(delays):
        out[:, i, d : d + frames] = codes[:, i]
    return out


def slicing_revert(streams: torch.Tensor, delays: list[int]) -> torch.Tensor:
    """The floor's inverse: one slice copy per codebook."""
    batch, k, steps = streams.shape
    frames = steps - max(delays)
    out = streams.new_empty(batch, k, frames)
    for i, d in enumerate(delays):
        out[:, i] = streams[:, i, d : d + frames]
    return out


def _check_exact(pattern, codes: torch.Tensor, pad_ids: torch.Tensor) -> None:
    streams = pattern.apply(codes, pad_ids)
    ref = slicing_apply(codes, pad_ids, pattern.offsets)
    if not torch.equal(streams, ref):
        raise AssertionError(f"{pattern!r}.apply differs from the slicing loop")
    if not torch.equal(pattern.revert(streams), codes) or not torch.equal(
        slicing_revert(ref, pattern.offsets), codes
    ):
        raise AssertionError(f"{pattern!r}: revert(apply(x)) != x")


def run(size: str = "full") -> list[dict[str, Any]]:
    from bagpiper_lib.sequence import DelayPattern

    cfg = SIZES[size]
    b, k, t, repeats, inner = cfg["batch"], cfg["codebooks"], cfg["frames"], cfg["repeats"], cfg["inner"]
    gen = torch.Generator().manual_seed(0)
    pad_ids = torch.arange(k) * 1025  # one pad id per stream, as in the global vocabulary
    codes = torch.randint(0, 1024, (b, k, t), generator=gen)
    arbitrary = torch.randperm(k, generator=gen).tolist()
    arbitrary[0] += 2  # not a permutation of 0..K-1 either: gaps and a shifted maximum
    target = Target("ratio", "<=", 1.5)
    results = []

    for name, delays in (("patterns.delay", None), ("patterns.delay_arbitrary", arbitrary)):
        pattern = DelayPattern(k, delays)
        _check_exact(pattern, codes, pad_ids)
        offsets = pattern.offsets

        def ours(pattern=pattern):
            for _ in range(inner):
                pattern.revert(pattern.apply(codes, pad_ids))

        def floor(offsets=offsets):
            for _ in range(inner):
                slicing_revert(slicing_apply(codes, pad_ids, offsets), offsets)

        value, base, _ = time_pair(ours, floor, repeats)
        results.append(
            entry(
                name,
                value / inner,
                base / inner,
                unit="s per apply+revert",
                baseline_name="per-codebook slicing loop",
                target=target,
                repeats=repeats,
                shape=[b, k, t],
                delays=offsets,
                exact=True,
            )
        )

    pattern = DelayPattern(k)
    lo, hi = cfg["ragged"]
    lengths = torch.randint(lo, hi + 1, (b,), generator=gen).tolist()
    items = [torch.randint(0, 1024, (1, k, n), generator=gen) for n in lengths]
    for item in items:
        _check_exact(pattern, item, pad_ids)

    def ours_ragged():
        for _ in range(inner):
            for item in items:
                pattern.revert(pattern.apply(item, pad_ids))

    def floor_ragged():
        for _ in range(inner):
            for item in items:
                slicing_revert(slicing_apply(item, pad_ids, pattern.offsets), pattern.offsets)

    value, base, _ = time_pair(ours_ragged, floor_ragged, repeats)
    results.append(
        entry(
            "patterns.delay_ragged",
            value / inner,
            base / inner,
            unit="s per batch of apply+revert",
            baseline_name="per-codebook slicing loop",
            target=target,
            repeats=repeats,
            lengths=lengths,
            codebooks=k,
            exact=True,
        )
    )

    # First call for a length this pattern has never seen vs a repeated length. Every round uses
    # fresh lengths (never reused), so a per-length cache would show up as the difference.
    pattern = DelayPattern(k)
    seen = torch.randint(0, 1024, (b, k, t), generator=gen)
    pattern.revert(pattern.apply(seen, pad_ids))
    # t - 1, t + 1, t - 2, t + 2, ...: on average the same work as the repeated length t
    fresh = (t + sign * step for step in range(1, t) for sign in (-1, 1))

    def first():
        for _ in range(inner):
            n = next(fresh)
            pattern.revert(pattern.apply(seen[..., :1].expand(b, k, n).contiguous(), pad_ids))

    def repeated():
        for _ in range(inner):
            pattern.revert(pattern.apply(seen[..., :1].expand(b, k, t).contiguous(), pad_ids))

    value, base, _ = time_pair(first, repeated, repeats)
    results.append(
        entry(
            "patterns.first_call",
            value / inner,
            base / inner,
            unit="s per apply+revert",
            baseline_name="repeated call, same length",
            target=Target("ratio", "<=", 2.0),
            repeats=repeats,
            shape=[b, k, t],
        )
    )
    return results
