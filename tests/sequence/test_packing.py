"""Packing: best-fit-decreasing plans, packed tensors, over-length policies, backbone parity."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bagpiper_lib.sequence.packing import (
    POLICIES,
    PackedBatch,
    collate_packed,
    collate_padded,
    pack,
    plan_rows,
    truncate_sample,
)
from bagpiper_lib.sequence.sample import AudioSpan, Modality, Sample

K = 3
PAD = torch.tensor([0, 1, 2])  # one pad id per stream
VOCAB = 300  # tokens in [3, VOCAB): never equal to a pad id


def make_sample(length: int, index: int, *, with_audio: bool = False) -> Sample:
    """A random sample; with audio, one feature span ``[n, 2]`` whose rows hold (position, index)."""
    g = torch.Generator().manual_seed(index)
    tokens = torch.randint(3, VOCAB, (length, K), generator=g)
    loss_mask = torch.rand(length, K, generator=g) < 0.5
    modality = torch.randint(0, len(Modality), (length,), generator=g)
    spans = []
    if with_audio:
        start, n = length // 3, max(1, length // 2)
        feats = torch.stack([torch.arange(start, start + n), torch.full((n,), index)], dim=-1).float()
        spans.append(AudioSpan(start, n, audio=feats))
        modality[start : start + n] = int(Modality.AUDIO_IN)
    return Sample(tokens, loss_mask, modality, spans, id=f"s{index}")


def make_samples(lengths) -> list[Sample]:
    return [make_sample(n, i, with_audio=i % 2 == 0) for i, n in enumerate(lengths)]


def placement(batch: PackedBatch, index: int) -> tuple[int, int, int] | None:
    """(row, start, count) of sample ``index`` in ``batch``; asserts it is one contiguous run in one row."""
    where = (batch.sample_index == index).nonzero()
    if where.numel() == 0:
        return None
    rows = where[:, 0].unique()
    assert rows.numel() == 1, f"sample {index} is spread over rows {rows.tolist()}"
    cols = where[:, 1]
    start = int(cols[0])
    assert torch.equal(cols, torch.arange(start, start + cols.numel())), f"sample {index} is not contiguous"
    return int(rows[0]), start, cols.numel()


def cu_seqlens_from_positions(position_ids: torch.Tensor) -> list[int]:
    """Segment offsets recomputed from restarts: a segment begins at each row start and each 0 step."""
    rows, length = position_ids.shape
    bounds = []
    for r in range(rows):
        for t in range(length):
            if t == 0 or position_ids[r, t] != position_ids[r, t - 1] + 1:
                bounds.append(r * length + t)
    return bounds + [rows * length]


def check_batch(batch: PackedBatch, samples: list[Sample], budget: int, policy: str) -> None:
    over = {i for i, s in enumerate(samples) if len(s) > budget}
    rows, length, streams = batch.tokens.shape
    assert length == budget and streams == K
    assert all(int(n) <= budget for n in batch.attention_mask.sum(1))
    expected_spans = 0
    for i, sample in enumerate(samples):
        where = placement(batch, i)
        if policy == "reject" and i in over:
            assert where is None
            continue
        r, a, n = where
        assert n == min(len(sample), budget)
        b = a + n
        assert torch.equal(batch.tokens[r, a:b], sample.tokens[:n])
        assert torch.equal(batch.loss_mask[r, a:b], sample.loss_mask[:n])
        assert torch.equal(batch.modality[r, a:b], sample.modality[:n])
        assert torch.equal(batch.position_ids[r, a:b], torch.arange(n))
        assert bool((batch.attention_mask[r, a:b] == 1).all())
        expected_spans += sum(span.start < n for span in sample.audio_in)
    assert batch.num_samples == len(samples) - (len(over) if policy == "reject" else 0)
    # padding: pad ids, no loss, masked out, its own segment restarting at 0
    pad = batch.sample_index == -1
    assert bool((batch.tokens[pad] == PAD).all())
    assert not bool(batch.loss_mask[pad].any())
    assert bool((batch.attention_mask[pad] == 0).all())
    for r in range(rows):
        used = int(batch.attention_mask[r].sum())
        assert bool(pad[r, used:].all()) and not bool(pad[r, :used].any())
        assert torch.equal(batch.position_ids[r, used:], torch.arange(length - used))
    # audio spans point at the same tokens (features hold each position's original index)
    assert len(batch.audio_in) == expected_spans
    for r, span in batch.audio_in:
        i, original = int(span.audio[0, 1]), span.audio[:, 0].long()
        assert span.audio.shape[0] == span.length
        cut = slice(span.start, span.start + span.length)
        assert bool((batch.sample_index[r, cut] == i).all())
        assert torch.equal(batch.position_ids[r, cut], original)
        assert torch.equal(batch.tokens[r, cut], samples[i].tokens[original])
        assert bool((batch.modality[r, cut] == int(Modality.AUDIO_IN)).all())
    # varlen offsets agree with the position_ids restarts
    assert batch.cu_seqlens.dtype == torch.int32
    assert batch.cu_seqlens.tolist() == cu_seqlens_from_positions(batch.position_ids)
    assert batch.max_seqlen == int(batch.cu_seqlens.diff().max())


@settings(max_examples=50, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 80), min_size=1, max_size=25),
    budget=st.integers(1, 64),
    policy=st.sampled_from(POLICIES),
    seed=st.integers(0, 2**16),
)
def test_packing_properties(lengths, budget, policy, seed):
    samples = make_samples(lengths)
    over = [i for i, n in enumerate(lengths) if n > budget]
    if policy == "error" and over:
        with pytest.raises(
            ValueError, match=f"sample {over[0]} has length {lengths[over[0]]} > budget {budget}"
        ):
            pack(samples, budget, PAD, policy=policy, seed=seed)
        return
    plan = plan_rows(lengths, budget, policy=policy, seed=seed)
    assert plan.truncated == (over if policy == "truncate" else [])
    assert plan.rejected == (over if policy == "reject" else [])
    placed = sorted(i for row in plan.rows for i in row)
    assert placed == sorted(set(range(len(lengths))) - set(plan.rejected))
    assert all(sum(min(lengths[i], budget) for i in row) <= budget for row in plan.rows)
    if len(plan.rejected) == len(lengths):
        with pytest.raises(ValueError, match="all .* samples were rejected"):
            pack(samples, budget, PAD, policy=policy, seed=seed)
        return
    batch = pack(samples, budget, PAD, policy=policy, seed=seed)
    check_batch(batch, samples, budget, policy)
    report = batch.report
    assert (report.num_truncated, report.num_rejected) == (len(plan.truncated), len(plan.rejected))
    assert (
        report.real_tokens == int(batch.attention_mask.sum()) and report.slots == batch.tokens[..., 0].numel()
    )


def test_cu_seqlens_match_backbone_varlen_offsets():
    from bagpiper_lib.backbones import packing as backbone_packing

    batch = pack(make_samples([7, 1, 1, 12, 30, 4, 16]), 32, PAD, seed=1)
    varlen = backbone_packing.varlen_kwargs(batch.position_ids)
    assert torch.equal(varlen["cu_seq_lens_q"], batch.cu_seqlens)
    assert varlen["max_length_q"] == batch.max_seqlen


def test_same_seed_same_plan_other_seed_reorders_rows():
    lengths = np.random.default_rng(0).choice(np.arange(1, 1000), size=300, replace=False).tolist()
    a, b = plan_rows(lengths, 1024, seed=0), plan_rows(lengths, 1024, seed=0)
    assert a == b
    c = plan_rows(lengths, 1024, seed=1)
    assert c.rows != a.rows  # unique lengths: no ties, so only the row order differs
    assert sorted(map(tuple, c.rows)) == sorted(map(tuple, a.rows))
    # with ties the seed also picks which equal-length sample goes where; the shape stays the same
    tied = [5, 9, 5, 9, 5, 9, 3, 3] * 10
    profile = [
        sorted(sorted(tied[i] for i in row) for row in plan_rows(tied, 20, seed=s).rows) for s in (0, 1)
    ]
    assert profile[0] == profile[1]


def test_best_fit_decreasing_and_full_rows():
    plan = plan_rows([3, 7, 6, 4], 10, seed=0)
    assert sorted(map(sorted, plan.rows)) == [[0, 1], [2, 3]]  # 7 + 3 and 6 + 4, not 7 + ... first fit
    # a row at 99.5 % is closed: the 5 goes to the open row, not into the 5 left in the full one
    closed = plan_rows([995, 600, 5], 1000, seed=0)
    assert sorted(map(sorted, closed.rows)) == [[0], [1, 2]]
    still_open = plan_rows([995, 600, 5], 1000, seed=0, full_fraction=1.0)
    assert sorted(map(sorted, still_open.rows)) == [[0, 2], [1]]


def test_efficiency_on_uniform_lengths():
    lengths = np.random.default_rng(0).integers(16, 513, size=2000).tolist()
    samples = [
        Sample(torch.full((n, K), 7), torch.ones(n, K, dtype=torch.bool), torch.ones(n, dtype=torch.long))
        for n in lengths
    ]
    packed = pack(samples, 2048, PAD, seed=0)
    padded = collate_padded(samples, PAD)
    assert packed.report.efficiency >= 0.99
    assert packed.report.real_tokens == padded.report.real_tokens == sum(lengths)
    assert packed.num_rows * 5 < padded.num_rows == 2000
    assert padded.report.efficiency < 0.6


def test_planning_100k_samples_is_fast():
    lengths = np.random.default_rng(1).integers(16, 2049, size=100_000).tolist()
    start = time.perf_counter()
    plan = plan_rows(lengths, 2048)
    assert time.perf_counter() - start < 15.0  # about 0.5 s; generous for shared CI machines
    assert plan.report().efficiency >= 0.99
    assert sum(map(len, plan.rows)) == len(lengths)


def test_policy_truncate_cuts_and_counts():
    samples = make_samples([10, 40, 5])
    batch = pack(samples, 16, PAD, policy="truncate")
    assert batch.report.num_truncated == 1 and batch.report.num_rejected == 0
    r, a, n = placement(batch, 1)
    assert n == 16 and torch.equal(batch.tokens[r, a : a + n], samples[1].tokens[:16])
    check_batch(batch, samples, 16, "truncate")


def test_policy_reject_skips_and_counts():
    samples = make_samples([10, 40, 5])
    batch = pack(samples, 16, PAD, policy="reject")
    assert batch.report.num_rejected == 1 and batch.report.num_samples == 3 and batch.num_samples == 2
    assert placement(batch, 1) is None
    check_batch(batch, samples, 16, "reject")


def test_policy_error_names_index_length_budget():
    with pytest.raises(ValueError, match=r"sample 1 has length 40 > budget 16"):
        pack(make_samples([10, 40, 5]), 16, PAD, policy="error")
    assert pack(make_samples([10, 16, 5]), 16, PAD, policy="error").num_samples == 3


def test_truncate_sample_cuts_spans_and_their_audio():
    spans = [
        AudioSpan(0, 2, audio=torch.randn(2, 4)),  # before the cut: kept
        AudioSpan(4, 4, audio=torch.randn(4, 4)),  # crosses the cut at 6: 2 positions, 2 feature rows
        AudioSpan(6, 1, audio=torch.randn(1, 4)),  # at the cut: dropped
        AudioSpan(5, 4, audio=torch.randn(160), sample_rate=16000),  # waveform: half its samples
    ]
    sample = Sample(
        torch.ones(10, K, dtype=torch.long), torch.ones(10, K, dtype=torch.bool), torch.zeros(10), spans
    )
    cut = truncate_sample(sample, 6)
    assert len(cut) == 6 and cut.modality.shape == (6,) and cut.loss_mask.shape == (6, K)
    assert [(s.start, s.length) for s in cut.audio_in] == [(0, 2), (4, 2), (5, 1)]
    assert cut.audio_in[0].audio is spans[0].audio
    assert torch.equal(cut.audio_in[1].audio, spans[1].audio[:2])
    assert torch.equal(cut.audio_in[2].audio, spans[3].audio[:40]) and cut.audio_in[2].sample_rate == 16000
    assert truncate_sample(sample, 10) is sample
    with pytest.raises(ValueError):
        truncate_sample(sample, 0)


def test_bad_inputs():
    samples = make_samples([4, 6])
    for budget in (0, -3):
        with pytest.raises(ValueError, match="budget"):
            pack(samples, budget, PAD)
    with pytest.raises(ValueError, match="empty"):
        pack([], 16, PAD)
    with pytest.raises(ValueError, match="empty"):
        plan_rows([], 16)
    with pytest.raises(ValueError, match=r"pad_ids must be \[K\] = \[3\]"):
        pack(samples, 16, torch.tensor([0, 1]))
    odd = Sample(torch.ones(5, 2, dtype=torch.long), torch.ones(5, 2, dtype=torch.bool), torch.zeros(5))
    with pytest.raises(ValueError, match="sample 2 has 2 streams"):
        pack([*samples, odd], 16, PAD)
    with pytest.raises(ValueError, match="unknown over-length policy"):
        plan_rows([4], 16, policy="drop")
    with pytest.raises(ValueError, match="sample 1 has length 0"):
        plan_rows([4, 0], 16)
    with pytest.raises(ValueError, match="other samples"):
        collate_packed(samples, plan_rows([4, 7], 16), PAD)
    with pytest.raises(ValueError, match="budget 16, not 32"):
        pack(samples, 32, PAD, plan=plan_rows([4, 6], 16))


def test_pad_to_longest_and_to_device():
    samples = make_samples([5, 9, 3, 2])
    batch = pack(samples, 64, PAD, pad_to_longest=True)
    assert batch.row_length == 19 and batch.num_rows == 1
    assert batch.cu_seqlens.tolist() == cu_seqlens_from_positions(batch.position_ids)
    assert batch.report.slots == 19
    moved = batch.to("meta")
    tensors = [moved.tokens, moved.loss_mask, moved.position_ids, moved.cu_seqlens, moved.sample_index]
    assert all(t.device.type == "meta" for t in tensors)
    assert all(span.audio.device.type == "meta" for _, span in moved.audio_in)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_batch_matches_samples_run_alone(attn):
    """A packed batch through a tiny backbone gives each sample the hidden states it gets alone."""
    from bagpiper_lib import backbones

    backbone = backbones.build({"name": "qwen3", "preset": "tiny", "attn_implementation": attn}).eval()
    embed = torch.nn.Embedding(VOCAB, backbone.hidden_size)
    torch.nn.init.normal_(embed.weight, generator=torch.Generator().manual_seed(0))
    samples = make_samples([17, 5, 30, 9, 1, 24, 12, 3, 40])
    batch = pack(samples, 48, PAD, seed=3)
    assert batch.num_rows > 1 and (batch.attention_mask == 0).any()  # several rows, some padding
    padded = collate_padded(samples, PAD)
    with torch.no_grad():
        hidden = backbone(embed(batch.tokens).sum(2), batch.position_ids)  # [R, L, H]
        hidden_padded = backbone(embed(padded.tokens).sum(2), padded.position_ids)
        for i, sample in enumerate(samples):
            alone = backbone(embed(sample.tokens).sum(1)[None], torch.arange(len(sample))[None])[0]
            r, a, n = placement(batch, i)
            torch.testing.assert_close(hidden[r, a : a + n], alone, atol=1e-5, rtol=0)
            torch.testing.assert_close(hidden_padded[i, :n], alone, atol=1e-5, rtol=0)


def test_fsdp_mixed_precision_input_cast_rebuilds_a_packed_batch():
    """FSDP's root forward casts floating inputs to the compute dtype by rebuilding dataclasses
    (``torch.distributed.utils._cast_forward_inputs``): a packed batch with audio survives it, its ids
    untouched and its report intact."""
    cast = pytest.importorskip("torch.distributed.utils")._cast_forward_inputs
    audio = torch.randn(160)
    sample = Sample(
        torch.full((6, K), 7),
        torch.ones(6, K, dtype=torch.bool),
        torch.ones(6, dtype=torch.long),
        [AudioSpan(1, 3, audio=audio, sample_rate=16000)],
    )
    batch = pack([sample, sample], 16, PAD, seed=0)
    (out,), _ = cast(torch.bfloat16, batch)
    assert isinstance(out, type(batch)) and torch.equal(out.tokens, batch.tokens)
    assert out.tokens.dtype == torch.long and out.cu_seqlens.dtype == torch.int32
    assert out.audio_in[0][1].audio.dtype == torch.bfloat16
    assert out.report == batch.report and out.report.efficiency == batch.report.efficiency == 12 / 16
