"""Embedders: encoder mean-pooling by hand, FAD, hashing text embedder, CLAP save -> load round trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from bagpiper_lib.audio import resample
from bagpiper_lib.encoders.base import AudioEncoder
from bagpiper_lib.evaluation import (
    AudioEmbedder,
    ClapAudioEmbedder,
    ClapTextEmbedder,
    EncoderAudioEmbedder,
    HashingTextEmbedder,
    TextEmbedder,
    cosine_similarity,
    frechet_audio_distance,
)


class ChunkStatsEncoder(AudioEncoder):
    """Test encoder: frame t of ``frame`` samples -> [mean, max |x|] * scale (16 kHz)."""

    def __init__(self, frame: int = 4):
        super().__init__()
        self.sample_rate, self.output_dim, self.frame = 16000, 2, frame
        self.scale = nn.Parameter(torch.ones(()))
        self.set_trainable(False)

    def num_frames(self, num_samples: torch.Tensor) -> torch.Tensor:
        return num_samples // self.frame

    def _forward(self, wav, lengths):
        frames = wav.shape[1] // self.frame
        chunks = wav[:, : frames * self.frame].reshape(wav.shape[0], frames, self.frame)
        feats = torch.stack([chunks.mean(-1), chunks.abs().amax(-1)], dim=-1) * self.scale
        return feats, self.num_frames(lengths)

    def save_pretrained(self, directory):
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        (path / "config.json").write_text(json.dumps({"frame": self.frame}))
        return path


def _noise(n: int, seed: int, scale: float = 0.1) -> torch.Tensor:
    return scale * torch.randn(n, generator=torch.Generator().manual_seed(seed))


def test_encoder_embedder_mean_pools_valid_frames_by_hand():
    wavs = [_noise(40, 0), _noise(23, 1)]  # 10 and 5 frames of 4 samples (3 samples dropped)
    embedder = EncoderAudioEmbedder(ChunkStatsEncoder(), batch_size=2)
    assert isinstance(embedder, AudioEmbedder) and embedder.dim == 2
    out = embedder.embed(wavs, 16000)
    assert out.shape == (2, 2) and out.dtype == torch.float32
    for row, wav in enumerate(wavs):
        chunks = wav[: (wav.numel() // 4) * 4].reshape(-1, 4)
        expected = torch.stack([chunks.mean(-1), chunks.abs().amax(-1)], dim=-1).mean(0)
        torch.testing.assert_close(out[row], expected)
    # padding inside a batch never changes an embedding
    torch.testing.assert_close(
        EncoderAudioEmbedder(ChunkStatsEncoder(), batch_size=1).embed(wavs, 16000), out
    )
    torch.testing.assert_close(embedder(torch.stack([wavs[0], wavs[0]]), 16000), out[[0, 0]])


def test_encoder_embedder_builds_from_a_spec_and_resamples():
    spec = {"name": "tests.evaluation.test_embedders:ChunkStatsEncoder", "frame": 8}
    embedder = EncoderAudioEmbedder(spec)
    assert isinstance(embedder.encoder, ChunkStatsEncoder) and embedder.encoder.frame == 8
    wav = _noise(800, 2)
    by_hand = EncoderAudioEmbedder(ChunkStatsEncoder(frame=8)).embed([resample(wav, 8000, 16000)], 16000)
    torch.testing.assert_close(embedder.embed([wav], 8000), by_hand)


def test_encoder_embedder_bad_input():
    embedder = EncoderAudioEmbedder(ChunkStatsEncoder(frame=4))
    with pytest.raises(ValueError, match="wavs is empty"):
        embedder.embed([], 16000)
    with pytest.raises(ValueError, match=r"wavs\[1\] contains NaN"):
        embedder.embed([_noise(8, 0), torch.tensor([0.0, float("nan"), 0.0, 0.0])], 16000)
    with pytest.raises(ValueError, match=r"wavs\[1\] is too short"):
        embedder.embed([_noise(8, 0), _noise(3, 1)], 16000)
    with pytest.raises(ValueError, match=r"wavs\[0\] must be floating point"):
        embedder.embed([torch.ones(8, dtype=torch.long)], 16000)
    with pytest.raises(TypeError, match="not an AudioEncoder"):
        EncoderAudioEmbedder("torch.nn.Identity")


def test_frechet_audio_distance_with_an_encoder_embedder():
    embedder = EncoderAudioEmbedder(ChunkStatsEncoder(frame=16))
    quiet = [_noise(1600 + 37 * i, i, 0.1) for i in range(6)]
    loud = [_noise(1600 + 37 * i, 100 + i, 0.5) for i in range(6)]
    assert frechet_audio_distance(quiet, quiet, embedder, 16000) == pytest.approx(0.0, abs=1e-9)
    near = frechet_audio_distance(quiet, [_noise(1600, 50 + i, 0.1) for i in range(6)], embedder, 16000)
    far = frechet_audio_distance(quiet, loud, embedder, 16000)
    assert far > 10 * near
    with pytest.raises(ValueError, match="wavs_b needs at least 2 waveforms"):
        frechet_audio_distance(quiet, loud[:1], embedder, 16000)
    with pytest.raises(TypeError, match="embedder must have an embed"):
        frechet_audio_distance(quiet, loud, object(), 16000)


def test_hashing_text_embedder_is_deterministic_and_normalised():
    emb = HashingTextEmbedder(dim=256)
    assert isinstance(emb, TextEmbedder)
    texts = [
        "A dog barks loudly.",
        "a DOG barks, loudly!",
        "A dog barks in the park.",
        "Slow piano music.",
        "",
    ]
    out = emb.embed(texts)
    assert out.shape == (5, 256)
    torch.testing.assert_close(out, HashingTextEmbedder(dim=256).embed(texts), rtol=0, atol=0)
    torch.testing.assert_close(out[:4].norm(dim=1), torch.ones(4))
    assert out[4].abs().sum() == 0  # nothing left after normalisation -> zero vector
    sims = cosine_similarity(out[[0, 0, 0]], out[[1, 2, 3]])
    assert sims[0] == pytest.approx(1.0)  # case and punctuation do not count
    assert sims[1] > sims[2] + 0.2  # a related caption is closer than an unrelated one
    assert not torch.equal(HashingTextEmbedder(dim=256, seed=1).embed(texts[:1]), out[:1])
    with pytest.raises(ValueError, match="ngram_range"):
        HashingTextEmbedder(ngram_range=(4, 2))
    with pytest.raises(TypeError, match=r"texts\[1\] must be a str"):
        emb.embed(["ok", None])


AUDIO_CONFIG = {
    "spec_size": 64, "num_mel_bins": 16, "window_size": 4, "patch_size": 2, "patch_stride": 2,
    "hidden_size": 32, "patch_embeds_hidden_size": 16, "depths": [1, 1], "num_attention_heads": [2, 2],
    "num_classes": 4, "projection_dim": 16, "enable_fusion": False,
}  # fmt: skip


@pytest.fixture(scope="module")
def clap_dir(tmp_path_factory, fast_tokenizer):
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel

    text = {"vocab_size": len(fast_tokenizer), "hidden_size": 16, "num_hidden_layers": 1,
            "num_attention_heads": 2, "intermediate_size": 32, "max_position_embeddings": 40,
            "projection_dim": 16}  # fmt: skip
    torch.manual_seed(0)
    model = ClapModel(ClapConfig(text_config=text, audio_config=AUDIO_CONFIG, projection_dim=16)).eval()
    extractor = ClapFeatureExtractor(
        feature_size=16, sampling_rate=16000, hop_length=160, fft_window_size=400, max_length_s=1,
        frequency_max=8000, truncation="rand_trunc", padding="repeatpad",
    )  # fmt: skip
    path = tmp_path_factory.mktemp("clap")
    model.save_pretrained(path)
    extractor.save_pretrained(path)
    fast_tokenizer.save_pretrained(path)
    return path, model, extractor


def test_clap_audio_embedder_round_trip(clap_dir):
    path, model, extractor = clap_dir
    embedder = ClapAudioEmbedder(path, batch_size=2)
    assert embedder.sample_rate == 16000 and embedder.dim == 16
    wavs = [_noise(16000, 0), _noise(9000, 1), _noise(20000, 2)]  # the last is cropped to 1 s
    out = embedder.embed(wavs, 16000)
    assert out.shape == (3, 16)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(embedder.embed(wavs, 16000), out, rtol=0, atol=0)  # deterministic
    inputs = extractor([w[:16000].numpy() for w in wavs], sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        ref = model.get_audio_features(**inputs)
    ref = ref if isinstance(ref, torch.Tensor) else ref.pooler_output
    torch.testing.assert_close(out, torch.nn.functional.normalize(ref, dim=-1), atol=1e-5, rtol=1e-4)
    resampled = embedder.embed([resample(wavs[0], 16000, 32000)], 32000)
    assert cosine_similarity(resampled, out[:1]).item() > 0.99


def test_clap_text_embedder_round_trip(clap_dir, fast_tokenizer):
    path, model, _ = clap_dir
    embedder = ClapTextEmbedder(path)
    texts = ["A dog barks loudly in a quiet park.", "Rain.", "Fast rock music with electric guitar " * 6]
    out = embedder.embed(texts)
    assert out.shape == (3, 16) and embedder.max_length == 40 - 1 - 1
    torch.testing.assert_close(out.norm(dim=1), torch.ones(3))
    one_by_one = torch.cat([embedder.embed([t]) for t in texts])
    torch.testing.assert_close(out, one_by_one, atol=1e-5, rtol=1e-4)  # padding does not matter
    inputs = fast_tokenizer(texts[:1], return_tensors="pt")
    with torch.no_grad():
        ref = model.get_text_features(**inputs)
    ref = ref if isinstance(ref, torch.Tensor) else ref.pooler_output
    torch.testing.assert_close(out[:1], torch.nn.functional.normalize(ref, dim=-1), atol=1e-5, rtol=1e-4)


def test_clap_missing_checkpoint_names_the_argument(tmp_path):
    with pytest.raises(ValueError, match="pretrained=.*cannot load the CLAP model offline"):
        ClapAudioEmbedder(tmp_path / "missing")
    with pytest.raises(TypeError, match="pretrained must be a local directory"):
        ClapTextEmbedder(None)
