"""The pure-torch log-mel front end against transformers' WhisperFeatureExtractor."""

import math

import numpy as np
import pytest
import torch

from bagpiper_lib.encoders.mel import LogMelSpectrogram, mel_filter_bank

SR = 16000


def _items(seed=0):
    rng = np.random.default_rng(seed)
    noise = (0.1 * rng.standard_normal(5000)).astype(np.float32)
    sine = (0.5 * np.sin(2 * np.pi * 440.0 * np.arange(8123) / SR)).astype(np.float32)
    chirp = (0.3 * np.sin(2 * np.pi * np.cumsum(np.linspace(100, 6000, 3210)) / SR)).astype(np.float32)
    shortest = rng.standard_normal(201).astype(np.float32)  # the least the reference accepts
    return [noise, sine, chirp, shortest]


def _batch(items):
    wav = torch.zeros(len(items), max(len(x) for x in items))
    for i, x in enumerate(items):
        wav[i, : len(x)] = torch.from_numpy(x)
    return wav, torch.tensor([len(x) for x in items])


def _reference(extractor, x):
    return extractor(x, sampling_rate=SR, padding="longest", return_tensors="np")["input_features"][0]


@pytest.mark.parametrize("n_mels", [80, 128])
def test_filter_bank_matches_transformers(n_mels):
    from transformers.audio_utils import mel_filter_bank as hf_mel_filter_bank

    ref = hf_mel_filter_bank(201, n_mels, 0.0, 8000.0, SR, norm="slaney", mel_scale="slaney")
    np.testing.assert_allclose(mel_filter_bank(201, n_mels, SR), ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("n_mels", [80, 128])
def test_matches_whisper_feature_extractor_alone_and_in_a_padded_batch(n_mels):
    from transformers import WhisperFeatureExtractor

    extractor = WhisperFeatureExtractor(feature_size=n_mels)
    mel = LogMelSpectrogram(n_mels)
    items = _items()
    wav, lengths = _batch(items)
    feats, frames = mel(wav, lengths)
    assert feats.shape == (len(items), n_mels, wav.shape[-1] // 160)
    assert feats.dtype == torch.float32
    assert frames.tolist() == [len(x) // 160 for x in items]
    for i, x in enumerate(items):
        ref = _reference(extractor, x)  # the item alone, not padded to 30 s: [n_mels, len // 160]
        assert ref.shape == (n_mels, int(frames[i]))
        np.testing.assert_allclose(feats[i, :, : frames[i]].numpy(), ref, rtol=0, atol=1e-4)
        assert (feats[i, :, frames[i] :] == 0).all()
        alone, alone_frames = mel(torch.from_numpy(x))
        assert alone_frames.tolist() == [frames[i]]
        torch.testing.assert_close(alone[0], feats[i, :, : frames[i]], rtol=0, atol=1e-6)


def test_whole_window_matches_max_length_padding():
    """Without lengths the whole input is valid: Whisper's padding to a fixed window."""
    from transformers import WhisperFeatureExtractor

    x = _items()[1]
    ref = WhisperFeatureExtractor(feature_size=80)(
        x, sampling_rate=SR, padding="max_length", max_length=16000, return_tensors="np"
    )["input_features"][0]
    feats, frames = LogMelSpectrogram(80)(torch.nn.functional.pad(torch.from_numpy(x), (0, 16000 - len(x))))
    assert frames.tolist() == [100] and ref.shape == (80, 100)
    np.testing.assert_allclose(feats[0].numpy(), ref, rtol=0, atol=1e-4)


def test_buffers_follow_the_module_and_stay_float32():
    mel = LogMelSpectrogram(80)
    assert not mel.state_dict()  # derived buffers are not weights
    wav = torch.from_numpy(_items()[0])
    expected, _ = mel(wav)
    mel.to(torch.bfloat16)
    assert mel.window.dtype == mel.filters.dtype == torch.float32
    torch.testing.assert_close(mel(wav.bfloat16())[0], mel(wav.bfloat16().float())[0], rtol=0, atol=0)
    torch.testing.assert_close(mel(wav)[0], expected, rtol=0, atol=0)
    if torch.cuda.is_available():
        mel.cuda()
        torch.testing.assert_close(mel(wav.cuda())[0].cpu(), expected, rtol=0, atol=1e-4)


def test_buffers_cast_behind_its_back_are_rebuilt_exactly():
    """FSDP mixed precision sets buffers to bf16 directly, not through ``Module._apply``: the frontend
    still computes with the exact float32 window and filter bank."""
    mel = LogMelSpectrogram(80)
    wav = torch.from_numpy(_items()[0])
    expected, _ = mel(wav)
    mel.window, mel.filters = mel.window.bfloat16(), mel.filters.bfloat16()
    torch.testing.assert_close(mel(wav)[0], expected, rtol=0, atol=0)


def test_bad_input_is_rejected_by_name():
    mel = LogMelSpectrogram(80)
    with pytest.raises(ValueError, match="at least n_fft // 2 \\+ 1 = 201"):
        mel(torch.randn(1, 300), torch.tensor([200]))
    with pytest.raises(ValueError, match="lengths"):
        mel(torch.randn(2, 300), torch.tensor([300, 301]))
    with pytest.raises(ValueError, match="wav must be a floating-point tensor"):
        mel(torch.zeros(1, 2, 300))
    with pytest.raises(ValueError, match="n_mels"):
        LogMelSpectrogram(0)
    with pytest.raises(ValueError, match="hop_length"):
        LogMelSpectrogram(80, hop_length=500)


# ------------------------------------------------------------------ MelEncoder
def test_mel_encoder_is_the_spectrum_with_an_affine_and_round_trips(tmp_path):
    from bagpiper_lib import encoders
    from bagpiper_lib.encoders.mel import MelEncoder

    enc = encoders.build({"name": "mel", "preset": "tiny"})
    assert isinstance(enc, MelEncoder) and enc.output_dim == 80 and enc.trainable
    wav = 0.1 * torch.randn(2, 12000, generator=torch.Generator().manual_seed(0))
    lengths = torch.tensor([12000, 7000])
    feats, frames = enc(wav, lengths)
    mel, mel_frames = LogMelSpectrogram(80)(wav, lengths)
    assert torch.equal(frames, mel_frames) and torch.equal(enc.num_frames(lengths), frames)
    torch.testing.assert_close(feats, mel.transpose(1, 2), rtol=0, atol=0)  # identity affine at init
    with torch.no_grad():
        enc.scale.mul_(2.0)
        enc.shift.add_(0.5)
    changed, _ = enc(wav, lengths)
    assert torch.allclose(changed[0], 2 * mel.transpose(1, 2)[0] + 0.5)
    assert changed[1, int(frames[1]) :].abs().sum() == 0  # frames past an item's end stay zero
    again = encoders.build({"name": "mel", "pretrained": str(enc.save_pretrained(tmp_path / "mel"))})
    assert torch.equal(again(wav, lengths)[0], changed)
    with pytest.raises(FileNotFoundError, match="not a directory with config.json"):
        MelEncoder(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="exceeds max_seconds=0.5"):
        MelEncoder(max_seconds=0.5)(torch.zeros(1, 9000))


def test_mel_encoder_feeds_the_model_through_a_stacking_adaptor():
    from bagpiper_lib.model import PRESETS, BagpiperModel
    from bagpiper_lib.sequence import pack
    from bagpiper_lib.sequence.messages import Message

    cfg = {
        **PRESETS["tiny"],
        "encoder": {"name": "mel", "preset": "tiny"},
        "adaptor": {"name": "mlp", "downsample": 4},
    }
    model = BagpiperModel.from_config(cfg)
    wav = 0.1 * torch.randn(16000, generator=torch.Generator().manual_seed(1))
    sample = model.builder.build(
        [Message("user", "audio_in", wav, sample_rate=16000), Message("assistant", "text", "a tone")]
    )
    assert sample.audio_in[0].length == 16000 // 160 // 4  # 100 mel frames per second, stacked by 4
    out = model(pack([sample], budget=128, pad_ids=model._stream_pads))
    out.loss.backward()
    assert model.encoder.scale.grad is not None and model.encoder.scale.grad.abs().sum() > 0


def test_mel_encoder_window_is_configurable_and_saved(tmp_path):
    from bagpiper_lib.encoders.mel import MelEncoder

    enc = MelEncoder(n_mels=64, n_fft=1024)
    wav = 0.1 * torch.randn(1, 16000, generator=torch.Generator().manual_seed(1))
    feats, frames = enc(wav)
    mel, _ = LogMelSpectrogram(64, n_fft=1024)(wav)
    assert int(frames) == 100 and feats.shape == (1, 100, 64)  # the hop, not the window, sets the rate
    torch.testing.assert_close(feats, mel.transpose(1, 2), rtol=0, atol=0)
    assert not torch.allclose(feats, MelEncoder(n_mels=64)(wav)[0])  # the 400-sample window differs
    again = MelEncoder(enc.save_pretrained(tmp_path / "mel"))
    assert again.mel.n_fft == 1024 and torch.equal(again(wav)[0], feats)


def test_frame_energy_reads_the_level_whatever_the_spectrum():
    """A tone and noise at the same RMS read the same frame energy; each item as if featurised alone."""
    mel = LogMelSpectrogram(128, n_fft=1024)
    t = torch.arange(16000) / 16000
    noise = torch.randn(16000, generator=torch.Generator().manual_seed(3))
    for rms_db in (-6.0, -30.0):
        rms = 10 ** (rms_db / 20)
        tone = rms * math.sqrt(2) * torch.sin(2 * math.pi * 440 * t)
        hiss = rms * noise / noise.pow(2).mean().sqrt()
        for wav in (tone, hiss):
            feats, frames, energy = mel(wav[None], with_energy=True)
            assert torch.equal(feats, mel(wav[None])[0])  # the mel bins do not change
            read_db = 10 * (4 * energy[0, 10:90] - 4)  # undo (x + 4) / 4, log10 power -> dB
            assert read_db.mean().item() == pytest.approx(rms_db, abs=0.1)
    batch = torch.stack([tone, torch.cat([hiss[:9000], torch.zeros(7000)])])
    lengths = torch.tensor([16000, 9000])
    _, frames, energy = mel(batch, lengths, with_energy=True)
    _, _, alone = mel(hiss[None, :9000], with_energy=True)
    torch.testing.assert_close(energy[1, : int(frames[1])], alone[0], rtol=0, atol=1e-5)
    assert energy[1, int(frames[1]) :].abs().sum() == 0


def test_mel_encoder_log_energy_feature_is_appended_and_saved(tmp_path):
    from bagpiper_lib.encoders.mel import MelEncoder

    enc = MelEncoder(n_mels=64, log_energy=True)
    assert enc.output_dim == 65 and enc.scale.shape == (65,)
    wav = 0.1 * torch.randn(1, 16000, generator=torch.Generator().manual_seed(1))
    feats, _ = enc(wav)
    mel, _, energy = LogMelSpectrogram(64)(wav, with_energy=True)
    torch.testing.assert_close(feats, torch.cat([mel, energy[:, None]], 1).transpose(1, 2), rtol=0, atol=0)
    again = MelEncoder(enc.save_pretrained(tmp_path / "mel"))
    assert again.log_energy and again.output_dim == 65 and torch.equal(again(wav)[0], feats)
    plain = MelEncoder(MelEncoder(n_mels=64).save_pretrained(tmp_path / "plain"))
    assert not plain.log_energy and plain.output_dim == 64


def _tone_bursts(period: float, gain: float = 0.3, seconds: float = 2.0) -> torch.Tensor:
    """Piano-like notes (5 ms attack, exponential decay) every ``period`` s, alternating two pitches."""
    n, note = int(seconds * SR), int(period * SR)
    t = torch.arange(note) / SR
    envelope = torch.clamp(t / 0.005, max=1.0) * torch.exp(-6.0 * t)
    wav = torch.zeros(n)
    for i, start in enumerate(range(int(0.1 * SR), n - note + 1, note)):
        freq = (330.0, 440.0)[i % 2]
        wav[start : start + note] = gain * envelope * torch.sin(2 * math.pi * freq * t)
    return wav


def test_onset_strength_peaks_at_onsets_counts_them_and_ignores_gain():
    from bagpiper_lib.encoders.mel import onset_strength

    mel = LogMelSpectrogram(128, n_fft=1024)
    feats, frames = mel(_tone_bursts(0.25)[None])
    flux = onset_strength(feats, frames)[0]
    assert flux.shape == (int(frames[0]),) and flux[0] == 0 and (flux >= 0).all()
    peaks = [int(flux[t - 3 : t + 4].argmax()) + t - 3 for t in range(10, 190, 25)]  # onsets every 25 frames
    assert all(abs(p - t) <= 2 for p, t in zip(peaks, range(10, 190, 25))), peaks
    between = torch.cat([flux[t + 5 : t + 20] for t in range(10, 170, 25)])
    assert between.max() < 0.2 * flux[peaks].min()  # a decaying note adds nothing after its attack
    # the clip's sum counts onsets: 7 notes (0.25 s apart) against 3 (0.5 s apart) in 2 s
    slow = onset_strength(*mel(_tone_bursts(0.5)[None]))[0]
    assert (flux.sum() / 7) / (slow.sum() / 3) == pytest.approx(1.0, rel=0.25)
    assert flux.mean() > 2 * slow.mean()
    # log features: 12 dB quieter reads the same
    quiet = onset_strength(*mel(_tone_bursts(0.25, gain=0.075)[None]))[0]
    torch.testing.assert_close(quiet, flux, rtol=0, atol=1e-4)


def test_mel_encoder_onset_feature_is_appended_padded_and_saved(tmp_path):
    from bagpiper_lib.encoders.mel import MelEncoder, onset_strength

    enc = MelEncoder(n_mels=64, log_energy=True, onset_strength=True)
    assert enc.output_dim == 66 and enc.scale.shape == (66,)
    wav = _tone_bursts(0.3)[None]
    feats, _ = enc(wav)
    mel, frames, energy = LogMelSpectrogram(64)(wav, with_energy=True)
    expected = torch.cat([mel, energy[:, None], onset_strength(mel, frames)[:, None]], 1).transpose(1, 2)
    torch.testing.assert_close(feats, expected, rtol=0, atol=0)
    batch = torch.stack([wav[0], torch.cat([wav[0, :20000], torch.zeros(12000)])])
    padded, lengths = enc(batch, torch.tensor([32000, 20000]))
    alone, _ = enc(wav[:, :20000])
    torch.testing.assert_close(padded[1, : int(lengths[1])], alone[0], rtol=0, atol=1e-5)
    assert padded[1, int(lengths[1]) :].abs().sum() == 0
    again = MelEncoder(enc.save_pretrained(tmp_path / "mel"))
    assert again.onset_strength and again.output_dim == 66 and torch.equal(again(wav)[0], feats)
    assert MelEncoder(n_mels=64, onset_strength=True).output_dim == 65


def _harmonic(midi: float, gain: float = 0.3, seconds: float = 1.0) -> torch.Tensor:
    """A tone of 7 harmonics (amplitudes 1/k) at MIDI pitch ``midi``."""
    t = torch.arange(int(seconds * SR), dtype=torch.float64) / SR
    f0 = 440.0 * 2.0 ** ((midi - 69) / 12)
    return sum(gain / k * torch.sin(2 * math.pi * k * f0 * t) for k in range(1, 8)).float()


def _mean_chroma(wav: torch.Tensor, mel: LogMelSpectrogram) -> torch.Tensor:
    _, frames, chroma = mel(wav[None], with_chroma=True)
    return chroma[0, :, 5 : int(frames[0]) - 5].mean(dim=-1)


def test_chroma_filter_bank_folds_each_resolved_bin_onto_its_pitch_class():
    from bagpiper_lib.encoders.mel import chroma_filter_bank

    bank = chroma_filter_bank(1024, SR)
    freqs = np.arange(513) * SR / 1024
    assert bank.shape == (12, 513)
    # bins closer than a semitone start at 15.625 / (2 ** (1 / 12) - 1) = 262.3 Hz; none above 5 kHz
    used = bank.any(axis=0)
    assert freqs[used].min() == pytest.approx(265.6, abs=0.1) and freqs[used].max() <= 5000.0
    pitch = 69 + 12 * np.log2(freqs[used] / 440.0)
    assert (bank[:, used].argmax(axis=0) == np.round(pitch).astype(int) % 12).all()
    assert bank[9, 28] == pytest.approx(np.exp(-0.5 * ((69 + 12 * np.log2(437.5 / 440) - 69) / 0.5) ** 2))


def test_chroma_reads_the_pitch_class_in_every_octave_whatever_the_gain():
    from bagpiper_lib.encoders.mel import PITCH_CLASSES

    mel = LogMelSpectrogram(128, n_fft=1024)
    for midi in (48, 60, 72, 57, 69, 64):  # C3, C4 (fundamental below the resolved bins), C5, A3, A4, E4
        chroma = _mean_chroma(_harmonic(midi), mel)
        assert PITCH_CLASSES[int(chroma.argmax())] == PITCH_CLASSES[midi % 12]
        assert chroma.max() == pytest.approx(1.0)
        assert (chroma >= 0).all()
    loud = _mean_chroma(_harmonic(62, gain=0.5), mel)
    torch.testing.assert_close(_mean_chroma(_harmonic(62, gain=0.03), mel), loud, rtol=0, atol=1e-4)
    # the third tells the mode apart: E in C major, E flat in C minor
    major = _mean_chroma(_harmonic(48) + _harmonic(52) + _harmonic(55), mel)
    minor = _mean_chroma(_harmonic(48) + _harmonic(51) + _harmonic(55), mel)
    assert major[4] > 2 * major[3] and minor[3] > 2 * minor[4]


def test_chroma_is_zero_for_silence_and_past_the_end_and_batch_items_read_alone():
    mel = LogMelSpectrogram(128, n_fft=1024)
    tone = _harmonic(57)
    gap = torch.cat([tone[:8000], torch.zeros(8000), tone[:8000]])
    batch = torch.stack([gap, torch.cat([tone[:12000], torch.zeros(12000)])])
    _, frames, chroma = mel(batch, torch.tensor([24000, 12000]), with_chroma=True)
    assert chroma.shape == (2, 12, 150)
    assert chroma[0, :, 60:90].abs().sum() == 0  # 60 dB under the notes: no pitch class
    assert chroma[0, :, 10:40].amax(dim=0).min() == 1.0 and chroma[0, :, 110:140].amax(dim=0).min() == 1.0
    assert chroma[1, :, int(frames[1]) :].abs().sum() == 0
    _, _, alone = mel(tone[None, :12000], with_chroma=True)
    torch.testing.assert_close(chroma[1, :, : int(frames[1])], alone[0], rtol=0, atol=1e-5)
    # both extras at once: energy first, then chroma
    _, _, energy, both = mel(batch, torch.tensor([24000, 12000]), with_energy=True, with_chroma=True)
    assert energy.shape == (2, 150)
    torch.testing.assert_close(both, chroma, rtol=0, atol=0)


def test_mel_encoder_chroma_is_appended_last_and_saved(tmp_path):
    from bagpiper_lib.encoders.mel import MelEncoder

    enc = MelEncoder(n_mels=64, n_fft=1024, log_energy=True, onset_strength=True, chroma=True)
    assert enc.output_dim == 64 + 1 + 1 + 12 and enc.scale.shape == (78,)
    wav = _harmonic(60)[None]
    feats, _ = enc(wav)
    mel, _, chroma = LogMelSpectrogram(64, n_fft=1024)(wav, with_chroma=True)
    torch.testing.assert_close(feats[..., 66:], chroma.transpose(1, 2), rtol=0, atol=0)
    torch.testing.assert_close(feats[..., :64], mel.transpose(1, 2), rtol=0, atol=0)
    again = MelEncoder(enc.save_pretrained(tmp_path / "mel"))
    assert again.chroma and again.output_dim == 78 and torch.equal(again(wav)[0], feats)
    assert not MelEncoder(MelEncoder(n_mels=64).save_pretrained(tmp_path / "plain")).chroma
    # the encoder's shortest window (n_fft = hop = 160) still resolves semitones from 1.7 kHz up
    assert MelEncoder(n_mels=8, n_fft=160, chroma=True).mel.resolves_pitch_classes
    with pytest.raises(ValueError, match="n_fft=32 at 16000 Hz resolves no semitone"):
        LogMelSpectrogram(8, n_fft=32, hop_length=16)(torch.randn(1, 1000), with_chroma=True)


def test_tempogram_peaks_at_the_beat_period_and_its_multiples():
    from bagpiper_lib.encoders.mel import TEMPOGRAM_LAGS, onset_strength, tempogram

    mel = LogMelSpectrogram(128, n_fft=1024)
    lags = list(TEMPOGRAM_LAGS)
    for period in (0.2, 0.25, 1 / 3, 0.5):  # eighth notes at 150, 120, 90 and 60 BPM
        feats, frames = mel(_tone_bursts(period)[None])
        gram = tempogram(onset_strength(feats, frames), frames)[0]  # [L, T]
        assert gram.shape == (len(lags), int(frames[0]))
        middle = gram[:, 100]  # +-1 s around the middle of the 2 s clip
        beat = round(period * 100)
        best = lags[int(middle.argmax())]
        assert any(abs(best - k * beat) <= 1 for k in (1, 2, 3)), (period, best)
        # the beat's own lag reads far above the lags between beats
        at_beat = middle[beat - 1 - lags[0] : beat + 2 - lags[0]].max()
        off_beat = middle[round(0.5 * beat) - lags[0]]
        assert at_beat > 0.3 and at_beat > 4 * off_beat, (period, at_beat, off_beat)
    # log features: the gain does not matter
    loud = tempogram(onset_strength(*mel(_tone_bursts(0.25)[None])), mel(_tone_bursts(0.25)[None])[1])
    feats, frames = mel(_tone_bursts(0.25, gain=0.075)[None])
    torch.testing.assert_close(tempogram(onset_strength(feats, frames), frames), loud, rtol=0, atol=2e-3)


def test_tempogram_reads_only_the_window_and_is_zero_without_onsets_or_past_the_end():
    from bagpiper_lib.encoders.mel import tempogram

    flux = torch.zeros(2, 400)
    flux[0, 0:200:20] = 1.0  # a pulse every 20 frames in the first 2 s, then one every 40
    flux[0, 200:400:40] = 1.0
    gram = tempogram(flux, torch.tensor([400, 150]))
    assert int(gram[0, :, 80].argmax()) + 10 == 20 and int(gram[0, :, 330].argmax()) + 10 == 40
    assert gram[0, 20 - 10, 80] == pytest.approx(1.0, abs=1e-6)  # every onset in 0..180 recurs 20 later
    # onsets 240, 280, 320, 360 in 230..399: the last one's partner would be past the end
    assert gram[0, 40 - 10, 330] == pytest.approx(0.75, abs=1e-6)
    assert gram[1].abs().sum() == 0  # no onsets at all
    flux[1, :300:25] = 1.0  # onsets past the item's 150 valid frames are ignored, and it reads 0 there
    gram = tempogram(flux, torch.tensor([400, 150]))
    assert gram[1, :, 150:].abs().sum() == 0
    alone = tempogram(flux[1:, :150], torch.tensor([150]))
    torch.testing.assert_close(gram[1, :, :150], alone[0], rtol=0, atol=0)


def test_key_profile_names_the_key_and_mode_of_a_triad_and_a_scale():
    from bagpiper_lib.encoders.mel import KEY_PROFILES, key_profile

    mel = LogMelSpectrogram(128, n_fft=1024)

    def key_of(wav):
        _, frames, chroma = mel(wav[None], with_chroma=True)
        corr = key_profile(chroma, frames)[0]  # [24, T]
        assert corr.shape == (24, int(frames[0])) and corr.abs().max() <= 1.0 + 1e-5
        row = int(corr[:, int(frames[0]) // 2].argmax())
        return row % 12, ("major", "minor")[row // 12]

    def tones(tonic, steps):
        return torch.cat([_harmonic(tonic + s, seconds=0.2) for s in steps])

    major, minor = (0, 2, 4, 5, 7, 9, 11, 12), (0, 2, 3, 5, 7, 8, 10, 12)
    # ascending scales: C major and A minor share their pitch classes; the tonic's weight tells them apart
    assert key_of(tones(60, major)) == (0, "major") and key_of(tones(57, minor)) == (9, "minor")
    assert key_of(tones(62, major)) == (2, "major") and key_of(tones(55, minor)) == (7, "minor")
    # tonic arpeggios (1 3 5 8 5 3 1): the third alone tells the mode
    assert key_of(tones(62, (0, 4, 7, 12, 7, 4, 0))) == (2, "major")
    assert key_of(tones(62, (0, 3, 7, 12, 7, 3, 0))) == (2, "minor")
    # the C major profile against its own pitch classes reads exactly its Pearson correlation
    chroma = torch.tensor(KEY_PROFILES["major"])[None, :, None].expand(1, 12, 5)
    corr = key_profile(chroma, torch.tensor([5]))
    assert corr[0, 0].tolist() == pytest.approx([1.0] * 5, abs=1e-6)
    a_minor = np.corrcoef(KEY_PROFILES["major"], np.roll(KEY_PROFILES["minor"], 9))[0, 1]
    assert corr[0, 21, 0].item() == pytest.approx(a_minor, abs=1e-6)


def test_key_profile_is_zero_without_pitch_and_past_the_end():
    from bagpiper_lib.encoders.mel import key_profile

    chroma = torch.zeros(2, 12, 300)
    chroma[0, [0, 4, 7], :] = 1.0
    chroma[1, [0, 4, 7], :] = 1.0
    chroma[1, [1, 5, 8], 100:] = 5.0  # past the second item's end: ignored
    corr = key_profile(chroma, torch.tensor([300, 100]))
    assert corr[1, :, 100:].abs().sum() == 0
    torch.testing.assert_close(corr[1, :, :100], corr[0, :, :100], rtol=0, atol=1e-6)
    assert key_profile(torch.zeros(1, 12, 50), torch.tensor([50])).abs().sum() == 0


def test_peak_energy_is_the_loudest_frame_in_the_window_and_zero_past_the_end():
    from bagpiper_lib.encoders.mel import peak_energy

    energy = torch.zeros(2, 400)
    energy[0, 50], energy[0, 300] = 0.9, 0.4
    energy[1, 10], energy[1, 250] = 0.3, 0.8  # frame 250 lies past the second item's 200 frames
    peak = peak_energy(energy, torch.tensor([400, 200]))
    assert (peak[0, :151] == 0.9).all() and (peak[0, 151:200] == 0).all() and (peak[0, 200:] == 0.4).all()
    assert (peak[1, :111] == 0.3).all() and (peak[1, 111:] == 0).all()
    # a short loud click reads in every frame of a second around it, whatever its length
    mel = LogMelSpectrogram(64, n_fft=1024)
    click = torch.zeros(48000)
    click[24000:24160] = 0.5 * torch.randn(160, generator=torch.Generator().manual_seed(0))  # frame 150
    _, frames, level = mel(click[None], with_energy=True)
    around = peak_energy(level, frames)[0]
    assert around[52:249].min() == level[0].max()
    assert around[:45].max() < level[0].max() and around[256:].max() < level[0].max()


def test_mel_encoder_tempogram_key_profile_and_peak_energy_are_appended_last_and_saved(tmp_path):
    from bagpiper_lib.encoders.mel import (
        KEY_TEMPERATURE,
        MelEncoder,
        key_profile,
        onset_strength,
        peak_energy,
        tempogram,
    )

    enc = MelEncoder(
        n_mels=64,
        n_fft=1024,
        log_energy=True,
        chroma=True,
        tempogram=True,
        key_profile=True,
        peak_energy=True,
    )
    assert enc.output_dim == 64 + 1 + 12 + 55 + 24 + 1 and enc.scale.shape == (157,)
    wav = (_tone_bursts(0.25) + 0.5 * _harmonic(60, seconds=2.0))[None]
    feats, _ = enc(wav)
    mel, frames, energy, chroma = LogMelSpectrogram(64, n_fft=1024)(wav, with_energy=True, with_chroma=True)
    torch.testing.assert_close(
        feats[..., 77:132], tempogram(onset_strength(mel, frames), frames).transpose(1, 2)
    )
    keys = key_profile(chroma, frames, temperature=KEY_TEMPERATURE)
    torch.testing.assert_close(feats[..., 132:156], keys.transpose(1, 2))
    torch.testing.assert_close(keys.sum(dim=1), torch.ones(1, int(frames[0])))  # a distribution over keys
    assert int(keys[0, :, 100].argmax()) == 0  # C major
    torch.testing.assert_close(feats[..., 156], peak_energy(energy, frames))
    again = MelEncoder(enc.save_pretrained(tmp_path / "mel"))
    assert again.tempogram and again.key_profile and again.peak_energy and again.output_dim == 157
    assert torch.equal(again(wav)[0], feats)
    # a padded batch item reads as if alone
    batch = torch.stack([wav[0], torch.cat([wav[0, :20000], torch.zeros(12000)])])
    padded, lengths = enc(batch, torch.tensor([32000, 20000]))
    alone, _ = enc(wav[:, :20000])
    torch.testing.assert_close(padded[1, : int(lengths[1])], alone[0], rtol=0, atol=1e-5)
    assert MelEncoder(n_mels=64, n_fft=1024, key_profile=True).output_dim == 88
    assert MelEncoder(n_mels=64, peak_energy=True).output_dim == 65


def test_standardize_gives_zero_mean_unit_variance_and_only_centres_constant_dimensions():
    from bagpiper_lib.audio import resample
    from bagpiper_lib.encoders.mel import MelEncoder

    enc = MelEncoder(n_mels=32, n_fft=1024, log_energy=True, tempogram=True, key_profile=True)
    clips = [_tone_bursts(p, gain=g) for p, g in ((0.2, 0.3), (0.25, 0.05), (0.5, 0.2))]
    clips += [_harmonic(m, seconds=1.3) for m in (57, 62, 69)]
    mean, std = enc.standardize(clips, batch_size=4)  # two batches of unequal lengths
    feats = torch.cat([enc(c)[0][0] for c in clips]).double()  # every frame of every clip
    varied = std >= 1e-3
    assert varied.sum() > 100 and (~varied).any()  # some tempogram lags never see a pulse
    torch.testing.assert_close(feats.mean(0), torch.zeros_like(mean), rtol=0, atol=1e-5)
    torch.testing.assert_close(
        feats[:, varied].std(0, unbiased=False),
        torch.ones(int(varied.sum()), dtype=torch.float64),
        rtol=0,
        atol=1e-4,
    )
    assert (enc.scale.detach()[~varied] == 1).all()
    # the statistics are those of the frames: recomputed from the raw features
    raw = torch.cat([enc._features(c[None], torch.tensor([c.shape[0]]))[0][0] for c in clips]).double()
    torch.testing.assert_close(mean, raw.mean(0), rtol=0, atol=1e-6)
    torch.testing.assert_close(std, raw.std(0, unbiased=False), rtol=0, atol=1e-6)
    # clips at another rate are resampled first
    other = MelEncoder(n_mels=32, n_fft=1024, log_energy=True, tempogram=True, key_profile=True)
    low = [resample(c, SR, 8000) for c in clips]
    again, _ = other.standardize(low, sample_rate=8000)
    expected, _ = MelEncoder(
        n_mels=32, n_fft=1024, log_energy=True, tempogram=True, key_profile=True
    ).standardize([resample(c, 8000, SR) for c in low])
    torch.testing.assert_close(again, expected, rtol=0, atol=1e-3)  # the batch is resampled padded
    with pytest.raises(ValueError, match="standardize needs at least one clip"):
        enc.standardize([])
    with pytest.raises(ValueError, match=r"clips must be 1-D waveforms \[N\]; clip 1 is not"):
        enc.standardize([clips[0], clips[1][None]])


def test_chroma_n_fft_reads_low_notes_by_their_fundamental_and_is_saved(tmp_path):
    from bagpiper_lib.encoders.mel import PITCH_CLASSES, MelEncoder

    t = torch.arange(SR) / SR
    low_d = (0.3 * torch.sin(2 * math.pi * 146.83 * t))[None]  # D3, a pure tone: no partials above it
    short = MelEncoder(n_mels=64, n_fft=1024, chroma=True)
    long = MelEncoder(n_mels=64, n_fft=1024, chroma=True, chroma_n_fft=2048)
    assert short.output_dim == long.output_dim == 76
    # 1024 samples resolve semitones only above 262 Hz: what they read is the window's leakage into the
    # lowest resolved bins (C4 at 265.6 Hz), not the tone's D
    misread = short(low_d)[0][0, 10:-10, 64:]
    assert {PITCH_CLASSES[int(i)] for i in misread.argmax(dim=1)} == {"C"}
    chroma = long(low_d)[0][0, 10:-10, 64:]
    assert {PITCH_CLASSES[int(i)] for i in chroma.argmax(dim=1)} == {"D"}
    # the mel bins keep the 1024-sample window
    torch.testing.assert_close(long(low_d)[0][..., :64], short(low_d)[0][..., :64], rtol=0, atol=0)
    expected = LogMelSpectrogram(1, n_fft=2048)(low_d, with_chroma=True)[2]
    torch.testing.assert_close(long(low_d)[0][..., 64:], expected.transpose(1, 2), rtol=0, atol=0)
    again = MelEncoder(long.save_pretrained(tmp_path / "mel"))
    assert again.chroma_n_fft == 2048 and torch.equal(again(low_d)[0], long(low_d)[0])
    assert MelEncoder(n_mels=8, chroma_n_fft=400).chroma_stft is None  # the mel window already
    for bad in (100, True, 512.0):
        with pytest.raises(ValueError, match="chroma_n_fft must be an integer >= 160"):
            MelEncoder(n_mels=8, chroma=True, chroma_n_fft=bad)


def test_opening_chroma_averages_the_first_loud_frames_of_each_item():
    from bagpiper_lib.encoders.mel import opening_chroma

    chroma = torch.zeros(2, 12, 60)
    energy = torch.full((2, 60), -2.0)  # silence on the features' scale
    energy[:, 10:20] = 0.2  # a faint lead-in, more than 30 dB (0.75) under the loudest: not the opening
    energy[:, 20:] = 1.0
    chroma[:, 0, 10:20] = 1.0  # the lead-in's C does not count
    chroma[:, 9, 20:35] = 1.0  # A for the 15 frames from where the sound begins
    chroma[:, 4, 35:] = 1.0  # then E
    chroma[:, 7, 30:35] = 0.5  # G beside A in the opening's last five frames
    frames = torch.tensor([60, 25])
    energy[1, 25:] = 9.0  # louder than anything, but past the second item's 25 frames: ignored
    opening = opening_chroma(chroma, energy, frames)
    expected = torch.zeros(2, 12)
    expected[0, 9], expected[0, 7] = 1.0, 0.5 * 5 / 15
    expected[1, 9] = 1.0  # frames 20-24 only: the item ends there
    torch.testing.assert_close(opening, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(opening_chroma(chroma, energy, frames, span=5)[0], torch.eye(12)[9])
    # within 30 dB of the loudest counts: the lead-in at 0.3 is where the sound begins
    energy[0, 10:20] = 0.3
    torch.testing.assert_close(opening_chroma(chroma, energy, frames, span=10)[0], torch.eye(12)[0])
    for bad in (0, True, 2.5):
        with pytest.raises(ValueError, match="span must be a positive number of frames"):
            opening_chroma(chroma, energy, frames, span=bad)


def test_key_profile_opening_tells_a_major_key_from_its_relative_minor():
    from bagpiper_lib.encoders.mel import KEY_PROFILES, key_profile

    chroma = torch.zeros(1, 12, 40)
    chroma[0, [0, 2, 4, 5, 7, 9, 11]] = 1.0  # the white keys: C major and A minor alike
    frames = torch.tensor([40])
    plain = key_profile(chroma, frames)
    on_a, on_c = (
        key_profile(chroma, frames, opening=torch.eye(12)[[9]]),
        key_profile(chroma, frames, opening=torch.eye(12)[[0]]),
    )
    assert int(on_a[0, :, 20].argmax()) == 12 + 9 and int(on_c[0, :, 20].argmax()) == 0  # A minor, C major
    # exactly the passage's correlations plus opening_weight times the opening's own (Pearson)
    a_as = [
        np.corrcoef(np.eye(12)[9], np.roll(KEY_PROFILES[m], k))[0, 1]
        for m in ("major", "minor")
        for k in range(12)
    ]
    torch.testing.assert_close(
        key_profile(chroma, frames, opening=torch.eye(12)[[9]], opening_weight=2.0),
        plain + 2.0 * torch.tensor(a_as, dtype=torch.float32)[None, :, None],
        rtol=0,
        atol=1e-5,
    )
    # an opening without pitch adds nothing; frames without pitch still read 0
    torch.testing.assert_close(key_profile(chroma, frames, opening=torch.zeros(1, 12)), plain)
    chroma[0, :, 30:] = 0.0
    torch.testing.assert_close(
        key_profile(chroma, frames, half=2, opening=torch.eye(12)[[9]])[0, :, 33:], torch.zeros(24, 7)
    )
    with pytest.raises(ValueError, match=r"opening must be \[B, 12\] = \[1, 12\] pitch classes"):
        key_profile(chroma, frames, opening=torch.zeros(12))


def test_mel_encoder_key_opening_weight_finds_the_key_of_short_melodies_and_is_saved(tmp_path):
    from bagpiper_lib.data.synthetic import generate
    from bagpiper_lib.encoders.mel import (
        KEY_TEMPERATURE,
        PITCH_CLASSES,
        MelEncoder,
        key_profile,
        opening_chroma,
    )

    enc = MelEncoder(n_mels=16, n_fft=1024, key_profile=True, chroma_n_fft=2048, key_opening_weight=0.5)
    assert enc.output_dim == 16 + 24  # the energy it reads is not appended
    wav = torch.cat([_harmonic(m, seconds=0.25) for m in (57, 60, 64, 62, 60, 59)])[None]  # A C E D C B
    feats, _ = enc(wav)
    _, frames, energy = LogMelSpectrogram(16, n_fft=1024)(wav, with_energy=True)
    chroma = LogMelSpectrogram(1, n_fft=2048)(wav, with_chroma=True)[2]
    expected = key_profile(
        chroma,
        frames,
        temperature=KEY_TEMPERATURE,
        opening=opening_chroma(chroma, energy, frames),
        opening_weight=0.5,
    )
    torch.testing.assert_close(feats[..., 16:], expected.transpose(1, 2))
    again = MelEncoder(enc.save_pretrained(tmp_path / "mel"))
    assert again.key_opening_weight == 0.5 and torch.equal(again(wav)[0], feats)
    batch = torch.stack([wav[0], torch.cat([wav[0, :14000], torch.zeros(10000)])])
    padded, lengths = enc(batch, torch.tensor([24000, 14000]))
    torch.testing.assert_close(padded[1, : int(lengths[1])], enc(wav[:, :14000])[0][0], rtol=0, atol=1e-5)
    # 60 held-out synthetic music clips (each opens on its tonic): the clip's mean key distribution
    clips = generate(
        60, seed=3, categories=["music"], duration=(1.0, 1.5), mixture_fraction=0.0, split="test"
    )

    def right(weight):
        model = MelEncoder(
            n_mels=16, n_fft=1024, key_profile=True, chroma_n_fft=2048, key_opening_weight=weight
        )
        keys = modes = 0
        for clip in clips:
            row = int(model(torch.as_tensor(clip.audio, dtype=torch.float32))[0][0, :, 16:].mean(0).argmax())
            keys += PITCH_CLASSES[row % 12] == clip.params["key"]
            modes += ("major", "minor")[row // 12] == clip.params["mode"]
        return keys, modes

    (keys, modes), (keys_before, modes_before) = right(0.5), right(0.0)
    assert keys >= 52 and keys >= keys_before + 6 and modes >= modes_before
    for bad in (-0.5, float("nan"), True, "0.5"):
        with pytest.raises(ValueError, match="key_opening_weight must be a finite number >= 0"):
            MelEncoder(n_mels=16, n_fft=1024, key_profile=True, key_opening_weight=bad)
    with pytest.raises(ValueError, match="set key_profile: true as well"):
        MelEncoder(n_mels=16, n_fft=1024, key_opening_weight=0.5)


def test_mel_encoder_key_mode_is_the_major_and_minor_mass_and_is_saved(tmp_path):
    from bagpiper_lib.encoders.mel import MelEncoder

    enc = MelEncoder(n_mels=16, n_fft=1024, key_profile=True, peak_energy=True, key_mode=True)
    assert enc.output_dim == 16 + 24 + 1 + 2  # after the peak energy
    silence = torch.zeros(8000)  # 0.5 s without pitch before the notes
    a_c_e = [_harmonic(m, seconds=0.25) for m in (57, 60, 64, 60, 57)]
    c_e_g = [_harmonic(m, seconds=0.25) for m in (60, 64, 67, 64, 60)]
    minor, major = torch.cat([silence, *a_c_e])[None], torch.cat([silence, *c_e_g])[None]
    for wav, column, least in ((minor, 1, 0.75), (major, 0, 0.6)):
        feats = enc(wav)[0][0]
        keys, mode = feats[:, 16:40], feats[:, 41:43]
        torch.testing.assert_close(mode, torch.stack([keys[:, :12].sum(1), keys[:, 12:].sum(1)], dim=1))
        torch.testing.assert_close(mode.sum(1), torch.ones(len(mode)))  # every frame's window has pitch
        # where the +-1 s window holds the whole arpeggio: minor / major
        assert mode[80:150, column].min() > least
    # a clip without pitch reads 0 for both modes: undecided, not one of them
    assert MelEncoder(n_mels=16, key_profile=True, key_mode=True)(silence)[0][0, :, -2:].abs().max() == 0
    again = MelEncoder(enc.save_pretrained(tmp_path / "mel"))
    assert again.key_mode and torch.equal(again(minor)[0], enc(minor)[0])
    with pytest.raises(
        ValueError, match="key_mode reads the key profile's distribution; set key_profile: true"
    ):
        MelEncoder(n_mels=16, key_mode=True)


def test_event_starts_marks_each_rise_once_and_ignores_wobble_and_padding():
    from bagpiper_lib.encoders.mel import event_starts

    energy = torch.zeros(
        2, 100
    )  # background at 0; events at 1 (40 dB above): threshold 0.5, reset under 0.35
    energy[:, 10:20] = 1.0
    energy[:, 30:32] = 1.0  # a short event counts as one
    energy[:, 50:70] = 1.0
    energy[:, 58:60] = 0.4  # a wobble 24 dB down, above the reset level: the same event
    energy[:, 80:84] = 1.0
    energy[:, 84:86] = 0.3  # under the reset level: the next rise is a new event
    energy[:, 86:90] = 1.0
    frames = torch.tensor([100, 40])
    energy[1, 40:] = 3.0  # past the second item's end: neither its peak nor an event
    starts = event_starts(energy, frames)
    assert starts[0].nonzero().flatten().tolist() == [10, 30, 50, 80, 86]
    assert starts[1].nonzero().flatten().tolist() == [10, 30]
    # an event from the first frame counts; a quiet one 24 dB under the loudest does not, unless the
    # background lies so far under that half-way up from it is lower
    energy = torch.zeros(1, 60)
    energy[0, :5], energy[0, 20:25], energy[0, 40:45] = 1.0, 0.4, 1.0
    assert event_starts(energy, torch.tensor([60])).nonzero()[:, 1].tolist() == [0, 40]
    assert event_starts(energy, torch.tensor([60]), level_db=30.0).nonzero()[:, 1].tolist() == [0, 40]
    energy[0, energy[0] == 0] = -1.0  # 80 dB down: half-way is 40 dB, so the 30 dB threshold holds
    assert event_starts(energy, torch.tensor([60]), level_db=30.0).nonzero()[:, 1].tolist() == [0, 20, 40]


def test_mel_encoder_event_count_counts_the_events_of_synthetic_sounds_and_is_saved(tmp_path):
    from bagpiper_lib.audio import pad_waveforms
    from bagpiper_lib.data.synthetic import generate
    from bagpiper_lib.encoders.mel import MelEncoder

    enc = MelEncoder(n_mels=16, n_fft=1024, event_count=True)
    assert enc.output_dim == 16 + 5
    clips = generate(
        60, seed=3, categories=["sound"], duration=(1.0, 1.5), mixture_fraction=0.0, split="test"
    )
    wav, lengths = pad_waveforms([torch.as_tensor(c.audio, dtype=torch.float32) for c in clips])
    feats, frames = enc(wav, lengths)
    # the middle frame's +-1 s window holds the whole clip: one to three events over hum, noise or silence
    middle = feats[torch.arange(len(clips)), frames // 2, 16:]
    truth = torch.tensor([c.params["event_count"] for c in clips])
    assert set(truth.tolist()) == {1, 2, 3} and torch.equal(middle, torch.eye(5)[truth])
    assert torch.equal(feats[0, : int(frames[0]), 16:].sum(-1), torch.ones(int(frames[0])))  # one-hot
    # six 50 ms noise bursts 0.15 s apart: six starts within +-1 s of the middle read "4 or more"
    bursts = torch.zeros(16000)
    noise = 0.3 * torch.randn(800, generator=torch.Generator().manual_seed(0))
    for k in range(6):
        bursts[2000 + 2400 * k : 2800 + 2400 * k] = noise
    from bagpiper_lib.encoders.mel import EVENT_COUNT_MAX

    assert EVENT_COUNT_MAX == 4 and torch.equal(enc(bursts)[0][0, 50, 16:], torch.eye(5)[4])
    torch.testing.assert_close(
        feats[1, : int(frames[1])], enc(wav[1, : int(lengths[1])])[0][0], rtol=0, atol=1e-5
    )
    assert feats[1, int(frames[1]) :].abs().sum() == 0
    again = MelEncoder(enc.save_pretrained(tmp_path / "mel"))
    assert again.event_count and torch.equal(again(wav, lengths)[0], feats)


def test_mel_encoder_level_bins_place_the_peak_level_in_soft_6_db_bins_and_are_saved(tmp_path):
    from bagpiper_lib.encoders.mel import LEVEL_BINS_DB, MelEncoder, level_bins, peak_energy

    assert len(LEVEL_BINS_DB) == 10 and LEVEL_BINS_DB[0] == -60 and LEVEL_BINS_DB[-1] == -6
    enc = MelEncoder(n_mels=16, n_fft=1024, level_bins=True)
    assert enc.output_dim == 16 + 10
    t = torch.arange(SR) / SR
    for rms_db, centre in ((-30.0, 5), (-12.0, 8), (-21.0, None)):
        amplitude = math.sqrt(2) * 10 ** (rms_db / 20)  # a sine at this RMS level
        feats = enc(amplitude * torch.sin(2 * math.pi * 440 * t))[0][0, 20:80, 16:]
        if centre is not None:  # on a bin's centre: 1 there, exp(-1/2) one bin away
            assert feats[:, centre].min() > 0.99
            torch.testing.assert_close(
                feats[:, centre - 1], torch.full((60,), math.exp(-0.5)), rtol=0, atol=0.02
            )
        else:  # half-way between -24 and -18 dB: equal
            torch.testing.assert_close(feats[:, 6], feats[:, 7], rtol=0, atol=0.01)
            assert feats[:, 6].min() > 0.85
    # the bins of the loudest frame within +-1 s, from the same energy as peak_energy
    _, frames, energy = LogMelSpectrogram(16, n_fft=1024)(
        0.1 * torch.sin(2 * math.pi * 440 * t)[None], with_energy=True
    )
    expected = level_bins(peak_energy(energy, frames))
    assert expected.shape == (1, 10, int(frames[0]))
    torch.testing.assert_close(
        enc(0.1 * torch.sin(2 * math.pi * 440 * t))[0][..., 16:], expected.transpose(1, 2)
    )
    again = MelEncoder(enc.save_pretrained(tmp_path / "mel"))
    assert again.level_bins and again.output_dim == 26


def test_mel_encoder_event_index_marks_which_event_each_frame_belongs_to_and_is_saved(tmp_path):
    from bagpiper_lib.audio import pad_waveforms
    from bagpiper_lib.data.synthetic import generate
    from bagpiper_lib.encoders.mel import MelEncoder

    enc = MelEncoder(n_mels=16, n_fft=1024, event_count=True, event_index=True)
    assert enc.output_dim == 16 + 5 + 5  # the count, then the index
    clips = generate(
        40, seed=5, categories=["sound"], duration=(1.0, 1.5), mixture_fraction=0.0, split="test"
    )
    wav, lengths = pad_waveforms([torch.as_tensor(c.audio, dtype=torch.float32) for c in clips])
    feats, frames = enc(wav, lengths)
    index = feats[..., 21:].argmax(-1)  # [B, T]
    for b, clip in enumerate(clips):
        onsets = [round(o * 100) for o in clip.params["onsets"]]  # frames, 100 per second
        assert int(index[b, onsets[0] - 5]) == 0  # background before the first event
        for k, onset in enumerate(onsets, start=1):
            assert int(index[b, onset + 3]) == k  # 30 ms into the k-th event
        assert int(index[b, int(frames[b]) - 1]) == len(onsets)
    one_hot = feats[0, : int(frames[0]), 21:]
    assert torch.equal(one_hot.sum(-1), torch.ones(int(frames[0]))) and set(one_hot.unique().tolist()) == {
        0.0,
        1.0,
    }
    assert feats[1, int(frames[1]) :].abs().sum() == 0
    # alone it needs no event_count
    alone = MelEncoder(n_mels=16, n_fft=1024, event_index=True)
    assert alone.output_dim == 21 and torch.equal(alone(wav, lengths)[0][..., 16:], feats[..., 21:])
    again = MelEncoder(enc.save_pretrained(tmp_path / "mel"))
    assert again.event_index and again.event_count and torch.equal(again(wav, lengths)[0], feats)
