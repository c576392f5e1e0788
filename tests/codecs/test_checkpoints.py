"""Loading codecs from the files their users have: original release checkpoints and saved directories."""

from __future__ import annotations

import sys

import pytest
import torch

from bagpiper_lib import codecs
from bagpiper_lib.codecs.base import conv_context_frames


def noise(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return 0.1 * torch.randn(*shape, generator=g)


def test_encodec_loads_the_original_24khz_checkpoint_format(tmp_path):
    """The reference file is a bare state dict of the full-size 24 kHz model, named with its checksum."""
    full = codecs.build({"name": "encodec", "model": "24khz", "bandwidth": 6.0, "seed": 7})
    path = tmp_path / "encodec_24khz-d7cc33bc.th"
    torch.save(full.model.state_dict(), path)
    wav = noise(1, 24000 // 4)
    for spec in (str(path), str(tmp_path)):  # the file, or the reference "repository" directory
        loaded = codecs.build({"name": "encodec", "pretrained": spec, "bandwidth": 6.0})
        assert loaded.num_codebooks == 8 and loaded.frame_rate == 75
        assert torch.equal(loaded.encode(wav)[0], full.encode(wav)[0])


def test_encodec_48khz_is_stereo_inside_and_mono_outside(tmp_path):
    codec = codecs.build({"name": "encodec", "preset": "tiny", "model": "48khz", "bandwidth": 6.0})
    assert (codec.sample_rate, codec.frame_rate, codec.num_codebooks, codec.context_frames) == (
        48000,
        150,
        4,
        None,
    )
    codes, _ = codec.encode(noise(1, 48000 // 10))
    wav, _ = codec.decode(codes)
    assert wav.shape == (1, 15 * 320)
    # Loudness normalisation: decoded audio comes back at decode_rms.
    assert torch.allclose(wav.pow(2).mean().sqrt(), torch.tensor(0.1), rtol=1e-3)
    codec.save_pretrained(tmp_path / "e48")
    loaded = codecs.build({"name": "encodec", "pretrained": str(tmp_path / "e48"), "bandwidth": 6.0})
    assert loaded.model_name == "48khz" and torch.equal(
        loaded.encode(noise(1, 4800))[0], codec.encode(noise(1, 4800))[0]
    )


def test_dac_loads_the_original_release_format(tmp_path):
    """Release files are ``{"state_dict", "metadata": {"kwargs"}}`` written by audiotools' ``save``."""
    tiny = codecs.build({"name": "dac", "preset": "tiny"})
    path = tmp_path / "weights_16khz.pth"
    tiny.model.save(str(path), package=False)
    loaded = codecs.build({"name": "dac", "pretrained": str(path)})
    wav = noise(2, 16000 // 4)
    assert torch.equal(loaded.encode(wav)[0], tiny.encode(wav)[0])
    assert loaded.num_codebooks == tiny.num_codebooks


def test_corrupt_checkpoint_files_fail_clearly(tmp_path):
    bad = tmp_path / "encodec_24khz-00000000.th"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="cannot read EnCodec checkpoint"):
        codecs.build({"name": "encodec", "pretrained": str(bad)})
    bad_dac = tmp_path / "weights.pth"
    bad_dac.write_bytes(b"\x00\x01garbage")
    with pytest.raises(ValueError, match="cannot read DAC checkpoint"):
        codecs.build({"name": "dac", "pretrained": str(bad_dac)})
    torch.save({"weights": torch.zeros(2)}, tmp_path / "plain.pth")
    with pytest.raises(ValueError, match="lacks 'state_dict' or 'metadata.kwargs'"):
        codecs.build({"name": "dac", "pretrained": str(tmp_path / "plain.pth")})


def test_mismatched_weights_name_missing_and_unexpected_tensors(tmp_path):
    tiny = codecs.build({"name": "encodec", "preset": "tiny"})
    path = tmp_path / "encodec_24khz-d7cc33bc.th"
    torch.save(tiny.model.state_dict(), path)  # tiny weights, full-size architecture implied by the file
    with pytest.raises(
        ValueError,
        match=r"do not match the EncodecModel .*shape mismatch \(178\): encoder.model.0.conv.conv.bias \(4,\) != \(32,\)",
    ):
        codecs.build({"name": "encodec", "pretrained": str(path)})
    state = codecs.build({"name": "encodec", "model": "24khz"}).model.state_dict()
    state["extra.weight"] = state.pop("encoder.model.0.conv.conv.bias")
    (tmp_path / "renamed").mkdir()
    torch.save(state, tmp_path / "renamed" / "encodec_24khz-d7cc33bc.th")
    with pytest.raises(
        ValueError, match=r"missing \(1\): encoder.model.0.conv.conv.bias; unexpected \(1\): extra"
    ):
        codecs.build({"name": "encodec", "pretrained": str(tmp_path / "renamed")})


def test_directory_without_weights_is_rejected(tmp_path):
    (tmp_path / "config.json").write_text('{"kwargs": {}}')
    with pytest.raises(FileNotFoundError, match="lacks model.safetensors"):
        codecs.build({"name": "dac", "pretrained": str(tmp_path)})
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="neither config.json"):
        codecs.build({"name": "encodec", "pretrained": str(empty)})


@pytest.mark.parametrize("name, module, extra", [("encodec", "encodec", "encodec"), ("dac", "dac", "dac")])
def test_missing_optional_package_names_the_install(monkeypatch, name, module, extra):
    monkeypatch.setitem(sys.modules, module, None)  # import of it now raises ImportError
    with pytest.raises(ImportError, match=rf"pip install 'bagpiper-lib\[{extra}\]'"):
        codecs.build({"name": name, "preset": "tiny"})


def test_conv_context_bound_counts_dilations_and_strides():
    net = torch.nn.Sequential(
        torch.nn.Conv1d(1, 1, 7, padding=3),  # reach 6 at stride 1
        torch.nn.Conv1d(1, 1, 4, stride=2),  # reach 3 at stride 1, then stride 2
        torch.nn.Conv1d(1, 1, 3, dilation=3, padding=3),  # reach 6 at stride 2 -> 12 samples
    )
    assert conv_context_frames(net, hop_length=2) == (6 + 3 + 12 + 1) // 2
