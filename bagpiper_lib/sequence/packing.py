"""Sequence packing: many samples per row of a token budget, kept apart by restarting positions.

Plan, then collate:

* :func:`plan_rows` decides which samples share a row from their lengths alone (best-fit-decreasing);
* :func:`collate_packed` builds the tensors of a :class:`PackedBatch` from a :class:`PackingPlan`;
* :func:`pack` does both; :func:`collate_padded` is the one-sample-per-row baseline.

One packed row (budget ``L = 16``; samples 7, 2 and 9 of lengths 5, 3 and 6, then 2 padding slots)::

    tokens          a0 a1 a2 a3 a4 b0 b1 b2 c0 c1 c2 c3 c4 c5 pd pd
    position_ids     0  1  2  3  4  0  1  2  0  1  2  3  4  5  0  1
    sample_index     7  7  7  7  7  2  2  2  9  9  9  9  9  9 -1 -1
    attention_mask   1  1  1  1  1  1  1  1  1  1  1  1  1  1  0  0
    cu_seqlens      [0,             5,       8,                14,   16]    (+ r * L in row r)

Decisions:

* ``position_ids`` restart at 0 for every sample *and* for the padding tail, so padding is a segment of
  its own. The backbone reads segment boundaries from ``position_ids`` alone (block-diagonal masks,
  or varlen offsets on flash-attention), so no sample attends another sample or the padding, and no
  ``attention_mask`` needs to be passed. ``cu_seqlens`` lists exactly those segments over the
  flattened ``R * L`` positions (the padding tail counted as one), the form flash-attn varlen takes.
* ``L`` is the budget by default: fixed shapes mean no recompilation and predictable memory.
  ``pad_to_longest=True`` cuts ``L`` to the longest row of the batch instead.
* Nothing is dropped silently: over-long samples (length > budget) follow ``policy`` (``"truncate"``,
  ``"reject"`` or ``"error"``) and each one is listed in the plan and counted in its report.
* Padding positions hold ``pad_ids``, ``loss_mask`` False, modality ``SPECIAL``, ``sample_index`` -1.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from bagpiper_lib.sequence.sample import AudioSpan, Modality, Sample

__all__ = [
    "POLICIES",
    "PackingReport",
    "PackingPlan",
    "PackedBatch",
    "plan_rows",
    "pack",
    "collate_packed",
    "collate_padded",
    "truncate_sample",
]

POLICIES = ("truncate", "reject", "error")


@dataclass
class PackingReport:
    """How well a batch filled its rows. ``efficiency = real_tokens / slots``."""

    num_samples: int  # samples handed to the packer (rejected ones included)
    num_rows: int
    real_tokens: int  # sample positions placed in rows (after truncation)
    slots: int  # num_rows * row length
    num_truncated: int = 0
    num_rejected: int = 0

    # A property, not an init=False field: FSDP's mixed-precision input cast rebuilds dataclasses with
    # dataclasses.replace, which refuses init=False fields.
    @property
    def efficiency(self) -> float:
        return self.real_tokens / self.slots if self.slots else 0.0


@dataclass
class PackingPlan:
    """Which samples share a row (indices into the input, in row order), from :func:`plan_rows`.

    ``lengths`` are the input lengths the plan was made for; ``truncated`` / ``rejected`` list the
    over-long samples that were cut to ``budget`` / left out.
    """

    rows: list[list[int]]
    truncated: list[int]
    rejected: list[int]
    budget: int
    lengths: list[int]

    def report(self) -> PackingReport:
        real = sum(min(self.lengths[i], self.budget) for row in self.rows for i in row)
        return PackingReport(
            num_samples=len(self.lengths),
            num_rows=len(self.rows),
            real_tokens=real,
            slots=len(self.rows) * self.budget,
            num_truncated=len(self.truncated),
            num_rejected=len(self.rejected),
        )


@dataclass
class PackedBatch:
    """Rows of packed samples (``R`` rows of ``L`` positions, ``K`` streams). See the module sketch.

    tokens          LongTensor [R, L, K]  padding = ``pad_ids``
    loss_mask       BoolTensor [R, L, K]  False on padding
    modality        LongTensor [R, L]     :class:`Modality`; ``SPECIAL`` on padding
    position_ids    LongTensor [R, L]     0.. per sample, and 0.. again over the padding tail
    attention_mask  LongTensor [R, L]     1 real token, 0 padding (for statistics; the backbone
                                          needs only ``position_ids``)
    cu_seqlens      IntTensor  [S + 1]    int32 segment offsets over the flattened ``R * L`` positions
    max_seqlen      int                   longest segment (padding segments included)
    sample_index    LongTensor [R, L]     index of the input sample at each position, -1 padding
    audio_in        list[(row, AudioSpan)] spans with ``start`` shifted into their row
    """

    tokens: torch.Tensor
    loss_mask: torch.Tensor
    modality: torch.Tensor
    position_ids: torch.Tensor
    attention_mask: torch.Tensor
    cu_seqlens: torch.Tensor
    max_seqlen: int
    sample_index: torch.Tensor
    audio_in: list[tuple[int, AudioSpan]]
    num_samples: int
    report: PackingReport

    @property
    def num_rows(self) -> int:
        return self.tokens.shape[0]

    @property
    def row_length(self) -> int:
        return self.tokens.shape[1]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> PackedBatch:
        """A copy on ``device`` (tensor audio payloads of ``audio_in`` move too)."""

        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device, non_blocking=non_blocking)

        spans = [
            (row, replace(span, audio=move(span.audio)) if isinstance(span.audio, torch.Tensor) else span)
            for row, span in self.audio_in
        ]
        return replace(
            self,
            tokens=move(self.tokens),
            loss_mask=move(self.loss_mask),
            modality=move(self.modality),
            position_ids=move(self.position_ids),
            attention_mask=move(self.attention_mask),
            cu_seqlens=move(self.cu_seqlens),
            sample_index=move(self.sample_index),
            audio_in=spans,
        )


def plan_rows(
    lengths: Sequence[int],
    budget: int,
    *,
    policy: str = "truncate",
    seed: int = 0,
    full_fraction: float = 0.995,
) -> PackingPlan:
    """Best-fit-decreasing assignment of samples to rows of ``budget`` positions.

    Samples are taken longest first (equal lengths in a seeded random order); each goes into the open
    row with the least remaining space that still fits it, else opens a new row. A row closes once it
    holds ``full_fraction * budget`` positions. Open rows are kept as a sorted list of remaining
    capacities searched with ``bisect``, so planning is ``O(N log N)`` (100k samples in well under a
    second). Rows come out in a seeded random order so that consecutive rows mix long and short samples.

    Args:
        lengths: ``[N]`` sample lengths (positions), each >= 1.
        budget: positions per row.
        policy: what happens to a sample longer than ``budget``: ``"truncate"`` keeps its first
            ``budget`` positions (alone in its row), ``"reject"`` leaves it out, ``"error"`` raises.
        seed: seeds the tie-break among equal lengths and the row order; same seed, same plan.
        full_fraction: fill level at which a row counts as full, in ``(0, 1]``.
    """
    budget = _check_budget(budget)
    if policy not in POLICIES:
        raise ValueError(f"unknown over-length policy {policy!r}; expected one of {list(POLICIES)}")
    if not 0.0 < full_fraction <= 1.0:
        raise ValueError(f"full_fraction must be in (0, 1], got {full_fraction}")
    lengths = [int(n) for n in lengths]
    if not lengths:
        raise ValueError("nothing to pack: the list of samples is empty")
    short = next((i for i, n in enumerate(lengths) if n < 1), None)
    if short is not None:
        raise ValueError(
            f"sample {short} has length {lengths[short]}; every sample needs at least one position"
        )
    over = [i for i, n in enumerate(lengths) if n > budget]
    if over and policy == "error":
        raise ValueError(
            f"sample {over[0]} has length {lengths[over[0]]} > budget {budget} (policy='error'; "
            f"{len(over)} over-long sample(s) in all; use policy='truncate' or 'reject' to pack them)"
        )
    rejected = over if policy == "reject" else []

    rng = np.random.default_rng(seed)
    sizes = np.minimum(np.asarray(lengths, dtype=np.int64), budget)
    order = rng.permutation(len(lengths))
    order = order[np.argsort(-sizes[order], kind="stable")]
    if rejected:
        order = order[~np.isin(order, rejected)]
    sizes_list = sizes.tolist()
    stride = len(lengths) + 1  # open-row key = remaining * stride + row: one sorted list of ints
    open_keys: list[int] = []
    rows: list[list[int]] = []
    full = full_fraction * budget
    for i in order.tolist():
        size = sizes_list[i]
        at = bisect.bisect_left(open_keys, size * stride)  # first row with remaining >= size
        if at < len(open_keys):
            remaining, row = divmod(open_keys.pop(at), stride)
            rows[row].append(i)
        else:
            remaining, row = budget, len(rows)
            rows.append([i])
        remaining -= size
        if remaining > 0 and budget - remaining < full:
            bisect.insort(open_keys, remaining * stride + row)
    rows = [rows[r] for r in rng.permutation(len(rows)).tolist()]
    return PackingPlan(
        rows=rows,
        truncated=over if policy == "truncate" else [],
        rejected=rejected,
        budget=budget,
        lengths=lengths,
    )


def pack(
    samples: Sequence[Sample],
    budget: int,
    pad_ids: torch.Tensor,
    *,
    policy: str = "truncate",
    seed: int = 0,
    plan: PackingPlan | None = None,
    pad_to_longest: bool = False,
    full_fraction: float = 0.995,
) -> PackedBatch:
    """Pack ``samples`` into rows of ``budget`` positions: :func:`plan_rows` then :func:`collate_packed`.

    Args:
        samples: built samples, all with the same number of streams ``K``.
        budget: positions per row (``L`` of the batch unless ``pad_to_longest``).
        pad_ids: LongTensor ``[K]``, the padding id of each stream.
        policy, seed, full_fraction: see :func:`plan_rows`.
        plan: a precomputed plan for exactly these samples (e.g. from a sampler); overrides the
            planning arguments.
        pad_to_longest: make ``L`` the longest row instead of ``budget``.
    """
    _check_inputs(samples, pad_ids)
    if plan is None:
        lengths = [len(s) for s in samples]
        plan = plan_rows(lengths, budget, policy=policy, seed=seed, full_fraction=full_fraction)
    elif plan.budget != budget:
        raise ValueError(f"plan was made for budget {plan.budget}, not {budget}")
    return collate_packed(samples, plan, pad_ids, pad_to_longest=pad_to_longest)


def collate_packed(
    samples: Sequence[Sample],
    plan: PackingPlan,
    pad_ids: torch.Tensor,
    *,
    pad_to_longest: bool = False,
) -> PackedBatch:
    """Build the :class:`PackedBatch` of ``plan`` (samples longer than ``plan.budget`` are truncated)."""
    pad = _check_inputs(samples, pad_ids)
    if [len(s) for s in samples] != plan.lengths:
        raise ValueError("the plan was made for other samples: its lengths differ from the samples' lengths")
    if not plan.rows:
        raise ValueError(
            f"the plan has no rows: all {len(samples)} samples were rejected as longer than budget "
            f"{plan.budget} (see plan.rejected)"
        )
    seen: set[int] = set()
    truncated = set(plan.truncated)
    rows: list[list[tuple[int, Sample]]] = []
    for r, row in enumerate(plan.rows):
        if any(not 0 <= i < len(samples) for i in row):
            raise ValueError(f"plan row {r} names samples outside 0..{len(samples) - 1}: {row}")
        if seen.intersection(row) or len(set(row)) != len(row):
            raise ValueError(f"plan row {r} repeats a sample that is already placed: {row}")
        seen.update(row)
        unlisted = [i for i in row if plan.lengths[i] > plan.budget and i not in truncated]
        if unlisted:
            raise ValueError(f"plan row {r} holds over-long samples {unlisted} not listed in plan.truncated")
        fitted = [(i, truncate_sample(samples[i], plan.budget)) for i in row]
        used = sum(len(s) for _, s in fitted)
        if used > plan.budget:
            raise ValueError(f"plan row {r} holds {used} positions > budget {plan.budget}")
        rows.append(fitted)
    used = max(sum(len(s) for _, s in row) for row in rows)
    length = used if pad_to_longest else plan.budget
    report = plan.report()
    report = replace(report, slots=report.num_rows * length)
    return _assemble(rows, pad, length, report)


def collate_padded(samples: Sequence[Sample], pad_ids: torch.Tensor) -> PackedBatch:
    """One sample per row, right-padded to the longest (the unpacked baseline), same layout as packing."""
    pad = _check_inputs(samples, pad_ids)
    length = max(len(s) for s in samples)
    real = sum(len(s) for s in samples)
    report = PackingReport(
        num_samples=len(samples), num_rows=len(samples), real_tokens=real, slots=len(samples) * length
    )
    return _assemble([[(i, s)] for i, s in enumerate(samples)], pad, length, report)


def truncate_sample(sample: Sample, length: int) -> Sample:
    """The first ``length`` positions of ``sample`` (the sample itself when it is not longer).

    ``tokens`` / ``loss_mask`` / ``modality`` are cut to ``[length, ...]``. Audio-in spans that start at
    or after the cut are dropped; a span crossing the cut is shortened to end at it and its payload
    follows: precomputed features ``[span.length, D]`` keep their first rows (one per kept position); a
    waveform ``[N]`` keeps the same leading fraction of its samples (``ceil(N * kept / span.length)``),
    so the encoder sees about the kept frames; any other payload (e.g. ``None``) is kept as it is.
    """
    if length < 1:
        raise ValueError(f"cannot truncate a sample to {length} positions (need >= 1)")
    if len(sample) <= length:
        return sample
    spans = []
    for span in sample.audio_in:
        if span.start >= length:
            continue
        kept = min(span.length, length - span.start)
        if kept < span.length:
            span = replace(span, length=kept, audio=_cut_audio(span.audio, kept, span.length))
        spans.append(span)
    return replace(
        sample,
        tokens=sample.tokens[:length],
        loss_mask=sample.loss_mask[:length],
        modality=sample.modality[:length],
        audio_in=spans,
    )


def _cut_audio(audio, kept: int, total: int):
    if not isinstance(audio, torch.Tensor | np.ndarray):
        return audio
    if audio.ndim == 2 and audio.shape[0] == total:  # features [length, D]
        return audio[:kept]
    if audio.ndim == 1:  # waveform [N]
        return audio[: math.ceil(audio.shape[0] * kept / total)]
    return audio


def _check_budget(budget: int) -> int:
    if isinstance(budget, bool) or int(budget) != budget or budget < 1:
        raise ValueError(f"budget must be a positive integer number of positions, got {budget!r}")
    return int(budget)


def _check_inputs(samples: Sequence[Sample], pad_ids: torch.Tensor) -> torch.Tensor:
    """Validate samples and pad ids; returns ``pad_ids`` as LongTensor ``[K]`` on the samples' device."""
    if len(samples) == 0:
        raise ValueError("nothing to pack: the list of samples is empty")
    streams = samples[0].num_streams
    odd = next((i for i, s in enumerate(samples) if s.num_streams != streams), None)
    if odd is not None:
        raise ValueError(
            f"sample {odd} has {samples[odd].num_streams} streams but sample 0 has {streams}; "
            "all samples of a batch need the same K"
        )
    pad = torch.as_tensor(pad_ids, dtype=torch.long, device=samples[0].tokens.device)
    if pad.shape != (streams,):
        raise ValueError(
            f"pad_ids must be [K] = [{streams}] (one id per stream), got shape {tuple(pad.shape)}"
        )
    return pad


def _assemble(rows: list[list[tuple[int, Sample]]], pad: torch.Tensor, length: int, report) -> PackedBatch:
    """Write ``rows`` of ``(input index, sample)`` into ``[R, length, ...]`` tensors (see the module sketch)."""
    num_rows, streams, device = len(rows), pad.numel(), pad.device
    tokens = pad.expand(num_rows, length, streams).clone()
    loss_mask = torch.zeros(num_rows, length, streams, dtype=torch.bool, device=device)
    modality = torch.full((num_rows, length), int(Modality.SPECIAL), dtype=torch.long, device=device)
    position_ids = torch.zeros(num_rows, length, dtype=torch.long, device=device)
    attention_mask = torch.zeros(num_rows, length, dtype=torch.long, device=device)
    sample_index = torch.full((num_rows, length), -1, dtype=torch.long, device=device)
    ramp = torch.arange(length, device=device)
    bounds, audio_in = [0], []
    for r, row in enumerate(rows):
        offset = 0
        for index, sample in row:
            end = offset + len(sample)
            tokens[r, offset:end] = sample.tokens
            loss_mask[r, offset:end] = sample.loss_mask
            modality[r, offset:end] = sample.modality
            position_ids[r, offset:end] = ramp[: end - offset]
            sample_index[r, offset:end] = index
            audio_in.extend((r, span.shifted(offset)) for span in sample.audio_in)
            bounds.append(r * length + end)
            offset = end
        attention_mask[r, :offset] = 1
        if offset < length:  # the padding tail: a segment of its own, positions from 0 again
            position_ids[r, offset:] = ramp[: length - offset]
            bounds.append((r + 1) * length)
    cu_seqlens = torch.tensor(bounds, dtype=torch.int32, device=device)
    return PackedBatch(
        tokens=tokens,
        loss_mask=loss_mask,
        modality=modality,
        position_ids=position_ids,
        attention_mask=attention_mask,
        cu_seqlens=cu_seqlens,
        max_seqlen=int(cu_seqlens.diff().max()),
        sample_index=sample_index,
        audio_in=audio_in,
        num_samples=sum(len(row) for row in rows),
        report=report,
    )
