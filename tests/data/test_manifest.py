"""Tests of ``bagpiper_lib.data.manifest``: JSONL round trip, line-numbered errors, paths, AudioLoader."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from bagpiper_lib.data.manifest import (
    CODE_FILES,
    REQUIRED_FIELDS,
    AudioError,
    AudioLoader,
    ManifestError,
    iter_manifest,
    read_manifest,
    write_manifest,
)
from bagpiper_lib.data.records import Record


def _wav(path, seconds=0.25, rate=16000, seed=0):
    data = np.random.default_rng(seed).uniform(-0.5, 0.5, round(seconds * rate)).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), data, rate, subtype="FLOAT")
    return data


def _line(**fields):
    base = {"id": "a", "caption": "A dog barks twice.", "category": "sound", "audio": "a.wav"}
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not None})


def _manifest(tmp_path, *lines):
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


# ---------------------------------------------------------------------------------------------- format


def test_round_trip_keeps_every_field(tmp_path):
    _wav(tmp_path / "clips" / "a.wav")
    on_disk = Record(
        id="a",
        caption="A dog barks twice, then a car passes.",
        category="sound",
        path=str(tmp_path / "clips" / "a.wav"),
        sample_rate=16000,
        duration=0.25,
        short_caption="dog and car",
        params={"events": ["bark", "car"], CODE_FILES: {"xcodec": str(tmp_path / "codes" / "a.codes.npy")}},
        quality={"audio": 3.5, "alignment": 0.4},
    )
    in_memory = Record(
        id="b/1", caption="A man speaks.", category="speech", audio=torch.zeros(800), sample_rate=8000
    )
    path = write_manifest([on_disk, in_memory], tmp_path / "m.jsonl")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[0]["audio"] == "clips/a.wav"  # relative to the manifest's folder
    assert lines[0]["codes"] == {"xcodec": "codes/a.codes.npy"}
    assert "code_files" not in lines[0]["params"]
    back = read_manifest(path)
    assert [r.id for r in back] == ["a", "b/1"]
    for field in (
        "caption",
        "category",
        "path",
        "sample_rate",
        "duration",
        "short_caption",
        "params",
        "quality",
    ):
        assert getattr(back[0], field) == getattr(on_disk, field), field
    assert back[1].duration == pytest.approx(0.1)
    loaded = AudioLoader().load(back[1])  # the in-memory clip was saved beside the manifest
    assert loaded.audio.shape == (800,) and loaded.sample_rate == 8000


@pytest.mark.parametrize("field", REQUIRED_FIELDS)
def test_missing_field_names_field_and_line(tmp_path, field):
    path = _manifest(tmp_path, _line(), "", _line(**{"id": "b", field: None}))
    with pytest.raises(ManifestError, match=rf"line 3: missing required field '{field}'") as info:
        read_manifest(path)
    assert info.value.line == 3 and str(path) in str(info.value)


def test_bad_json_names_line(tmp_path):
    path = _manifest(tmp_path, _line(), _line(id="b"), '{"id": "c", "caption": ')
    with pytest.raises(ManifestError, match="line 3: invalid JSON"):
        read_manifest(path)
    records = iter_manifest(path)  # lazily: the good lines come first
    assert next(records).id == "a" and next(records).id == "b"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"category": "noise"}, "'category' must be one of"),
        ({"duration": "long"}, "'duration' must be a number"),
        ({"sample_rate": -16000}, "'sample_rate' must be a positive"),
        ({"caption": "  "}, "caption is empty"),
        ({"codes": "a.codes.npy"}, "add a 'codec' field"),
        ({"quality": [1, 2]}, "'quality' must be an object"),
    ],
)
def test_bad_fields_name_field_and_line(tmp_path, fields, message):
    with pytest.raises(ManifestError, match=f"line 2: .*{message}"):
        read_manifest(_manifest(tmp_path, _line(), _line(id="b", **fields)))


def test_not_an_object(tmp_path):
    with pytest.raises(ManifestError, match="line 1: expected a JSON object, got list"):
        read_manifest(_manifest(tmp_path, "[1, 2]"))


def test_relative_and_absolute_paths(tmp_path):
    root = tmp_path / "corpus"
    _wav(root / "clips" / "a.wav")
    elsewhere = tmp_path / "elsewhere" / "b.wav"
    _wav(elsewhere)
    path = root / "m.jsonl"
    path.write_text(_line(audio="clips/a.wav") + "\n" + _line(id="b", audio=str(elsewhere)) + "\n")
    a, b = read_manifest(path)
    assert a.path == str(root / "clips" / "a.wav") and b.path == str(elsewhere)
    loader = AudioLoader(16000)
    assert all(loader(r) is not None for r in (a, b))
    copy = write_manifest([a, b], tmp_path / "copy" / "m.jsonl")  # a lies outside the new folder
    written = [json.loads(line)["audio"] for line in copy.read_text().splitlines()]
    assert written == [str(root / "clips" / "a.wav"), str(elsewhere)]


def test_codes_path_string_with_codec(tmp_path):
    (record,) = read_manifest(_manifest(tmp_path, _line(codes="c/a.codes.npy", codec="dac")))
    assert record.params[CODE_FILES] == {"dac": str(tmp_path / "c" / "a.codes.npy")}


# ---------------------------------------------------------------------------------------------- loading


def test_bad_audio_is_skipped_and_counted(tmp_path):
    _wav(tmp_path / "good.wav")
    (tmp_path / "corrupt.wav").write_bytes(np.random.default_rng(0).bytes(2000))
    sf.write(str(tmp_path / "empty.wav"), np.zeros(0, dtype=np.float32), 16000)
    nan = np.full(400, np.nan, dtype=np.float32)
    sf.write(str(tmp_path / "nan.wav"), nan, 16000, subtype="FLOAT")
    names = ["good", "corrupt", "missing", "empty", "nan"]
    path = _manifest(tmp_path, *(_line(id=n, audio=f"{n}.wav") for n in names))
    loader = AudioLoader(16000)
    loaded = list(loader.iter_loaded(read_manifest(path)))
    assert [r.id for r in loaded] == ["good"]
    assert loader.skipped == {"unreadable": 1, "missing": 1, "empty": 1, "non_finite": 1}
    with pytest.raises(AudioError, match="corrupt.wav") as info:
        loader.load(read_manifest(path)[1])
    assert info.value.reason == "unreadable"
    in_memory_nan = Record(
        id="x", caption="c", category="sound", audio=torch.tensor([0.0, float("nan")]), sample_rate=8
    )
    assert loader(in_memory_nan) is None and loader.skipped["non_finite"] == 2


def test_random_crop_is_a_30s_window_deterministic_by_seed(tmp_path):
    rate = 1000  # 31 s of audio in 31k samples keeps the test tiny
    original = _wav(tmp_path / "long.wav", seconds=31.0, rate=rate)
    record = read_manifest(_manifest(tmp_path, _line(audio="long.wav", sample_rate=rate)))[0]

    def offset(wav):
        starts = [s for s in range(0, 1001) if np.array_equal(original[s : s + 30 * rate], wav.numpy())]
        assert len(starts) == 1
        return starts[0]

    first = AudioLoader(rate, crop="random", seed=3).load(record)
    assert first.audio.shape == (30 * rate,) and first.duration == 30.0
    again = AudioLoader(rate, crop="random", seed=3).load(record)
    assert torch.equal(first.audio, again.audio)
    offsets = {offset(AudioLoader(rate, seed=s).load(record).audio) for s in range(6)}
    assert len(offsets) > 1
    in_memory = Record(
        id="a", caption="c", category="sound", audio=torch.from_numpy(original), sample_rate=rate
    )
    assert torch.equal(AudioLoader(rate, seed=3).load(in_memory).audio, first.audio)  # same window either way
    epoch_loader, per_epoch = AudioLoader(rate, seed=3), set()
    for epoch in range(4):  # a new window each epoch
        epoch_loader.set_epoch(epoch)
        per_epoch.add(offset(epoch_loader.load(record).audio))
    assert len(per_epoch) > 1
    assert offset(AudioLoader(rate, crop="head").load(record).audio) == 0
    rejecting = AudioLoader(rate, crop="reject")
    assert rejecting(record) is None and rejecting.skipped == {"too_long": 1}
    short = read_manifest(_manifest(tmp_path, _line(audio="short.wav")))[0]
    _wav(tmp_path / "short.wav", seconds=0.3, rate=rate)
    assert rejecting(short).audio.shape == (300,)


def test_crop_after_resampling_is_exactly_max_seconds(tmp_path):
    _wav(tmp_path / "a.wav", seconds=0.5, rate=22050)
    record = read_manifest(_manifest(tmp_path, _line()))[0]
    loaded = AudioLoader(16000, max_seconds=0.3).load(record)
    assert loaded.audio.shape == (4800,) and loaded.sample_rate == 16000


def test_mixed_sample_rates_resampled_or_strict_error(tmp_path):
    _wav(tmp_path / "a.wav", seconds=0.25, rate=16000)
    _wav(tmp_path / "b.wav", seconds=0.25, rate=8000)
    path = _manifest(
        tmp_path,
        _line(sample_rate=16000),
        _line(id="b", audio="b.wav", sample_rate=8000),
    )
    loader = AudioLoader(16000)
    a, b = (loader.load(r) for r in read_manifest(path))
    assert a.sample_rate == b.sample_rate == 16000
    assert a.audio.shape == b.audio.shape == (4000,)
    with pytest.raises(
        ManifestError, match="line 2: sample_rate 8000 differs from sample_rate 16000 on line 1"
    ):
        read_manifest(path, strict_sample_rate=True)
    native = AudioLoader(None).load(read_manifest(path)[1])
    assert native.sample_rate == 8000 and native.audio.shape == (2000,)


def test_loader_rejects_bad_settings():
    with pytest.raises(ValueError, match="crop must be one of"):
        AudioLoader(16000, crop="middle")
    with pytest.raises(ValueError, match="sample_rate"):
        AudioLoader(0)
