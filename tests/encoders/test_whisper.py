"""The ``whisper`` encoder entry: parity with transformers, lengths, freezing, loading, bad input."""

import json

import pytest
import torch

from bagpiper_lib import encoders

SR = 16000


@pytest.fixture(scope="module")
def enc():
    return encoders.build({"name": "whisper", "preset": "tiny"})


def _wav(lengths, seed=0):
    gen = torch.Generator().manual_seed(seed)
    wav = 0.1 * torch.randn(len(lengths), max(lengths), generator=gen)
    return wav * (torch.arange(wav.shape[-1])[None] < torch.tensor(lengths)[:, None]), torch.tensor(lengths)


def _reference(model, wav, max_samples):
    """transformers' own pipeline: WhisperFeatureExtractor padded to the window, then the encoder."""
    from transformers import WhisperFeatureExtractor

    extractor = WhisperFeatureExtractor(feature_size=model.config.num_mel_bins)
    inputs = extractor(
        wav.numpy(), sampling_rate=SR, padding="max_length", max_length=max_samples, return_tensors="pt"
    )
    with torch.no_grad():
        return model(inputs["input_features"]).last_hidden_state[0]


def test_registered_with_a_tiny_preset(enc):
    assert "whisper" in encoders.available() and "tiny" in encoders.presets("whisper")
    assert enc.sample_rate == SR and enc.output_dim == 32 and enc.max_seconds == 2.0


def test_matches_transformers_and_documented_lengths(enc):
    wav, lengths = _wav([20000, 7001, 32000])
    feats, out = enc(wav, lengths)
    assert out.tolist() == [-(-n // 320) for n in lengths.tolist()] == [63, 22, 100]
    assert feats.shape == (3, 100, enc.output_dim)
    for i, n in enumerate(lengths.tolist()):
        ref = _reference(enc.model, wav[i, :n], enc.max_samples)
        torch.testing.assert_close(feats[i, : out[i]], ref[: out[i]], rtol=0, atol=1e-5)
        assert (feats[i, out[i] :] == 0).all()
        alone, alone_out = enc(wav[i, :n])  # a padded batch gives what the item gives alone
        assert alone_out.tolist() == [out[i]]
        torch.testing.assert_close(alone[0], feats[i, : out[i]], rtol=0, atol=1e-5)


def test_frozen_by_default_and_trainable_on_request(enc):
    assert not enc.trainable and not any(p.requires_grad for p in enc.parameters())
    enc.train()
    assert not enc.training and not enc.model.training
    feats, _ = enc(*_wav([4000]))
    assert not feats.requires_grad

    trainable = encoders.build({"name": "whisper", "preset": "tiny", "trainable": True})
    assert trainable.training
    feats, _ = trainable(*_wav([4000]))
    feats.square().mean().backward()
    assert trainable.model.conv1.weight.grad is not None and trainable.model.conv1.weight.grad.abs().sum() > 0
    assert not trainable.model.embed_positions.weight.requires_grad  # fixed sinusoids, as in transformers


def test_save_pretrained_round_trip(enc, tmp_path):
    enc.save_pretrained(tmp_path / "whisper")
    assert json.loads((tmp_path / "whisper" / "config.json").read_text())["model_type"] == "whisper"
    loaded = encoders.build({"name": "whisper", "pretrained": str(tmp_path / "whisper")})
    wav, lengths = _wav([20000, 9000])
    (a, la), (b, lb) = enc(wav, lengths), loaded(wav, lengths)
    assert torch.equal(la, lb) and torch.equal(a, b)


@pytest.mark.parametrize("cls_name", ["WhisperForConditionalGeneration", "WhisperModel"])
def test_loads_the_encoder_out_of_a_full_transformers_checkpoint(cls_name, tmp_path):
    import transformers

    from bagpiper_lib.encoders.whisper import TINY_CONFIG

    torch.manual_seed(1)
    full = getattr(transformers, cls_name)(transformers.WhisperConfig(**TINY_CONFIG)).eval()
    full.save_pretrained(str(tmp_path))
    enc = encoders.build({"name": "whisper", "pretrained": str(tmp_path)})
    wav, lengths = _wav([12345])
    feats, out = enc(wav, lengths)
    ref = _reference(full.get_encoder(), wav[0], enc.max_samples)
    torch.testing.assert_close(feats[0], ref[: out[0]], rtol=0, atol=1e-5)


def test_bad_input_is_rejected_by_name(enc, tmp_path):
    with pytest.raises(
        ValueError, match=r"audio too long for the Whisper encoder.*maximum of 32000 samples \(2 s"
    ):
        enc(torch.zeros(1, 32001))
    with pytest.raises(ValueError, match=r"n_mels=128 does not match.*num_mel_bins=80"):
        encoders.build({"name": "whisper", "preset": "tiny", "n_mels": 128})
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        encoders.build({"name": "whisper", "pretrained": str(tmp_path / "missing")})
    with pytest.raises(FileNotFoundError, match="lacks config.json"):
        encoders.build({"name": "whisper", "pretrained": str(tmp_path)})
    from safetensors.torch import save_file

    from bagpiper_lib.encoders.whisper import TINY_CONFIG

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "whisper", **TINY_CONFIG}))
    save_file({"decoder.embed_tokens.weight": torch.zeros(2, 2)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match="holds no Whisper encoder tensors.*'model.encoder.conv1.weight'"):
        encoders.build({"name": "whisper", "pretrained": str(tmp_path)})
    with pytest.raises(ValueError, match="NaN"):  # the base-class validation is wired
        enc(torch.full((1, 1000), float("nan")))
