"""Tests of ``bagpiper_lib.data.shards``: tar shard round trip, rank/worker partition, resume, equalize."""

from __future__ import annotations

import io
import itertools
import json
import tarfile

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from bagpiper_lib.data.records import Record
from bagpiper_lib.data.shards import INDEX_FILE, ShardedStream, write_shards

RATE = 8000
CATEGORIES = ("speech", "music", "sound")


def _records(n, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        wav = torch.from_numpy(rng.uniform(-0.5, 0.5, int(rng.integers(1600, 4000))).astype(np.float32))
        codes = torch.from_numpy(rng.integers(0, 1024, (4, 7))) if i % 2 else None
        out.append(
            Record(
                id=f"clip.{i:03d}",  # dots are not allowed in member keys: exercised here
                caption=f"Caption number {i}.",
                category=CATEGORIES[i % 3],
                audio=wav,
                sample_rate=RATE,
                params={"i": i},
                quality={"audio": float(i)},
                codes=codes,
                codec="xcodec" if codes is not None else None,
            )
        )
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """23 records in shards of 4: five full shards and one of 3."""
    records = _records(23)
    out = tmp_path_factory.mktemp("shards")
    paths = write_shards(records, out, records_per_shard=4)
    return records, out, paths


def _ids(stream):
    return [r.id for r in stream]


def test_write_and_read_every_field(corpus, tmp_path):
    records, out, paths = corpus
    assert [p.name for p in paths] == [f"shard-{i:06d}.tar" for i in range(6)]
    index = json.loads((out / INDEX_FILE).read_text())
    assert index["num_records"] == 23 and [s["num_records"] for s in index["shards"]] == [4] * 5 + [3]
    with tarfile.open(paths[0]) as tar:
        names = tar.getnames()
    keys = [name.split(".")[0] for name in names]
    blocks = [key for key, _ in itertools.groupby(keys)]
    assert len(blocks) == len(set(blocks)) == 4  # one key's members are adjacent
    assert [n.split(".", 1)[1] for n in names[:5]] == ["json", "flac", "json", "flac", "codes.npy"]
    got = {r.id: r for r in ShardedStream(out, shuffle_shards=False)}
    assert sorted(got) == sorted(r.id for r in records)
    for want in records:
        have = got[want.id]
        assert (have.caption, have.category, have.params, have.quality) == (
            want.caption,
            want.category,
            want.params,
            want.quality,
        )
        assert have.sample_rate == RATE and have.audio.shape == want.audio.shape
        assert (have.audio - want.audio).abs().max() <= 1 / 32768 + 1e-7  # FLAC 16-bit
        assert (have.codes is None) == (want.codes is None) and have.codec == want.codec
        if want.codes is not None:
            assert torch.equal(have.codes, want.codes)
    exact = write_shards(records[:5], tmp_path / "npy", records_per_shard=2, audio_format="npy")
    for have, want in zip(ShardedStream(exact, shuffle_shards=False), records[:5]):
        assert torch.equal(have.audio, want.audio)
    no_audio = next(iter(ShardedStream(exact, read_audio=False)))
    assert no_audio.audio is None and no_audio.sample_rate == RATE


@pytest.mark.parametrize("world_size", [2, 3])
@pytest.mark.parametrize("shuffle_buffer", [0, 6])
def test_every_record_once_per_epoch_across_ranks(corpus, world_size, shuffle_buffer):
    records, out, _ = corpus
    streams = [
        ShardedStream(out, rank=r, world_size=world_size, seed=5, shuffle_buffer=shuffle_buffer)
        for r in range(world_size)
    ]
    orders = []
    for epoch in range(2):
        expected = streams[0].num_records_per_rank()
        per_rank = [_ids(s) for s in streams]  # iterating advances each stream to the next epoch
        assert [len(ids) for ids in per_rank] == expected
        flat = [i for ids in per_rank for i in ids]
        assert sorted(flat) == sorted(r.id for r in records)  # complete, no overlap
        assert all(s.epoch == epoch + 1 for s in streams)
        orders.append(flat)
    assert orders[0] != orders[1]  # a new shard permutation per epoch


@pytest.mark.parametrize(
    ("world_size", "rank", "shuffle_buffer"), [(1, 0, 0), (1, 0, 5), (2, 1, 0), (3, 2, 4)]
)
def test_resume_continues_exactly(corpus, world_size, rank, shuffle_buffer):
    _, out, _ = corpus

    def make():
        return ShardedStream(out, rank=rank, world_size=world_size, seed=1, shuffle_buffer=shuffle_buffer)

    reference = make()
    first_epoch = _ids(reference)
    full = first_epoch + _ids(reference)  # two epochs, uninterrupted
    per_epoch = len(first_epoch)
    for k in sorted({0, 1, 3, per_epoch - 1, per_epoch, per_epoch + 2}):
        stream = make()
        it = iter(stream)
        head = [next(it).id for _ in range(min(k, per_epoch))]
        if k > per_epoch:
            it = iter(stream)  # the first epoch ended: the next iteration starts epoch 1
            head += [next(it).id for _ in range(k - per_epoch)]
        state = json.loads(json.dumps(stream.state_dict()))  # plain data
        resumed = make()
        resumed.load_state_dict(state)
        rest = _ids(resumed)
        if resumed.epoch == 1 and k < per_epoch:
            rest += _ids(resumed)
        assert head + rest == full[: len(head) + len(rest)], k
        assert len(head) + len(rest) == len(full)


def test_resume_rejects_a_changed_partition(corpus):
    _, out, _ = corpus
    state = ShardedStream(out, world_size=2).state_dict()
    with pytest.raises(ValueError, match="world_size: saved 2 vs stream 3"):
        ShardedStream(out, world_size=3).load_state_dict(state)
    fresh = ShardedStream(out, world_size=3)
    fresh.load_state_dict({"epoch": 4})
    assert fresh.epoch == 4 and len(_ids(fresh)) == fresh.num_records_per_rank(4)[0]


def _uneven(tmp_path):
    """Shards of 5, 1, 4, 2 and 3 records: ranks get very different counts."""
    records, paths, start = _records(15, seed=2), [], 0
    for i, size in enumerate([5, 1, 4, 2, 3]):
        paths += write_shards(records[start : start + size], tmp_path / f"part{i}", records_per_shard=size)
        start += size
    return records, paths


@pytest.mark.parametrize("world_size", [2, 3])
def test_equalize_gives_equal_counts_per_rank(tmp_path, world_size):
    records, paths = _uneven(tmp_path)
    plain = [ShardedStream(paths, rank=r, world_size=world_size, seed=0) for r in range(world_size)]
    assert len(set(plain[0].num_records_per_rank())) > 1  # the corpus really is uneven
    for epoch in range(3):
        streams = [
            ShardedStream(paths, rank=r, world_size=world_size, seed=0, equalize=True)
            for r in range(world_size)
        ]
        for s in streams:
            s.set_epoch(epoch)
        counts = streams[0].num_records_per_rank()
        per_rank = [_ids(s) for s in streams]
        assert [len(ids) for ids in per_rank] == counts and len(set(counts)) == 1 and counts[0] > 0
        flat = [i for ids in per_rank for i in ids]
        assert len(set(flat)) == len(flat)  # dropped, never repeated


def _corrupt(path, replace):
    """Rewrite the tar at ``path`` with member bytes replaced (``{member name: new bytes}``)."""
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(path, "w") as tar:
        for member, data in members:
            data = replace.get(member.name, data)
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    return [m.name for m, _ in members]


def test_corrupt_members_are_skipped_and_counted(tmp_path):
    records = _records(12, seed=3)
    paths = write_shards(records, tmp_path, records_per_shard=4)
    with tarfile.open(paths[1]) as tar:
        names = tar.getnames()
    flac = [n for n in names if n.endswith(".flac")]
    jsons = [n for n in names if n.endswith(".json")]
    _corrupt(paths[1], {flac[0]: np.random.default_rng(0).bytes(500), jsons[2]: b"{not json"})
    stream = ShardedStream(tmp_path, shuffle_shards=False)
    assert len(_ids(stream)) == 10
    assert stream.skipped == {"bad_audio": 1, "bad_metadata": 1}
    for rank in range(3):  # rank 1 owns the damaged shard
        equal = ShardedStream(tmp_path, world_size=3, rank=rank, equalize=True, shuffle_shards=False)
        assert len(_ids(equal)) == 4  # the damaged slot wraps around its shard to keep the count


def test_truncated_and_unreadable_shards_are_counted(tmp_path):
    paths = write_shards(_records(8, seed=4), tmp_path, records_per_shard=4)
    data = paths[0].read_bytes()
    paths[0].write_bytes(data[: len(data) // 2])
    paths[1].write_bytes(b"not a tar at all" * 10)
    stream = ShardedStream(tmp_path, shuffle_shards=False)
    got = _ids(stream)
    assert 0 < len(got) < 4
    assert stream.skipped["truncated_shard"] == 1 and stream.skipped["unreadable_shard"] == 1


@pytest.mark.parametrize("equalize", [False, True])
def test_dataloader_workers_split_shards(tmp_path, equalize):
    records, paths = _uneven(tmp_path)
    seen, counts = [], []
    for rank in range(2):
        stream = ShardedStream(paths, rank=rank, world_size=2, seed=7, shuffle_buffer=3, equalize=equalize)
        loader = DataLoader(stream, batch_size=2, num_workers=2, collate_fn=list)
        ids = [r.id for batch in loader for r in batch]
        assert len(ids) == stream.num_records_per_rank(num_workers=2)[rank]
        seen += ids
        counts.append(len(ids))
    assert len(seen) == len(set(seen))
    if equalize:
        assert counts[0] == counts[1]
    else:
        assert sorted(seen) == sorted(r.id for r in records)


def test_errors(corpus, tmp_path):
    _, out, paths = corpus
    with pytest.raises(ValueError, match="6 shards cannot feed world_size=7"):
        ShardedStream(out, world_size=7)
    with pytest.raises(ValueError, match="audio_format"):
        write_shards([], tmp_path, audio_format="mp3")
    stream = ShardedStream([str(p) for p in paths])  # a list of tars finds the index beside them
    assert stream.num_records_per_rank() == [23]
    twins = [
        Record(id=i, caption="c", category="sound", audio=torch.zeros(80), sample_rate=RATE) for i in "aab"
    ]
    write_shards(twins, tmp_path / "twins")
    assert _ids(ShardedStream(tmp_path / "twins", shuffle_shards=False)) == ["a", "a", "b"]  # kept apart
