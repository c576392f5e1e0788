"""The AudioCodec contract, checked on every registered codec's tiny preset."""

from __future__ import annotations

import math

import pytest
import torch

from bagpiper_lib import codecs
from bagpiper_lib.audio import resample
from bagpiper_lib.registry import RegistryError

NAMES = ["xcodec", "encodec", "dac"]


@pytest.fixture(scope="module", params=NAMES)
def codec(request):
    return codecs.build({"name": request.param, "preset": "tiny"})


def noise(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return 0.1 * torch.randn(*shape, generator=g)


def test_registry_lists_the_three_codecs_with_tiny_presets():
    assert set(NAMES) <= set(codecs.available())
    assert codecs.DEFAULT == "xcodec"
    for name in NAMES:
        assert "tiny" in codecs.presets(name)


def test_documented_rates(codec):
    expected = {"XCodec": (16000, 320, 8), "EnCodec": (24000, 320, 32), "DAC": (16000, 320, 4)}
    sr, hop, k = expected[type(codec).__name__]
    assert (codec.sample_rate, codec.hop_length, codec.num_codebooks) == (sr, hop, k)
    assert codec.frame_rate == sr / hop
    assert codec.codebook_size == 1024


@pytest.mark.parametrize("extra", [-1, 0, 1])
def test_encode_frame_count_and_decode_length(codec, extra):
    n = 5 * codec.hop_length + extra
    codes, frames = codec.encode(noise(2, n))
    t = math.ceil(n / codec.hop_length)
    assert codes.shape == (2, codec.num_codebooks, t)
    assert codes.dtype == torch.long
    assert frames.tolist() == [t, t]
    assert int(codes.min()) >= 0 and int(codes.max()) < codec.codebook_size
    wav, samples = codec.decode(codes)
    assert wav.shape == (2, t * codec.hop_length)
    assert samples.tolist() == [t * codec.hop_length] * 2
    assert torch.isfinite(wav).all()


def test_same_input_same_codes_and_codes_vary(codec):
    wav = noise(1, codec.sample_rate // 2)
    a, _ = codec.encode(wav)
    b, _ = codec.encode(wav.clone())
    assert torch.equal(a, b)
    assert a.unique().numel() > 1  # a random-init codebook must not collapse to one code


def test_padded_batch_matches_items_alone(codec):
    hop = codec.hop_length
    lengths = torch.tensor([40 * hop, 23 * hop + 17, 31 * hop])
    wav = noise(3, int(lengths.max()), seed=1)
    for i, n in enumerate(lengths.tolist()):
        wav[i, n:] = 0.5  # junk past the valid samples must not matter
    codes, frames = codec.encode(wav, lengths=lengths)
    assert frames.tolist() == [math.ceil(n / hop) for n in lengths.tolist()]
    context = 0 if codec.context_frames is None else codec.context_frames
    for i, n in enumerate(lengths.tolist()):
        alone, f = codec.encode(wav[i, :n])
        usable = int(f) - context
        assert usable > 0
        assert torch.equal(codes[i, :, :usable], alone[0, :, :usable])
        assert (codes[i, :, int(frames[i]) :] == 0).all()


def test_decode_respects_frame_lengths(codec):
    codes, _ = codec.encode(noise(2, 10 * codec.hop_length))
    lengths = torch.tensor([10, 4])
    junk = codes.clone()
    junk[1, :, 4:] = -7  # pad ids past the valid frames are ignored, not range-checked
    wav, samples = codec.decode(junk, lengths)
    assert samples.tolist() == [10 * codec.hop_length, 4 * codec.hop_length]
    assert (wav[1, samples[1] :] == 0).all()


def test_multichannel_is_downmixed(codec):
    stereo = noise(2, 2, 4 * codec.hop_length, seed=3)
    a, _ = codec.encode(stereo)
    b, _ = codec.encode(stereo.mean(dim=1))
    assert torch.equal(a, b)


def test_resamples_to_the_codec_rate(codec):
    sr = 44100
    wav = noise(1, sr // 4, seed=4)
    codes, frames = codec.encode(wav, sample_rate=sr)
    expected, _ = codec.encode(resample(wav, sr, codec.sample_rate))
    assert torch.equal(codes, expected)
    assert int(frames) == math.ceil(math.ceil(wav.shape[-1] * codec.sample_rate / sr) / codec.hop_length)


def test_frozen_eval_no_grad(codec):
    assert not any(p.requires_grad for p in codec.parameters())
    codec.train()
    assert not codec.training and not any(m.training for m in codec.modules())
    codes, _ = codec.encode(noise(1, 4 * codec.hop_length))
    wav, _ = codec.decode(codes)
    assert not wav.requires_grad


def test_save_load_round_trip_reproduces_codes_and_audio(codec, tmp_path):
    name = {"XCodec": "xcodec", "EnCodec": "encodec", "DAC": "dac"}[type(codec).__name__]
    codec.save_pretrained(tmp_path / name)
    loaded = codecs.build({"name": name, "pretrained": str(tmp_path / name)})
    wav = noise(2, 9 * codec.hop_length, seed=5)
    a, fa = codec.encode(wav)
    b, fb = loaded.encode(wav)
    assert torch.equal(a, b) and torch.equal(fa, fb)
    assert torch.equal(codec.decode(a)[0], loaded.decode(a)[0])
    # A different seed gives a different model: the round trip is not trivially true.
    other = codecs.build({"name": name, "preset": "tiny", "seed": 123})
    assert not torch.equal(other.encode(wav)[0], a)


# ---------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "wav, match",
    [
        (torch.zeros(1, 0), "empty"),
        (torch.zeros(0, 100), "empty"),
        (torch.tensor([[0.0, float("nan"), 0.0] * 200]), "NaN or Inf"),
        (torch.tensor([[0.0, float("inf"), 0.0] * 200]), "NaN or Inf"),
        (torch.zeros(1, 1, 1, 600), r"shape \[N\], \[B, N\] or \[B, C, N\]"),
        (torch.zeros(1, 600, dtype=torch.int16), "floating point"),
        ([0.0] * 600, "torch.Tensor"),
    ],
)
def test_encode_rejects_bad_audio(codec, wav, match):
    with pytest.raises((ValueError, TypeError), match=match):
        codec.encode(wav)


def test_encode_rejects_lengths_longer_than_the_tensor(codec):
    with pytest.raises(ValueError, match="exceed the number of samples"):
        codec.encode(noise(2, 800), lengths=torch.tensor([800, 801]))
    with pytest.raises(ValueError, match=r"lengths must have shape \[B\]"):
        codec.encode(noise(2, 800), lengths=torch.tensor([800]))


def test_decode_rejects_codes_out_of_range(codec):
    codes, _ = codec.encode(noise(1, 3 * codec.hop_length))
    bad = codes.clone()
    bad[0, 1, 2] = codec.codebook_size
    with pytest.raises(ValueError, match=r"codes\[0, 1, 2\] = 1024.*\[0, codebook_size=1024\)"):
        codec.decode(bad)
    bad[0, 1, 2] = -1
    with pytest.raises(ValueError, match="out of range"):
        codec.decode(bad)


def test_decode_rejects_wrong_codebook_count_shape_and_dtype(codec):
    k = codec.num_codebooks
    with pytest.raises(ValueError, match=f"has {k + 1} codebooks .* num_codebooks={k}"):
        codec.decode(torch.zeros(1, k + 1, 5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"shape \[B, K, T\]"):
        codec.decode(torch.zeros(k, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="integer tensor"):
        codec.decode(torch.zeros(1, k, 5))
    with pytest.raises(ValueError, match="empty"):
        codec.decode(torch.zeros(1, k, 0, dtype=torch.long))
    with pytest.raises(ValueError, match=r"lie in \[0, T=5\]"):
        codec.decode(torch.zeros(1, k, 5, dtype=torch.long), torch.tensor([6]))


def test_unknown_codec_name_suggests_close_matches():
    with pytest.raises(RegistryError, match="unknown codec 'xcodc'. Did you mean 'xcodec'"):
        codecs.build("xcodc")
    with pytest.raises(RegistryError, match="Available: dac, encodec, xcodec"):
        codecs.build({"name": "soundstream"})


@pytest.mark.parametrize(
    "spec, match",
    [
        (
            {"name": "xcodec", "preset": "tiny", "bandwidth": 3.0},
            r"bandwidth 3.0 kbps .* \[0.5, 1.0, 1.5, 2.0, 4.0\]",
        ),
        (
            {"name": "encodec", "preset": "tiny", "bandwidth": 5.0},
            r"bandwidth 5.0 kbps .* \[1.5, 3.0, 6.0, 12.0, 24.0\]",
        ),
        ({"name": "dac", "preset": "tiny", "num_codebooks": 5}, r"num_codebooks must be in \[1, 4\]"),
        (
            {"name": "xcodec", "preset": "tiny", "num_codebooks": 5},
            r"X-Codec: num_codebooks=5 .* \[1, 2, 3, 4, 8\] codebooks \(1 at 0.5 kbps",
        ),
        (
            {"name": "encodec", "preset": "tiny", "num_codebooks": 3},
            r"EnCodec 24khz: num_codebooks=3 .* \[2, 4, 8, 16, 32\] codebooks",
        ),
        (
            {"name": "xcodec", "preset": "tiny", "num_codebooks": 2, "bandwidth": 1.0},
            r"X-Codec: give bandwidth or num_codebooks, not both",
        ),
        ({"name": "encodec", "preset": "tiny", "model": "32khz"}, "model must be one of"),
        ({"name": "dac", "preset": "tiny", "model": "8khz"}, "model must be one of"),
    ],
)
def test_unsupported_bandwidth_or_model(spec, match):
    with pytest.raises(ValueError, match=match):
        codecs.build(spec)


@pytest.mark.parametrize("name, bandwidth, k", [("xcodec", 0.5, 1), ("xcodec", 2.0, 4), ("encodec", 6.0, 8)])
def test_bandwidth_selects_codebooks(name, bandwidth, k):
    codec = codecs.build({"name": name, "preset": "tiny", "bandwidth": bandwidth})
    assert codec.num_codebooks == k
    codes, _ = codec.encode(noise(1, 3 * codec.hop_length))
    assert codes.shape[1] == k
    full = codecs.build({"name": name, "preset": "tiny"})
    # Residual quantisation: the first codebooks do not depend on how many follow.
    assert torch.equal(full.encode(noise(1, 3 * codec.hop_length))[0][:, :k], codes)


@pytest.mark.parametrize("name", NAMES)
def test_every_codec_takes_num_codebooks_as_its_first_residual_levels(name):
    """``num_codebooks`` means the same for every codec, so a config setting it survives a codec swap."""
    codec = codecs.build({"name": name, "preset": "tiny", "num_codebooks": 2})
    full = codecs.build({"name": name, "preset": "tiny"})
    wav = noise(2, 4 * codec.hop_length)
    codes, _ = codec.encode(wav)
    assert codec.num_codebooks == 2 and codes.shape[1] == 2
    assert torch.equal(full.encode(wav)[0][:, :2], codes)
    if name != "dac":  # the bandwidth that gives two codebooks
        assert codec.bandwidth == {"xcodec": 1.0, "encodec": 1.5}[name]


@pytest.mark.parametrize("name", NAMES)
def test_missing_pretrained_directory(name, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        codecs.build({"name": name, "pretrained": str(tmp_path / "nowhere")})


@pytest.mark.parametrize("name", NAMES)
def test_half_precision_weights_beside_float32_buffers_encode_and_decode(name):
    """A bf16 strategy may cast a frozen codec's parameters but not its buffers (DeepSpeed, FSDP mixed
    precision): encode and decode still run, in bf16, with codes close to float32's."""
    reference = codecs.build({"name": name, "preset": "tiny"})
    wav = noise(2, reference.sample_rate)
    codes, _ = reference.encode(wav)
    half = codecs.build({"name": name, "preset": "tiny"})
    half.load_state_dict(reference.state_dict())
    for p in half.parameters():
        p.data = p.data.to(torch.bfloat16)
    half_codes, _ = half.encode(wav)
    assert half_codes.shape == codes.shape
    assert (half_codes == codes).float().mean() > 0.8  # bf16 rounding flips a few near-ties
    out, samples = half.decode(half_codes)
    assert out.dtype == torch.float32 and bool(torch.isfinite(out).all())
    torch.testing.assert_close(samples, torch.full((2,), out.shape[-1]))
