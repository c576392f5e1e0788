"""Tests of ``bagpiper_lib.audio``: scipy parity of the resampler, input validation, WAV IO."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.signal
import soundfile as sf
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bagpiper_lib.audio import load_audio, prepare_audio, resample, save_audio

RATE_PAIRS = [(44100, 16000), (48000, 16000), (16000, 24000), (22050, 16000), (24000, 16000), (8000, 16000)]
PCM16_STEP = 1.0 / 32768


def _reference(x: np.ndarray, orig_sr: int, new_sr: int) -> np.ndarray:
    g = math.gcd(orig_sr, new_sr)
    return scipy.signal.resample_poly(x, new_sr // g, orig_sr // g, axis=-1)


def _signal(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1.0, 1.0, size=shape)


# ---------------------------------------------------------------------------- resample


@pytest.mark.parametrize(("orig_sr", "new_sr"), RATE_PAIRS)
def test_resample_matches_scipy_float32(orig_sr, new_sr):
    x = _signal(3001)
    out = resample(torch.from_numpy(x).float(), orig_sr, new_sr)
    ref = _reference(x, orig_sr, new_sr)
    assert out.dtype == torch.float32
    assert out.shape == ref.shape == (math.ceil(3001 * new_sr / orig_sr),)
    assert np.abs(out.numpy() - ref).max() < 1e-5


@pytest.mark.parametrize(("orig_sr", "new_sr"), RATE_PAIRS)
def test_resample_matches_scipy_float64(orig_sr, new_sr):
    x = _signal(2000, seed=1)
    out = resample(torch.from_numpy(x), orig_sr, new_sr)
    ref = _reference(x, orig_sr, new_sr)
    assert out.dtype == torch.float64
    assert out.shape == ref.shape
    assert np.abs(out.numpy() - ref).max() < 1e-10


@pytest.mark.parametrize("shape", [(3, 1500), (2, 3, 1500)])
@pytest.mark.parametrize(("orig_sr", "new_sr"), [(44100, 16000), (16000, 24000)])
def test_resample_batched_shapes_match_scipy_per_row(shape, orig_sr, new_sr):
    x = _signal(*shape, seed=2)
    out = resample(torch.from_numpy(x).float(), orig_sr, new_sr)
    ref = _reference(x, orig_sr, new_sr)
    assert out.shape == (*shape[:-1], math.ceil(shape[-1] * new_sr / orig_sr)) == ref.shape
    assert np.abs(out.numpy() - ref).max() < 1e-5
    # each row is resampled independently: same as resampling it alone
    row = resample(torch.from_numpy(x[(0,) * (len(shape) - 1)]).float(), orig_sr, new_sr)
    assert torch.allclose(out[(0,) * (len(shape) - 1)], row, atol=1e-6)


@pytest.mark.parametrize(
    ("orig_sr", "new_sr", "n", "expected"),
    [
        (44100, 16000, 1000, 363),  # 362.81 -> 363
        (48000, 16000, 4, 2),  # 1.33 -> 2
        (48000, 16000, 3, 1),
        (16000, 24000, 7, 11),  # 10.5 -> 11
        (8000, 16000, 5, 10),
        (22050, 16000, 1, 1),
        (24000, 16000, 16000, 10667),
    ],
)
def test_resample_output_length_is_ceil(orig_sr, new_sr, n, expected):
    out = resample(torch.ones(2, n), orig_sr, new_sr)
    assert out.shape == (2, expected)


def test_resample_equal_rates_returns_the_input():
    x = torch.randn(2, 100)
    assert resample(x, 16000, 16000) is x
    assert resample(x, 16000, 16000.0) is x


def test_resample_keeps_low_precision_dtype():
    x = _signal(800, seed=3)
    out = resample(torch.from_numpy(x).to(torch.bfloat16), 24000, 16000)
    assert out.dtype == torch.bfloat16
    ref = _reference(torch.from_numpy(x).to(torch.bfloat16).double().numpy(), 24000, 16000)
    assert np.abs(out.double().numpy() - ref).max() < 2e-2


def test_resample_low_tone_is_preserved():
    # a 440 Hz tone resampled 44.1k -> 16k is the same tone at the new rate (away from the edges)
    t_in = np.arange(4410) / 44100
    out = resample(torch.from_numpy(np.sin(2 * np.pi * 440 * t_in)), 44100, 16000).numpy()
    t_out = np.arange(out.shape[0]) / 16000
    middle = slice(200, -200)
    assert np.abs(out[middle] - np.sin(2 * np.pi * 440 * t_out)[middle]).max() < 1e-2


@pytest.mark.parametrize("shape", [(0,), (0, 5), (2, 0)])
def test_resample_empty_input_matches_scipy_shape(shape):
    out = resample(torch.zeros(shape), 8000, 16000)
    assert out.shape == _reference(np.zeros(shape), 8000, 16000).shape


@settings(max_examples=25, deadline=None, database=None)
@given(n=st.integers(min_value=1, max_value=2500), seed=st.integers(0, 2**16))
def test_resample_property_random_lengths(n, seed):
    x = _signal(n, seed=seed)
    out = resample(torch.from_numpy(x).float(), 22050, 16000)
    ref = _reference(x, 22050, 16000)
    assert out.shape == ref.shape == (math.ceil(n * 16000 / 22050),)
    assert np.abs(out.numpy() - ref).max() < 1e-5


@pytest.mark.parametrize("bad", [0, -16000, 16000.5, float("inf"), float("nan"), None, "16000"])
def test_resample_rejects_bad_rates(bad):
    x = torch.zeros(10)
    with pytest.raises(ValueError, match=r"orig_sr must be a positive integer sample rate in Hz"):
        resample(x, bad, 16000)
    with pytest.raises(ValueError, match=r"new_sr must be a positive integer sample rate in Hz"):
        resample(x, 16000, bad)


@pytest.mark.parametrize("dtype", [torch.int16, torch.int32, torch.long])
def test_resample_rejects_integer_dtype(dtype):
    with pytest.raises(ValueError, match=r"wav must be a floating-point tensor, got dtype torch\.int"):
        resample(torch.zeros(10, dtype=dtype), 8000, 16000)


# ---------------------------------------------------------------------------- prepare_audio


def test_prepare_audio_1d_becomes_a_batch_of_one():
    x = torch.randn(50)
    wav, lengths = prepare_audio(x)
    assert wav.shape == (1, 50)
    assert torch.equal(wav[0], x)
    assert lengths.dtype == torch.long and lengths.tolist() == [50]


def test_prepare_audio_2d_without_lengths_is_unchanged():
    x = torch.randn(3, 40)
    wav, lengths = prepare_audio(x, sample_rate=16000, target_sample_rate=16000)
    assert torch.equal(wav, x)
    assert lengths.tolist() == [40, 40, 40]


def test_prepare_audio_averages_channels():
    x = torch.tensor([[[1.0, 2.0, 3.0], [3.0, 0.0, -3.0]], [[0.5, 0.5, 0.5], [-0.5, 0.5, 1.5]]])
    wav, lengths = prepare_audio(x)
    assert torch.equal(wav, torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.5, 1.0]]))
    assert lengths.tolist() == [3, 3]


@pytest.mark.parametrize("as_list", [False, True])
def test_prepare_audio_zeroes_padding(as_list):
    x = torch.randn(2, 8) + 5.0  # no zero samples in the valid region
    lengths = [8, 3] if as_list else torch.tensor([8, 3], dtype=torch.int32)
    wav, out_lengths = prepare_audio(x, lengths)
    assert out_lengths.dtype == torch.long and out_lengths.tolist() == [8, 3]
    assert torch.equal(wav[0], x[0])
    assert torch.equal(wav[1, :3], x[1, :3])
    assert torch.equal(wav[1, 3:], torch.zeros(5))


def test_prepare_audio_resampling_rescales_lengths_with_ceil():
    x = torch.from_numpy(_signal(2, 300, seed=4)).float()
    wav, lengths = prepare_audio(x, torch.tensor([300, 151]), sample_rate=24000, target_sample_rate=16000)
    assert wav.shape == (2, 200)
    assert lengths.tolist() == [200, 101]  # ceil(151 * 2 / 3) = ceil(100.67)
    ref0 = _reference(x[0].double().numpy(), 24000, 16000)
    assert np.abs(wav[0].numpy() - ref0).max() < 1e-5
    ref1 = _reference(x[1, :151].double().numpy(), 24000, 16000)  # the valid part alone
    assert np.abs(wav[1, :101].numpy() - ref1).max() < 1e-5
    assert torch.equal(wav[1, 101:], torch.zeros(99))

    up, up_lengths = prepare_audio(x, torch.tensor([7, 300]), sample_rate=16000, target_sample_rate=24000)
    assert up.shape == (2, 450) and up_lengths.tolist() == [11, 450]


def test_prepare_audio_padding_content_does_not_leak_through_resampling():
    item = torch.from_numpy(_signal(600, seed=5)).float()
    batch = torch.stack([torch.cat([item, torch.zeros(400)]), torch.cat([item, torch.ones(400)])])
    wav, lengths = prepare_audio(batch, torch.tensor([600, 600]), sample_rate=24000, target_sample_rate=16000)
    alone, alone_lengths = prepare_audio(item, sample_rate=24000, target_sample_rate=16000)
    assert lengths.tolist() == [400, 400] and alone_lengths.tolist() == [400]
    assert torch.allclose(wav[0, :400], alone[0], atol=1e-6)
    assert torch.allclose(wav[1, :400], alone[0], atol=1e-6)
    assert torch.equal(wav[:, 400:], torch.zeros(2, 267))


def test_prepare_audio_min_samples_is_checked_after_resampling():
    x = torch.randn(1, 7)
    wav, lengths = prepare_audio(x, sample_rate=24000, target_sample_rate=16000, min_samples=5)
    assert lengths.tolist() == [5] and wav.shape == (1, 5)
    with pytest.raises(
        ValueError, match=r"audio too short: lengths \[5\] samples at 16000 Hz, need at least min_samples=6"
    ):
        prepare_audio(x, sample_rate=24000, target_sample_rate=16000, min_samples=6)
    with pytest.raises(
        ValueError, match=r"audio too short: lengths \[7, 2\] samples, need at least min_samples=3"
    ):
        prepare_audio(torch.randn(2, 7), torch.tensor([7, 2]), min_samples=3)


@pytest.mark.parametrize(
    ("wav", "error", "pattern"),
    [
        ([0.0, 1.0], TypeError, r"wav must be a torch\.Tensor .* got list"),
        (np.zeros((1, 10), dtype=np.float32), TypeError, r"wav must be a torch\.Tensor .* got ndarray"),
        (
            torch.zeros(1, 1, 2, 10),
            ValueError,
            r"wav must have shape \[N\], \[B, N\] or \[B, C, N\], got \(1, 1, 2, 10\)",
        ),
        (torch.zeros(()), ValueError, r"wav must have shape .* got \(\)"),
        (torch.zeros(2, 10, dtype=torch.int16), ValueError, r"wav must be floating point .* torch\.int16"),
        (torch.zeros(2, 2, 10, dtype=torch.int32), ValueError, r"wav must be floating point .* torch\.int32"),
        (torch.zeros(10, dtype=torch.bool), ValueError, r"wav must be floating point"),
        (torch.zeros(0, 10), ValueError, r"wav is empty: shape \(0, 10\)"),
        (torch.zeros(2, 0), ValueError, r"wav is empty: shape \(2, 0\)"),
        (torch.zeros(0), ValueError, r"wav is empty: shape \(0,\)"),
        (torch.zeros(2, 0, 10), ValueError, r"wav is empty: shape \(2, 0, 10\)"),
        (torch.tensor([[0.0, float("nan"), 0.0]]), ValueError, r"wav contains NaN or Inf"),
        (torch.tensor([[0.0, float("inf"), 0.0]]), ValueError, r"wav contains NaN or Inf"),
        (torch.tensor([[[0.0, 1.0], [0.0, -float("inf")]]]), ValueError, r"wav contains NaN or Inf"),
    ],
)
def test_prepare_audio_rejects_bad_wav(wav, error, pattern):
    with pytest.raises(error, match=pattern):
        prepare_audio(wav)


@pytest.mark.parametrize(
    ("lengths", "pattern"),
    [
        (torch.tensor([5]), r"lengths must have shape \[B\] = \[2\], got \(1,\)"),
        (torch.tensor([[5, 5]]), r"lengths must have shape \[B\] = \[2\], got \(1, 2\)"),
        (torch.tensor(5), r"lengths must have shape \[B\] = \[2\], got \(\)"),
        (torch.tensor([5.0, 5.0]), r"lengths must be integer sample counts, got dtype torch\.float32"),
        ([5.0, 4.0], r"lengths must be integer sample counts"),
        (torch.tensor([True, True]), r"lengths must be integer sample counts, got dtype torch\.bool"),
        (torch.tensor([11, 5]), r"lengths \[11, 5\] exceed the number of samples in wav \(10\)"),
        (torch.tensor([0, 5]), r"lengths must be positive, got \[0, 5\]"),
        (torch.tensor([5, -1]), r"lengths must be positive, got \[5, -1\]"),
    ],
)
def test_prepare_audio_rejects_bad_lengths(lengths, pattern):
    with pytest.raises(ValueError, match=pattern):
        prepare_audio(torch.zeros(2, 10), lengths)


# ---------------------------------------------------------------------------- load_audio / save_audio


def test_save_load_round_trip(tmp_path):
    x = torch.from_numpy(_signal(4000, seed=6)).float()
    x[:3] = torch.tensor([1.0, -1.0, 0.0])
    path = tmp_path / "sub" / "clip.wav"  # parent folders are created
    save_audio(path, x, 16000)
    info = sf.info(str(path))
    assert (info.samplerate, info.channels, info.frames, info.subtype) == (16000, 1, 4000, "PCM_16")
    wav, sr = load_audio(path)
    assert sr == 16000 and isinstance(sr, int)
    assert wav.dtype == torch.float32 and wav.shape == (4000,)
    assert (wav - x).abs().max().item() <= PCM16_STEP + 1e-7


def test_save_audio_accepts_one_row_and_clamps(tmp_path):
    path = tmp_path / "loud.wav"
    save_audio(path, torch.tensor([[2.0, -3.0, 0.5]], requires_grad=True), 8000)
    wav, sr = load_audio(str(path))
    assert sr == 8000
    assert torch.allclose(wav, torch.tensor([1.0, -1.0, 0.5]), atol=PCM16_STEP)


def test_save_audio_rejects_several_channels(tmp_path):
    with pytest.raises(ValueError, match=r"wav must be mono \[N\] or \[1, N\], got shape \(2, 10\)"):
        save_audio(tmp_path / "stereo.wav", torch.zeros(2, 10), 16000)
    assert not (tmp_path / "stereo.wav").exists()


def test_load_audio_downmixes_stereo_to_mean(tmp_path):
    stereo = np.stack([_signal(1000, seed=7), _signal(1000, seed=8)], axis=1).astype(np.float32) * 0.5
    path = tmp_path / "stereo.wav"
    sf.write(str(path), stereo, 22050, subtype="PCM_16")
    wav, sr = load_audio(path)
    assert sr == 22050 and wav.shape == (1000,)
    assert np.abs(wav.numpy() - stereo.mean(axis=1)).max() <= PCM16_STEP


def test_load_audio_resamples(tmp_path):
    path = tmp_path / "clip.wav"
    save_audio(path, torch.from_numpy(_signal(2400, seed=9)).float() * 0.8, 24000)
    native, native_sr = load_audio(path)
    wav, sr = load_audio(path, sample_rate=16000)
    assert (native_sr, sr) == (24000, 16000)
    assert wav.shape == (1600,)
    ref = _reference(native.double().numpy(), 24000, 16000)
    assert np.abs(wav.numpy() - ref).max() < 1e-5
    same, same_sr = load_audio(path, sample_rate=24000)
    assert same_sr == 24000 and torch.equal(same, native)


def test_load_audio_missing_file_names_it(tmp_path):
    path = tmp_path / "nowhere.wav"
    with pytest.raises(ValueError, match=r"audio file '.*nowhere\.wav' does not exist"):
        load_audio(path)


def test_load_audio_corrupt_file_names_it(tmp_path):
    path = tmp_path / "garbage.wav"
    path.write_bytes(np.random.default_rng(10).integers(0, 256, size=2048, dtype=np.uint8).tobytes())
    with pytest.raises(ValueError, match=r"cannot read audio file '.*garbage\.wav'"):
        load_audio(path)


def test_load_audio_empty_file_names_it(tmp_path):
    path = tmp_path / "empty.wav"
    sf.write(str(path), np.zeros(0, dtype=np.float32), 16000, subtype="PCM_16")
    with pytest.raises(ValueError, match=r"audio file '.*empty\.wav' is empty"):
        load_audio(path)


def test_pad_waveforms_zero_pads_to_the_longest_and_counts_lengths():
    from bagpiper_lib.audio import pad_waveforms

    wavs = [torch.ones(3, dtype=torch.float64), torch.arange(5.0), torch.full((1,), -0.5)]
    batch, lengths = pad_waveforms(wavs)
    assert batch.dtype == torch.float32 and lengths.tolist() == [3, 5, 1]
    assert batch.tolist() == [[1, 1, 1, 0, 0], [0, 1, 2, 3, 4], [-0.5, 0, 0, 0, 0]]
