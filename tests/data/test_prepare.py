"""Tests of ``bagpiper_lib.data.prepare``: codes saved equal ``codec.encode`` exactly, manifest keyed by codec."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from bagpiper_lib import codecs
from bagpiper_lib.data.manifest import CODE_FILES, AudioLoader, read_manifest, write_manifest
from bagpiper_lib.data.prepare import codes_path, load_codes, prepare_codes
from bagpiper_lib.data.records import Record
from bagpiper_lib.data.shards import ShardedStream, write_shards

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def xcodec():
    return codecs.build({"name": "xcodec", "preset": "tiny"})


@pytest.fixture(scope="module")
def dac():
    return codecs.build({"name": "dac", "preset": "tiny"})


def _corpus(tmp_path):
    """Seven clips of 0.2-0.5 s (two at 22.05 kHz, one in memory) and one corrupt file, in a manifest."""
    rng = np.random.default_rng(0)
    lines = []
    for i, seconds in enumerate([0.2, 0.5, 0.31, 0.2, 0.44, 0.27]):
        rate = 22050 if i in (1, 4) else 16000
        sf.write(
            str(tmp_path / f"c{i}.wav"), rng.uniform(-0.5, 0.5, round(seconds * rate)), rate, subtype="FLOAT"
        )
        lines.append({"id": f"c{i}", "caption": f"Clip {i}.", "category": "music", "audio": f"c{i}.wav"})
    (tmp_path / "bad.wav").write_bytes(rng.bytes(3000))
    lines.insert(3, {"id": "bad", "caption": "Broken.", "category": "sound", "audio": "bad.wav"})
    manifest = tmp_path / "corpus.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    records = read_manifest(manifest)
    wav = torch.from_numpy(rng.uniform(-0.5, 0.5, 5000).astype(np.float32))
    records.append(Record(id="mem/1", caption="In memory.", category="speech", audio=wav, sample_rate=16000))
    return records


@pytest.mark.parametrize("codec_name", ["xcodec", "dac"])
def test_saved_codes_equal_encode_exactly(tmp_path, request, codec_name):
    codec = request.getfixturevalue(codec_name)  # xcodec groups equal lengths itself; dac has context_frames
    records = _corpus(tmp_path)
    loader = AudioLoader(codec.sample_rate)
    out = prepare_codes(
        records, codec, codec_name, tmp_path / "out", batch_size=3, loader=loader, sort_window=2
    )
    assert [r.id for r in out] == [r.id for r in records if r.id != "bad"]  # input order, bad clip skipped
    assert loader.skipped == {"unreadable": 1}
    reference = AudioLoader(codec.sample_rate)
    for record in out:
        path = codes_path(tmp_path / "out", codec_name, record.id)
        saved = np.load(path)
        assert saved.dtype == np.int16
        wav = reference.load(record).audio
        codes, frames = codec.encode(wav[None])
        assert torch.equal(torch.from_numpy(saved.astype(np.int64)), codes[0, :, : frames[0]]), record.id
        assert torch.equal(record.codes, codes[0, :, : frames[0]]) and record.codec == codec_name
        assert torch.equal(load_codes(record, codec_name), record.codes)
        assert record.params[CODE_FILES][codec_name] == str(path.resolve())


def test_manifest_keyed_by_codec_and_resumable(tmp_path, xcodec, dac, monkeypatch):
    records = _corpus(tmp_path)
    first = prepare_codes(records, xcodec, "xcodec", tmp_path / "out", batch_size=4)
    both = prepare_codes(first, dac, "dac-tiny", tmp_path / "out", batch_size=4)  # an ablation's second codec
    lines = [json.loads(line) for line in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    assert [line["id"] for line in lines] == [r.id for r in both]
    assert lines[0]["codes"] == {"xcodec": "xcodec/c0.codes.npy", "dac-tiny": "dac-tiny/c0.codes.npy"}
    assert lines[0]["audio"] == str(tmp_path / "c0.wav")
    assert lines[-1]["audio"].startswith("audio/")  # the in-memory clip was saved beside the manifest
    reread = read_manifest(tmp_path / "out" / "manifest.jsonl")
    for record, with_xcodec, with_dac in zip(reread, first, both):
        assert torch.equal(load_codes(record, "xcodec"), with_xcodec.codes)
        assert torch.equal(load_codes(record, "dac-tiny"), with_dac.codes)
        assert torch.equal(load_codes(with_dac, "xcodec"), with_xcodec.codes)  # from its file
    with pytest.raises(KeyError, match=r"no codes for codec 'encodec'; available: \['dac-tiny', 'xcodec'\]"):
        load_codes(reread[0], "encodec")

    def fail(*args, **kwargs):
        raise AssertionError("existing codes must be reused, not re-encoded")

    monkeypatch.setattr(xcodec, "encode", fail)
    again = prepare_codes(reread, xcodec, "xcodec", tmp_path / "out", manifest=tmp_path / "again.jsonl")
    assert [torch.equal(a.codes, b.codes) for a, b in zip(again, first)] == [True] * len(first)


def test_codes_travel_into_shards(tmp_path, xcodec):
    records = _corpus(tmp_path)
    prepared = prepare_codes(records, xcodec, "xcodec", tmp_path / "out", manifest=False)
    reread = read_manifest(write_manifest(prepared, tmp_path / "m.jsonl"))
    write_shards(reread, tmp_path / "shards", records_per_shard=3, codec="xcodec")
    got = {r.id: r for r in ShardedStream(tmp_path / "shards", read_audio=False)}
    assert sorted(got) == sorted(r.id for r in prepared)
    for record in prepared:
        assert got[record.id].codec == "xcodec" and torch.equal(got[record.id].codes, record.codes)


def test_encode_records_in_memory_equals_encoding_each_clip_alone():
    """The training data path: codes set on records without saving, exact even for a padding-sensitive codec."""
    from bagpiper_lib import codecs
    from bagpiper_lib.data.prepare import encode_records
    from bagpiper_lib.data.records import Record

    codec = codecs.build({"name": "dac", "preset": "tiny"})
    assert codec.context_frames > 0
    g = torch.Generator().manual_seed(0)
    records = [
        Record(f"r{i}", "a clip", "sound", audio=0.1 * torch.randn(n, generator=g), sample_rate=16000)
        for i, n in enumerate([3200, 5120, 3200, 4000])
    ]
    records.append(
        Record("r24k", "a clip", "sound", audio=0.1 * torch.randn(4800, generator=g), sample_rate=24000)
    )
    encode_records(records, codec, batch_size=4)
    for record in records:
        alone, frames = codec.encode(record.audio, sample_rate=record.sample_rate)
        assert torch.equal(record.codes, alone[0, :, : int(frames)])
