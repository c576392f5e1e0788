"""HuBERT / WavLM encoders: frame formula, parity with transformers, padded batches, freezing, loading."""

from __future__ import annotations

import pytest
import torch
from transformers import HubertModel, Wav2Vec2FeatureExtractor, WavLMModel

from bagpiper_lib import encoders
from bagpiper_lib.encoders import AudioEncoder, adaptors
from bagpiper_lib.encoders.ssl import TINY_CONFIG, HubertEncoder, WavLMEncoder

LAYER_NORM = {"feat_extract_norm": "layer", "do_stable_layer_norm": True}  # hubert-large style
CLASSES = {"hubert": (HubertEncoder, HubertModel), "wavlm": (WavLMEncoder, WavLMModel)}


def _wav(batch: int, samples: int, seed: int = 0) -> torch.Tensor:
    return 0.1 * torch.randn(batch, samples, generator=torch.Generator().manual_seed(seed))


def _frames(n: int) -> int:
    """The documented closed form for the real conv stack: 400-sample receptive field, hop 320."""
    return (n - 400) // 320 + 1


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """``{(name, norm): directory}`` of tiny checkpoints written by ``save_pretrained``."""
    dirs = {}
    for name, (cls, _) in CLASSES.items():
        for norm, extra in (("group", {}), ("layer", LAYER_NORM)):
            directory = tmp_path_factory.mktemp(f"{name}-{norm}")
            cls(config={**TINY_CONFIG, **extra}, seed=1).save_pretrained(directory)
            dirs[name, norm] = directory
    return dirs


def test_registry_builds_tiny_presets():
    assert {"hubert", "wavlm"} <= set(encoders.available())
    for name, (cls, _) in CLASSES.items():
        assert encoders.presets(name) == ["tiny"]
        enc = encoders.build({"name": name, "preset": "tiny"})
        assert isinstance(enc, cls) and isinstance(enc, AudioEncoder)
        assert (enc.sample_rate, enc.output_dim, enc.num_layers) == (16000, 32, 2)
        assert (enc.hop_length, enc.receptive_field, enc.frame_rate) == (320, 400, 50.0)
        assert enc.layer is None and not enc.normalize and not enc.uses_attention_mask


def test_frame_counts_follow_the_conv_formula():
    enc = HubertEncoder(config=TINY_CONFIG)
    n = torch.tensor([399, 400, 719, 720, 1000, 16000, 16399, 16400])
    expected = torch.tensor([0] + [_frames(int(x)) for x in n[1:]])
    assert torch.equal(enc.num_frames(n), expected)
    assert torch.equal(enc.num_frames(n[1:]), enc.model._get_feat_extract_output_lengths(n[1:]))
    assert [enc.num_frames(int(x)) for x in n] == expected.tolist()

    lengths = torch.tensor([5000, 3210, 400])
    feats, frames = enc(_wav(3, 5000), lengths)
    assert feats.shape == (3, _frames(5000), 32)
    assert frames.tolist() == [_frames(5000), _frames(3210), 1] and frames.dtype == torch.long
    for b, t in enumerate(frames.tolist()):
        assert torch.equal(feats[b, t:], torch.zeros_like(feats[b, t:]))
        assert feats[b, :t].abs().sum(-1).min() > 0


@pytest.mark.parametrize(
    ("name", "norm", "layer"),
    [
        ("hubert", "group", None),
        ("hubert", "group", 0),
        ("hubert", "group", 1),
        ("hubert", "group", "mean"),
        ("hubert", "layer", None),
        ("hubert", "layer", -1),
        ("wavlm", "group", None),
        ("wavlm", "layer", 1),
    ],
)
def test_parity_with_the_plain_transformers_model(saved, name, norm, layer):
    cls, model_cls = CLASSES[name]
    directory = saved[name, norm]
    enc = cls(pretrained=directory, layer=layer)
    reference = model_cls.from_pretrained(str(directory)).eval()
    wav = _wav(2, 4000, seed=3)
    # the reference gets the Hugging Face preprocessing (normalised input for layer-norm checkpoints)
    processor = Wav2Vec2FeatureExtractor.from_pretrained(str(directory))
    inputs = processor(list(wav.numpy()), sampling_rate=16000, return_tensors="pt").input_values
    assert enc.normalize == (norm == "layer") == processor.do_normalize
    with torch.no_grad():
        out = reference(inputs, output_hidden_states=True)
    if layer is None:
        expected = out.last_hidden_state
    elif layer == "mean":
        expected = torch.stack(out.hidden_states).mean(0)
    else:
        expected = out.hidden_states[layer]
    feats, frames = enc(wav)
    torch.testing.assert_close(feats, expected, rtol=1e-5, atol=1e-5)
    assert frames.tolist() == [expected.shape[1]] * 2


@pytest.mark.parametrize("name", ["hubert", "wavlm"])
@pytest.mark.parametrize("norm", ["group", "layer"])
def test_padded_batch_matches_items_encoded_alone(saved, name, norm):
    enc = CLASSES[name][0](pretrained=saved[name, norm])
    lengths = torch.tensor([3200, 2567, 3200, 400])
    wav = _wav(4, 3200, seed=1)
    feats, frames = enc(wav, lengths)
    for b, n in enumerate(lengths.tolist()):
        alone, alone_frames = enc(wav[b : b + 1, :n])
        assert alone_frames.item() == frames[b].item() == _frames(n)
        torch.testing.assert_close(feats[b, : frames[b]], alone[0], rtol=0, atol=1e-5)
        assert torch.equal(feats[b, frames[b] :], torch.zeros_like(feats[b, frames[b] :]))


def test_frozen_by_default_stays_eval_and_has_no_grad():
    enc = HubertEncoder(config=TINY_CONFIG)
    assert not enc.training and not any(m.training for m in enc.modules())
    assert not any(p.requires_grad for p in enc.parameters())
    parent = torch.nn.Sequential(enc)
    parent.train()
    enc.train()
    assert not any(m.training for m in enc.modules())
    feats, _ = enc(_wav(2, 1600))
    assert not feats.requires_grad


@pytest.mark.parametrize(
    ("name", "extra", "layer"),
    [("hubert", {}, "mean"), ("hubert", LAYER_NORM, None), ("wavlm", {}, 1), ("wavlm", LAYER_NORM, 1)],
)
def test_trainable_encoder_gets_gradients_through_a_padded_batch(name, extra, layer):
    enc = CLASSES[name][0](config={**TINY_CONFIG, **extra}, trainable=True, layer=layer)
    assert enc.training
    feats, frames = enc(_wav(2, 3000), torch.tensor([3000, 2000]))
    (feats**2).sum().backward()
    trained = {n: p for n, p in enc.named_parameters() if p.requires_grad}
    frozen = {n for n, p in enc.named_parameters() if not p.requires_grad}
    # every trainable parameter gets a gradient (DDP-safe); only unreachable ones are frozen
    assert all(p.grad is not None for p in trained.values()), [
        n for n, p in trained.items() if p.grad is None
    ]
    assert "model.masked_spec_embed" in frozen
    assert any("layers.1." in n for n in frozen) == (layer == 1)
    assert trained["model.feature_extractor.conv_layers.0.conv.weight"].grad.abs().sum() > 0


def test_save_load_round_trip_is_exact(tmp_path):
    enc = WavLMEncoder(config={**TINY_CONFIG, **LAYER_NORM}, seed=5, normalize=False)
    enc.save_pretrained(tmp_path)
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= {
        p.name for p in tmp_path.iterdir()
    }
    loaded = encoders.build({"name": "wavlm", "pretrained": str(tmp_path)})
    assert isinstance(loaded, WavLMEncoder) and loaded.normalize is False and loaded.uses_attention_mask
    wav, lengths = _wav(2, 3000, seed=2), torch.tensor([3000, 1700])
    a, fa = enc(wav, lengths)
    b, fb = loaded(wav, lengths)
    assert torch.equal(a, b) and torch.equal(fa, fb)


def test_checkpoint_without_preprocessor_config_uses_the_norm_convention(tmp_path):
    HubertEncoder(config={**TINY_CONFIG, **LAYER_NORM}).model.save_pretrained(str(tmp_path))
    assert HubertEncoder(pretrained=tmp_path).normalize
    assert not HubertEncoder(pretrained=tmp_path, normalize=False).normalize


def test_resampled_input_goes_through_the_base_class():
    enc = HubertEncoder(config=TINY_CONFIG)
    feats, frames = enc(_wav(1, 4000), sample_rate=8000)
    assert frames.tolist() == [_frames(8000)] and feats.shape == (1, _frames(8000), 32)


def test_encoder_output_feeds_an_adaptor():
    enc = encoders.build({"name": "hubert", "preset": "tiny"})
    adaptor = adaptors.build({"name": "mlp", "input_dim": enc.output_dim, "output_dim": 64, "downsample": 2})
    feats, frames = enc(_wav(2, 4000), torch.tensor([4000, 2000]))
    out, out_frames = adaptor(feats, frames)
    assert out.shape == (2, _frames(4000) // 2, 64)
    assert out_frames.tolist() == [_frames(4000) // 2, _frames(2000) // 2]


# ---------------------------------------------------------------------- bad input
@pytest.mark.parametrize("layer", [3, -4, True, "last", 1.0])
def test_rejects_a_layer_outside_the_model(layer):
    with pytest.raises(ValueError, match=r"layer=.* 2-layer hubert.*\[-3, 2\]"):
        HubertEncoder(config=TINY_CONFIG, layer=layer)


def test_rejects_a_missing_pretrained_directory(tmp_path):
    missing = tmp_path / "no-such-checkpoint"
    with pytest.raises(FileNotFoundError, match="no-such-checkpoint.*no such directory"):
        encoders.build({"name": "hubert", "pretrained": str(missing)})


def test_rejects_a_directory_without_a_checkpoint_and_a_hub_id_not_cached(tmp_path):
    with pytest.raises(FileNotFoundError, match="cannot load a hubert checkpoint"):
        HubertEncoder(pretrained=tmp_path)
    with pytest.raises(FileNotFoundError, match="local_files_only=True"):
        HubertEncoder(pretrained="bagpiper-tests/not-a-cached-model")


def test_rejects_a_checkpoint_of_the_other_model(saved):
    with pytest.raises(ValueError, match="holds a 'wavlm' model.*loads 'hubert'"):
        HubertEncoder(pretrained=saved["wavlm", "group"])


@pytest.mark.parametrize(("samples", "lengths"), [(399, None), (4000, [4000, 399])])
def test_rejects_audio_shorter_than_one_frame(samples, lengths):
    enc = HubertEncoder(config=TINY_CONFIG)
    batch = 1 if lengths is None else len(lengths)
    with pytest.raises(ValueError, match=r"audio too short.*at least 400 samples"):
        enc(_wav(batch, samples), None if lengths is None else torch.tensor(lengths))


def test_base_class_validation_is_wired():
    enc = WavLMEncoder(config=TINY_CONFIG)
    wav = _wav(1, 1000)
    wav[0, 10] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        enc(wav)
    with pytest.raises(ValueError, match="empty"):
        enc(torch.zeros(1, 0))
