"""Codebook patterns: exact round trips, literal MusicGen layouts, masks, logits and bad input."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bagpiper_lib import sequence
from bagpiper_lib.registry import RegistryError
from bagpiper_lib.sequence import CodebookPattern, DelayPattern, FlattenPattern, ParallelPattern

PROPERTY = settings(max_examples=60, deadline=None)
_ = -1  # pad in the literal layouts below


@st.composite
def pattern_specs(draw) -> dict:
    """A registry spec of every registered pattern, incl. delay with random per-codebook delays."""
    name = draw(st.sampled_from(["delay", "delay_random", "parallel", "flatten"]))
    k = draw(st.integers(1, 8))
    if name == "delay_random":
        delays = draw(st.lists(st.integers(0, 6), min_size=k, max_size=k))
        return {"name": "delay", "num_codebooks": k, "delays": delays}
    return {"name": name, "num_codebooks": k}


def distinct_codes(batch: int, k: int, frames: int) -> torch.Tensor:
    """Codes ``[B, K, T]`` that are all different and never equal a pad id (pads are negative)."""
    return torch.arange(batch * k * frames, dtype=torch.long).reshape(batch, k, frames) + 100


def pads(k: int) -> torch.Tensor:
    return -1 - torch.arange(k)


# --------------------------------------------------------------------------- properties
@PROPERTY
@given(spec=pattern_specs(), batch=st.integers(1, 3), frames=st.integers(0, 40))
def test_round_trip_lengths_and_mask(spec, batch, frames):
    pattern = sequence.patterns.build(spec)
    k = spec["num_codebooks"]
    codes = distinct_codes(batch, k, frames)
    pad_ids = pads(k)

    streams = pattern.apply(codes, pad_ids)
    steps = pattern.num_steps(frames)
    assert streams.shape == (batch, k, steps)
    assert streams.dtype == codes.dtype
    assert pattern.num_frames(steps) == frames
    assert torch.equal(pattern.revert(streams), codes)
    assert torch.equal(pattern.revert(streams, num_frames=frames), codes)

    mask = pattern.code_mask(steps, frames)
    assert mask.shape == (k, steps) and mask.dtype == torch.bool
    expanded = mask[None].expand_as(streams)
    # False steps hold exactly that stream's pad, True steps hold a code.
    assert torch.equal(streams[~expanded], pad_ids[None, :, None].expand_as(streams)[~expanded])
    assert (streams[expanded] >= 100).all()
    # Bijection: each stream's True steps hold exactly its codes, in frame order.
    for b in range(batch):
        for kk in range(k):
            assert torch.equal(streams[b, kk][mask[kk]], codes[b, kk])


@PROPERTY
@given(spec=pattern_specs(), frames=st.integers(1, 40))
def test_num_steps_formula(spec, frames):
    pattern = sequence.patterns.build(spec)
    stride = spec["num_codebooks"] if spec["name"] == "flatten" else 1
    assert pattern.num_steps(frames) == (frames - 1) * stride + pattern.max_delay + 1
    assert pattern.num_steps(0) == 0
    # One step short of S(T) holds only T - 1 complete frames.
    assert pattern.num_frames(pattern.num_steps(frames) - 1) == frames - 1
    if spec["name"] == "delay":  # the stable contract: S = T + max_delay
        assert pattern.num_steps(frames) == frames + pattern.max_delay


@PROPERTY
@given(
    delays=st.lists(st.integers(0, 6), min_size=1, max_size=8),
    batch=st.integers(1, 3),
    frames=st.integers(0, 40),
)
def test_delay_matches_slicing_loop(delays, batch, frames):
    k = len(delays)
    codes = torch.randint(0, 1024, (batch, k, frames))
    pattern = DelayPattern(k, delays)
    assert pattern.delays == delays and pattern.max_delay == max(delays)
    assert torch.equal(pattern.apply(codes, pads(k)), _loop_apply(codes, delays, pads(k)))


def _loop_apply(codes: torch.Tensor, delays: list[int], pad_ids: torch.Tensor) -> torch.Tensor:
    """Plain per-codebook slicing reference of the delay interleave."""
    batch, k, frames = codes.shape
    steps = frames + max(delays) if frames else 0
    out = pad_ids[None, :, None].repeat(batch, 1, steps)
    for kk, d in enumerate(delays):
        out[:, kk, d : d + frames] = codes[:, kk]
    return out


def _loop_revert(streams: torch.Tensor, delays: list[int], frames: int) -> torch.Tensor:
    return torch.stack([streams[:, kk, d : d + frames] for kk, d in enumerate(delays)], dim=1)


# --------------------------------------------------------------------------- parity (literal layouts)
def test_delay_literal_layout():
    codes = torch.tensor(
        [
            [
                [10, 11, 12],  # a
                [20, 21, 22],  # b
                [30, 31, 32],  # c
                [40, 41, 42],  # d
            ]
        ]
    )
    expected = torch.tensor(
        [
            [
                # step 0   1   2   3   4   5
                [10, 11, 12, _, _, _],
                [_, 20, 21, 22, _, _],
                [_, _, 30, 31, 32, _],
                [_, _, _, 40, 41, 42],
            ]
        ]
    )
    pattern = sequence.patterns.build({"name": "delay", "num_codebooks": 4})
    assert pattern.max_delay == 3
    assert torch.equal(pattern.apply(codes, _), expected)
    assert torch.equal(pattern.revert(expected), codes)
    expected_mask = torch.tensor(
        [
            [1, 1, 1, 0, 0, 0],
            [0, 1, 1, 1, 0, 0],
            [0, 0, 1, 1, 1, 0],
            [0, 0, 0, 1, 1, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(pattern.code_mask(6, 3), expected_mask)


def test_delay_literal_layout_with_vocabulary_pads():
    vocab = sequence.Vocabulary(text_vocab_size=10, num_codebooks=2, codebook_size=4, num_special=16)
    p0, p1 = vocab.codec_pad_ids().tolist()
    ids = vocab.codes_to_global(torch.tensor([[[0, 3], [1, 2]]]))
    streams = DelayPattern(2).apply(ids, vocab.codec_pad_ids())
    expected = torch.tensor([[[p0 + 1, p0 + 4, p0], [p1, p1 + 2, p1 + 3]]])
    assert torch.equal(streams, expected)
    assert torch.equal(vocab.global_to_codes(streams), torch.tensor([[[0, 3, -1], [-1, 1, 2]]]))


def test_flatten_literal_layout():
    codes = torch.tensor([[[10, 11], [20, 21]]])
    expected = torch.tensor([[[10, _, 11, _], [_, 20, _, 21]]])
    pattern = sequence.patterns.build({"name": "flatten", "num_codebooks": 2})
    assert pattern.num_steps(2) == 4
    assert torch.equal(pattern.apply(codes, _), expected)
    assert torch.equal(pattern.revert(expected), codes)
    assert torch.equal(pattern.code_mask(4, 2), torch.tensor([[1, 0, 1, 0], [0, 1, 0, 1]], dtype=torch.bool))


def test_parallel_is_identity():
    codes = torch.randint(0, 1024, (2, 8, 17))
    pattern = sequence.patterns.build({"name": "parallel", "num_codebooks": 8})
    assert pattern.max_delay == 0 and pattern.num_steps(17) == 17
    assert torch.equal(pattern.apply(codes, pads(8)), codes)
    assert torch.equal(pattern.revert(codes), codes)
    assert pattern.code_mask(17, 17).all()


def test_registry_lists_patterns_and_tiny_presets():
    assert {"delay", "parallel", "flatten"} <= set(sequence.patterns.available())
    assert sequence.DEFAULT_PATTERN == "delay"
    for name, cls in (("delay", DelayPattern), ("parallel", ParallelPattern), ("flatten", FlattenPattern)):
        pattern = sequence.patterns.build({"name": name, "preset": "tiny"})
        assert type(pattern) is cls and pattern.num_codebooks == 4
        assert isinstance(pattern, CodebookPattern)
        assert repr(pattern).startswith(cls.__name__)


# --------------------------------------------------------------------------- logits
def test_revert_logits_gathers_and_marks_missing_frames_nan():
    pattern = DelayPattern(3, [0, 2, 1])
    batch, steps, vocab = 2, 5, 7
    logits = torch.randn(batch, 3, steps, vocab)
    frames = 6  # more than the 3 complete frames in 5 steps: a partial decode
    out = pattern.revert_logits(logits, num_frames=frames)
    assert out.shape == (batch, 3, frames, vocab)
    for k, d in enumerate(pattern.delays):
        for t in range(frames):
            if d + t < steps:
                assert torch.equal(out[:, k, t], logits[:, k, d + t])
            else:
                assert torch.isnan(out[:, k, t]).all()
    # NaN exactly where the step is missing, nowhere else.
    missing = torch.tensor([[d + t >= steps for t in range(frames)] for d in pattern.delays])
    assert torch.equal(torch.isnan(out).all(-1), missing[None].expand(batch, -1, -1))
    assert not torch.isnan(out[~missing[None].expand(batch, -1, -1)]).any()


def test_revert_logits_default_frames_match_revert():
    pattern = FlattenPattern(3)
    logits = torch.randn(1, 3, pattern.num_steps(4) + 2, 5)
    out = pattern.revert_logits(logits)
    assert out.shape == (1, 3, 4, 5) and not torch.isnan(out).any()
    for k in range(3):
        for t in range(4):
            assert torch.equal(out[0, k, t], logits[0, k, 3 * t + k])


def test_revert_logits_with_no_steps_is_all_nan():
    out = DelayPattern(2).revert_logits(torch.zeros(1, 2, 0, 3), num_frames=2)
    assert out.shape == (1, 2, 2, 3) and torch.isnan(out).all()


def test_revert_more_frames_than_exist_raises():
    pattern = DelayPattern(4)
    streams = pattern.apply(distinct_codes(1, 4, 3), 0)
    with pytest.raises(ValueError, match="4 frames need 7 steps, streams have 6"):
        pattern.revert(streams, num_frames=4)
    # Fewer frames than exist is fine: a prefix.
    assert torch.equal(pattern.revert(streams, num_frames=2), distinct_codes(1, 4, 3)[..., :2])


# --------------------------------------------------------------------------- code_mask
@PROPERTY
@given(delays=st.lists(st.integers(0, 6), min_size=1, max_size=8), steps=st.integers(0, 30))
def test_code_mask_while_generating_forces_only_leading_delays(delays, steps):
    mask = DelayPattern(len(delays), delays).code_mask(steps)
    expected = torch.tensor([[s >= d for s in range(steps)] for d in delays], dtype=torch.bool)
    assert torch.equal(mask, expected.reshape(len(delays), steps))


def test_code_mask_while_generating_parallel_and_flatten():
    assert ParallelPattern(3).code_mask(5).all()
    mask = FlattenPattern(2).code_mask(5)
    assert torch.equal(mask, torch.tensor([[1, 0, 1, 0, 1], [0, 1, 0, 1, 0]], dtype=torch.bool))
    # Knowing the frame count also forces the trailing steps.
    trailing = DelayPattern(2).code_mask(5, num_frames=2)
    assert torch.equal(trailing, torch.tensor([[1, 1, 0, 0, 0], [0, 1, 1, 0, 0]], dtype=torch.bool))


# --------------------------------------------------------------------------- vectorised, large
def test_vectorised_large_matches_slicing_loop():
    torch.manual_seed(0)
    batch, k, frames = 16, 8, 1500
    codes = torch.randint(0, 1024, (batch, k, frames))
    pad_ids = 1024 + torch.arange(k)
    for delays in (list(range(k)), [0, 3, 1, 7, 2, 2, 0, 5]):
        pattern = DelayPattern(k, delays)
        streams = pattern.apply(codes, pad_ids)
        assert torch.equal(streams, _loop_apply(codes, delays, pad_ids))
        assert torch.equal(pattern.revert(streams), _loop_revert(streams, delays, frames))
        assert torch.equal(pattern.revert(streams), codes)


# --------------------------------------------------------------------------- bad input
def test_wrong_number_of_codebooks():
    pattern = DelayPattern(4)
    with pytest.raises(ValueError, match=r"codes has 3 codebooks \(dim 1\); this pattern has K=4"):
        pattern.apply(torch.zeros(1, 3, 5, dtype=torch.long), 0)
    with pytest.raises(ValueError, match=r"streams has 5 codebooks .*K=4"):
        pattern.revert(torch.zeros(1, 5, 8, dtype=torch.long))
    with pytest.raises(ValueError, match=r"logits has 2 codebooks .*K=4"):
        pattern.revert_logits(torch.zeros(1, 2, 8, 3))


@pytest.mark.parametrize(
    ("method", "shape", "message"),
    [
        ("apply", (4, 5), r"codes must have shape \[B, K, T\], got \(4, 5\)"),
        ("apply", (1, 4, 5, 2), r"codes must have shape \[B, K, T\], got \(1, 4, 5, 2\)"),
        ("revert", (4, 5), r"streams must have shape \[B, K, T\]"),
        ("revert", (1, 4, 8, 2), r"streams must have shape \[B, K, T\]"),
        ("revert_logits", (1, 4, 8), r"logits must have shape \[B, K, T, V\]"),
        ("revert_logits", (1, 4, 8, 3, 2), r"logits must have shape \[B, K, T, V\]"),
    ],
)
def test_wrong_rank(method, shape, message):
    pattern = DelayPattern(4)
    x = torch.zeros(shape, dtype=torch.float if method == "revert_logits" else torch.long)
    args = (x, 0) if method == "apply" else (x,)
    with pytest.raises(ValueError, match=message):
        getattr(pattern, method)(*args)


def test_not_a_tensor():
    with pytest.raises(ValueError, match=r"codes must have shape \[B, K, T\], got list"):
        DelayPattern(2).apply([[[1, 2]]], 0)


@pytest.mark.parametrize("pad_ids", [torch.zeros(3, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long)])
def test_pad_ids_wrong_shape(pad_ids):
    with pytest.raises(ValueError, match=r"pad_ids must be a scalar or have shape \[K=4\]"):
        DelayPattern(4).apply(torch.zeros(1, 4, 2, dtype=torch.long), pad_ids)


def test_bad_construction():
    with pytest.raises(ValueError, match=r"offsets \(delays\) must be >= 0"):
        DelayPattern(3, [0, -1, 2])
    with pytest.raises(ValueError, match="need one offset per codebook: got 2 for num_codebooks=3"):
        DelayPattern(3, [0, 1])
    for cls in (DelayPattern, ParallelPattern, FlattenPattern):
        with pytest.raises(ValueError, match="num_codebooks must be a positive int, got 0"):
            cls(0)
    with pytest.raises(ValueError, match="num_codebooks must be a positive int"):
        sequence.patterns.build({"name": "delay", "num_codebooks": -2})


def test_unknown_pattern_suggests_close_match():
    with pytest.raises(RegistryError, match="Did you mean 'delay'"):
        sequence.patterns.build("dely")
    with pytest.raises(KeyError, match="unknown pattern 'flaten'.*'flatten'"):
        sequence.patterns.build({"name": "flaten", "num_codebooks": 2})
