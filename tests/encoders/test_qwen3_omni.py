"""The ``qwen3_omni`` encoder entry: parity, padded batches, freezing, checkpoint reading, bad input."""

import copy
import json

import pytest
import torch

from bagpiper_lib import encoders
from bagpiper_lib.encoders import qwen3_omni

SR = 16000
PREFIX = "thinker.audio_tower."


@pytest.fixture(scope="module")
def enc():
    """The tiny preset with every parameter perturbed: random init leaves the conv biases at zero,
    which would hide the chunk-padding effects the padded-batch test checks for."""
    model = encoders.build({"name": "qwen3_omni", "preset": "tiny"})
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=gen))
    return model


def _wav(lengths, seed=0):
    gen = torch.Generator().manual_seed(seed)
    wav = 0.1 * torch.randn(len(lengths), max(lengths), generator=gen)
    return wav * (torch.arange(wav.shape[-1])[None] < torch.tensor(lengths)[:, None]), torch.tensor(lengths)


def test_registered_as_default_with_a_tiny_preset(enc):
    assert encoders.DEFAULT == "qwen3_omni" and "tiny" in encoders.presets("qwen3_omni")
    assert enc.sample_rate == SR and enc.output_dim == 48 and enc.mel.n_mels == 128


def test_output_lengths_reproduce_transformers():
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import _get_feat_extract_output_lengths

    frames = torch.arange(1, 2001)
    assert torch.equal(qwen3_omni.output_lengths(frames), _get_feat_extract_output_lengths(frames))


def test_matches_transformers_pipeline(enc):
    from transformers import WhisperFeatureExtractor

    wav, lengths = _wav([40123])  # 250 mel frames: two full chunks, a tail, two attention windows
    inputs = WhisperFeatureExtractor(feature_size=128)(
        wav[0].numpy(), sampling_rate=SR, return_tensors="pt", padding="longest"
    )
    mel = inputs["input_features"][0]  # [128, 250]
    with torch.no_grad():
        ref = enc.model(mel, feature_lens=torch.tensor([mel.shape[-1]])).last_hidden_state
    feats, out = enc(wav, lengths)
    assert out.tolist() == [33] and feats.shape == (1, 33, 48)
    torch.testing.assert_close(feats[0], ref, rtol=0, atol=1e-5)


def test_padded_batch_equals_each_item_alone(enc):
    # 250, 100, 56, 56 and 31 mel frames: long items, exactly one chunk, and short ones of equal length
    wav, lengths = _wav([40123, 16000, 9000, 9100, 5100])
    feats, out = enc(wav, lengths)
    frames = lengths // 160
    assert torch.equal(out, qwen3_omni.output_lengths(frames))
    assert feats.shape == (5, int(out.max()), enc.output_dim)
    for i, n in enumerate(lengths.tolist()):
        alone, alone_out = enc(wav[i, :n])
        assert alone_out.tolist() == [out[i]]
        torch.testing.assert_close(feats[i, : out[i]], alone[0], rtol=0, atol=1e-5)
        assert (feats[i, out[i] :] == 0).all()


def test_frozen_by_default_and_trainable_on_request(enc):
    assert not enc.trainable and not any(p.requires_grad for p in enc.parameters())
    enc.train()
    assert not enc.training and not enc.model.training
    assert not enc(*_wav([4000]))[0].requires_grad

    trainable = encoders.build({"name": "qwen3_omni", "preset": "tiny", "trainable": True})
    assert trainable.training and all(p.requires_grad for p in trainable.parameters())
    feats, _ = trainable(*_wav([20000, 4000]))
    feats.square().mean().backward()
    assert all(p.grad is not None for p in (trainable.model.conv2d1.weight, trainable.model.proj2.weight))


def test_save_pretrained_round_trip(enc, tmp_path):
    enc.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "qwen3_omni_moe_audio_encoder"
    loaded = encoders.build({"name": "qwen3_omni", "pretrained": str(tmp_path)})
    wav, lengths = _wav([20000, 9000])
    (a, la), (b, lb) = enc(wav, lengths), loaded(wav, lengths)
    assert torch.equal(la, lb) and torch.equal(a, b)


def _write_full_checkpoint(directory, enc, prefix=PREFIX, audio=True):
    """A fake sharded Qwen3-Omni checkpoint: the audio tower over two shards next to other tensors,
    and a third shard with no audio tensor at all."""
    from safetensors.torch import save_file

    state = {prefix + k: v.contiguous() for k, v in enc.model.state_dict().items()} if audio else {}
    keys = sorted(state)
    shards = {
        "model-00001-of-00003.safetensors": {k: state[k] for k in keys[::2]},
        "model-00002-of-00003.safetensors": {k: state[k] for k in keys[1::2]},
        "model-00003-of-00003.safetensors": {"talker.x": torch.ones(3), "code2wav.y": torch.ones(2)},
    }
    shards["model-00001-of-00003.safetensors"]["thinker.model.layers.0.weight"] = torch.ones(4, 4)
    shards["model-00002-of-00003.safetensors"]["thinker.visual.patch.weight"] = torch.ones(2)
    weight_map = {}
    for name, tensors in shards.items():
        save_file(tensors, str(directory / name))
        weight_map.update(dict.fromkeys(tensors, name))
    (directory / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )
    config = {
        "model_type": "qwen3_omni_moe",
        "architectures": ["Qwen3OmniMoeForConditionalGeneration"],
        "thinker_config": {
            "model_type": "qwen3_omni_moe_thinker",
            "audio_config": enc.model.config.to_dict(),
        },
        "talker_config": {"model_type": "qwen3_omni_moe_talker"},
    }
    (directory / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("prefix", [PREFIX, "thinker.model.audio_tower."])
def test_reads_only_the_audio_tower_of_a_sharded_checkpoint(enc, tmp_path, monkeypatch, prefix):
    _write_full_checkpoint(tmp_path, enc, prefix)
    opened, read = [], []
    real_safe_open = qwen3_omni.safe_open

    class RecordingSafeOpen:
        def __init__(self, path, **kwargs):
            opened.append(path.rsplit("/", 1)[-1])
            self.handle = real_safe_open(path, **kwargs)

        def __enter__(self):
            self.file = self.handle.__enter__()
            return self

        def __exit__(self, *exc):
            return self.handle.__exit__(*exc)

        def keys(self):
            return self.file.keys()

        def get_tensor(self, key):
            read.append(key)
            return self.file.get_tensor(key)

    monkeypatch.setattr(qwen3_omni, "safe_open", RecordingSafeOpen)
    loaded = encoders.build({"name": "qwen3_omni", "pretrained": str(tmp_path)})
    assert sorted(opened) == ["model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors"]
    assert sorted(read) == sorted(prefix + k for k in enc.model.state_dict())
    wav, lengths = _wav([20000, 9000])
    (a, la), (b, lb) = enc(wav, lengths), loaded(wav, lengths)
    assert torch.equal(la, lb) and torch.equal(a, b)


def test_hub_id_reads_the_local_hugging_face_cache(enc, tmp_path, monkeypatch):
    import huggingface_hub.constants

    revision = "0" * 40
    repo = tmp_path / "models--org--qwen3-omni-tiny"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    (repo / "snapshots" / revision).mkdir(parents=True)
    _write_full_checkpoint(repo / "snapshots" / revision, enc)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    loaded = encoders.build({"name": "qwen3_omni", "pretrained": "org/qwen3-omni-tiny"})
    wav, lengths = _wav([9000])
    assert torch.equal(enc(wav, lengths)[0], loaded(wav, lengths)[0])


def test_strict_key_check_names_missing_tensors(enc, tmp_path):
    broken = copy.deepcopy(enc)
    broken.model.register_buffer("extra", torch.zeros(1))  # an unexpected tensor in the checkpoint
    _write_full_checkpoint(tmp_path, broken)
    with pytest.raises(ValueError, match="unexpected \\['extra'\\]"):
        encoders.build({"name": "qwen3_omni", "pretrained": str(tmp_path)})


def test_bad_input_is_rejected_by_name(enc, tmp_path):
    with pytest.raises(ValueError, match=r"audio too long.*max_seconds=1 s \(16000 samples"):
        encoders.build({"name": "qwen3_omni", "preset": "tiny", "max_seconds": 1.0})(torch.zeros(1, 16001))
    with pytest.raises(ValueError, match=r"n_mels=80 does not match.*num_mel_bins=128"):
        encoders.build({"name": "qwen3_omni", "preset": "tiny", "n_mels": 80})
    with pytest.raises(ValueError, match="n_window=8 is not supported"):
        encoders.build({"name": "qwen3_omni", "preset": "tiny", "config": {"n_window": 8}})
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        encoders.build({"name": "qwen3_omni", "pretrained": str(tmp_path / "missing")})
    _write_full_checkpoint(tmp_path, enc, audio=False)
    with pytest.raises(
        ValueError, match="holds no audio tower tensors.*'thinker.audio_tower.conv2d1.weight'"
    ):
        encoders.build({"name": "qwen3_omni", "pretrained": str(tmp_path)})
    with pytest.raises(ValueError, match="audio too short"):
        enc(torch.randn(1, 200))
    with pytest.raises(ValueError, match="wav is empty"):  # the base-class validation is wired
        enc(torch.zeros(1, 0))
