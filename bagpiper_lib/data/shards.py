"""Sharded tar streams: write a corpus once, read it sequentially on every rank and worker, resumably.

Format (version 1)::

    out_dir/
      index.json         {"format": "bagpiper-shards", "version": 1, "audio_format": "flac",
                          "num_records": 2500, "skipped": {"unreadable": 3},
                          "shards": [{"path": "shard-000000.tar", "num_records": 1000}, ...]}
      shard-000000.tar   per record, members next to each other, in this order:
                           <stem>.json        metadata: the manifest fields + sample_rate, codec
                           <stem>.flac        audio, FLAC 16-bit (or <stem>.npy, float32 [N])
                           <stem>.codes.npy   optional codec codes [K, T], int16 / int32

``<stem>`` is :func:`safe_stem` of the id (no dots; the JSON holds the exact id).

Why this format: lhotse's Shar is the field's standard for this job (sequential tars of audio plus
metadata, one pass per epoch), but lhotse is not a dependency here; this is the same idea on the stdlib
``tarfile``. One tar per shard streams from object stores and network filesystems without 100M small
files; member names follow the WebDataset convention (key = name up to the first dot, a key's members
adjacent), so ``tar``, ``webdataset`` or any language reads the shards. FLAC is lossless for 16-bit
sources at about half the size of WAV; ``npy`` keeps float32 exact. ``index.json`` holds each shard's
record count, so partitioning, :meth:`ShardedStream.num_records_per_rank` and ``equalize`` never open
a tar to count.

Reading: each epoch the shards are permuted with ``(seed, epoch)``, identically on every rank; position
``i`` goes to rank ``i % world_size``, and a rank's shards are split the same way over DataLoader
workers (``get_worker_info``). An optional shuffle buffer mixes records across shards. Corrupt members
(bad JSON, undecodable audio, NaN) and unreadable or truncated shards are skipped and counted in
``stream.skipped`` (per process when workers are used).

Uneven ends: ranks own different shards, so their counts differ and DDP hangs on the rank that runs out
first. ``equalize=True`` makes each (rank, worker) slot yield exactly the minimum of that slot's count
over ranks, so batch counts (not only record counts) match. The surplus is **dropped**, not padded by
repeats: the next epoch's permutation drops other records, while repeats would weigh records twice in
the gradient. The one repeat: a slot whose shards hold fewer good records than indexed (corrupt members)
wraps around its own shards to reach its count.

Resuming: :meth:`ShardedStream.state_dict` is plain data (epoch, shard and record cursors, count
yielded, shuffle RNG state, and the shuffle buffer as ``(shard, record)`` references, re-read on load so
no audio enters the checkpoint). A new stream given that state yields exactly the records the
uninterrupted stream would have yielded next. With DataLoader workers each worker has its own state:
use ``torchdata``'s ``StatefulDataLoader``, which calls these methods inside every worker.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import tarfile
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from bagpiper_lib.data.manifest import AudioLoader, safe_stem
from bagpiper_lib.data.prepare import load_codes
from bagpiper_lib.data.records import Record

__all__ = ["INDEX_FILE", "ShardedStream", "write_shards"]

INDEX_FILE = "index.json"
FORMAT = "bagpiper-shards"
AUDIO_FORMATS = ("flac", "npy")


class _Skip(Exception):
    def __init__(self, reason: str) -> None:
        self.reason = reason


# ---------------------------------------------------------------------------------------------- writing


def write_shards(
    records: Iterable[Record],
    out_dir: str | Path,
    records_per_shard: int = 1000,
    *,
    audio_format: str = "flac",
    loader: AudioLoader | None = None,
    codec: str | None = None,
    prefix: str = "shard",
) -> list[Path]:
    """Write ``records`` into ``out_dir/<prefix>-NNNNNN.tar`` shards plus ``out_dir/index.json``.

    Args:
        records: any iterable (consumed lazily, e.g. :func:`iter_manifest`).
        records_per_shard: records per tar (the last shard may hold fewer).
        audio_format: ``"flac"`` (16-bit, lossless for 16-bit sources) or ``"npy"`` (float32, exact).
        loader: reads each record's audio (in memory or from ``path``); default keeps the native rate and
            full length. Bad audio is skipped, counted in ``loader.skipped`` and in the index.
        codec: embed the codes of this codec (:func:`load_codes`); default: ``record.codes`` if set.

    Returns the shard paths. Shards and the index are written atomically (temporary file, rename).
    """
    if audio_format not in AUDIO_FORMATS or records_per_shard < 1:
        raise ValueError(
            f"need audio_format in {list(AUDIO_FORMATS)} and records_per_shard >= 1, "
            f"got {audio_format!r} and {records_per_shard}"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    loader = loader if loader is not None else AudioLoader(sample_rate=None, max_seconds=None)
    good = (r for r in map(loader.load_or_none, records) if r is not None)
    paths: list[Path] = []
    counts: list[int] = []
    while (first := next(good, None)) is not None:
        paths.append(out_dir / f"{prefix}-{len(paths):06d}.tar")
        tmp, keys = paths[-1].with_name(paths[-1].name + ".tmp"), set()
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            for record in itertools.chain([first], itertools.islice(good, records_per_shard - 1)):
                stem, n = safe_stem(record.id), 0
                while stem in keys:  # a duplicate id within the shard
                    stem, n = f"{safe_stem(record.id)}_{n + 1}", n + 1
                keys.add(stem)
                for name, data in _members(record, stem, audio_format, codec):
                    info = tarfile.TarInfo(name)
                    info.size, info.mode = len(data), 0o644
                    tar.addfile(info, io.BytesIO(data))
        os.replace(tmp, paths[-1])
        counts.append(len(keys))
    index = {
        "format": FORMAT,
        "version": 1,
        "audio_format": audio_format,
        "num_records": sum(counts),
        "skipped": dict(loader.skipped),
        "shards": [{"path": p.name, "num_records": n} for p, n in zip(paths, counts)],
    }
    tmp = out_dir / (INDEX_FILE + ".tmp")
    tmp.write_text(json.dumps(index, indent=1))
    os.replace(tmp, out_dir / INDEX_FILE)
    return paths


def _members(record: Record, stem: str, audio_format: str, codec: str | None) -> list[tuple[str, bytes]]:
    import soundfile as sf

    wav = record.audio.detach().float().cpu().numpy()
    audio = io.BytesIO()
    if audio_format == "flac":
        sf.write(audio, np.clip(wav, -1.0, 1.0), int(record.sample_rate), format="FLAC", subtype="PCM_16")
    else:
        np.save(audio, wav, allow_pickle=False)
    codes, codec_name = (load_codes(record, codec), codec) if codec else (record.codes, record.codec)
    meta = {  # keys are Record fields: the reader passes them straight to Record(...)
        "id": record.id,
        "caption": record.caption,
        "category": record.category,
        "sample_rate": int(record.sample_rate),
        "duration": record.duration,
        "short_caption": record.short_caption,
        "quality": record.quality,
        "params": record.params,
        "codec": codec_name if codes is not None else None,
    }
    members = [(f"{stem}.json", json.dumps(meta).encode()), (f"{stem}.{audio_format}", audio.getvalue())]
    if codes is not None:
        array = codes.cpu().numpy()
        small = array.size == 0 or int(array.max()) <= np.iinfo(np.int16).max
        buf = io.BytesIO()
        np.save(buf, array.astype(np.int16 if small else np.int32), allow_pickle=False)
        members.append((f"{stem}.codes.npy", buf.getvalue()))
    return members


# ---------------------------------------------------------------------------------------------- reading


def _groups(tar: tarfile.TarFile) -> Iterator[dict[str, tarfile.TarInfo]]:
    """Adjacent members sharing a key (file name up to the first dot), as ``{extension: member}``."""
    key, parts = None, {}
    while (member := tar.next()) is not None:
        if not member.isfile():
            continue
        k, _, ext = member.name.rpartition("/")[2].partition(".")
        if key is not None and k != key:
            yield parts
            parts = {}
        key, parts[ext] = k, member
    if key is not None:
        yield parts


class ShardedStream(IterableDataset):
    """Iterate the :class:`Record` s of tar shards: disjoint per rank and worker, resumable, epoch-aware.

    ``shards`` is a shard directory, its ``index.json`` or a list of ``.tar`` paths. ``seed`` drives the
    per-epoch shard permutation and the ``shuffle_buffer`` (records mixed across shards, 0: none);
    ``equalize`` gives every rank the same count per epoch; ``read_audio=False`` skips decoding audio
    (metadata and codes only). Iterating yields the rest of the current epoch, then ``epoch`` advances;
    an interrupted iteration continues where it stopped. With non-persistent DataLoader workers (a fresh
    copy every epoch) call :meth:`set_epoch` at each epoch start.
    """

    def __init__(
        self,
        shards: str | Path | Sequence[str | Path],
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle_shards: bool = True,
        shuffle_buffer: int = 0,
        equalize: bool = False,
        read_audio: bool = True,
    ) -> None:
        self.shard_paths, self._counts = _resolve(shards)
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if len(self.shard_paths) < world_size:
            raise ValueError(
                f"{len(self.shard_paths)} shards cannot feed world_size={world_size} ranks; write at least "
                "one shard per rank (smaller records_per_shard)"
            )
        self.rank, self.world_size, self.seed = rank, world_size, int(seed)
        self.shuffle_shards, self.shuffle_buffer = shuffle_shards, int(shuffle_buffer)
        self.equalize, self.read_audio = equalize, read_audio
        self.skipped: Counter[str] = Counter()
        self.epoch = 0
        self._reset()
        self._worker: tuple[int, int] | None = None

    def _reset(self) -> None:
        self._pos = self._rec = self._yielded = 0
        self._buffer: list[tuple[tuple[int, int], Record]] = []
        self._pending: list[tuple[int, int]] | None = None
        self._rng: np.random.Generator | None = None

    # -------------------------------------------------------------------------------- partition

    def shard_order(self, epoch: int) -> list[int]:
        """The global shard permutation of ``epoch`` (identical on every rank)."""
        n = len(self.shard_paths)
        if not self.shuffle_shards:
            return list(range(n))
        return np.random.default_rng([self.seed, epoch]).permutation(n).tolist()

    def shards_of(self, epoch: int, rank: int, worker: int = 0, num_workers: int = 1) -> list[int]:
        """Indices of the shards read by ``(rank, worker)`` in ``epoch``."""
        return self.shard_order(epoch)[rank :: self.world_size][worker::num_workers]

    def num_records(self, shard: int) -> int:
        """Records in shard ``shard`` (from ``index.json``; counted by scanning the tar otherwise)."""
        if self._counts[shard] is None:
            with tarfile.open(self.shard_paths[shard], "r:") as tar:
                self._counts[shard] = sum(1 for _ in _groups(tar))
        return self._counts[shard]

    def _slot_target(self, epoch: int, worker: int, num_workers: int) -> int | None:
        if not self.equalize:
            return None
        order = self.shard_order(epoch)
        slots = (order[r :: self.world_size][worker::num_workers] for r in range(self.world_size))
        return min(sum(self.num_records(i) for i in slot) for slot in slots)

    def num_records_per_rank(self, epoch: int | None = None, num_workers: int = 1) -> list[int]:
        """Records each rank yields in ``epoch`` (default: the current one), as indexed.

        Without ``equalize`` the counts differ across ranks; with it they are equal and depend on the
        DataLoader's ``num_workers`` (0 counts as 1), since the minimum is taken per worker slot.
        """
        epoch = self.epoch if epoch is None else epoch
        workers = max(1, num_workers)
        if self.equalize:
            return [sum(self._slot_target(epoch, w, workers) for w in range(workers))] * self.world_size
        order = self.shard_order(epoch)
        return [sum(self.num_records(i) for i in order[r :: self.world_size]) for r in range(self.world_size)]

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its beginning (no-op when it is already the current epoch)."""
        if int(epoch) != self.epoch:
            self.epoch = int(epoch)
            self._reset()

    # -------------------------------------------------------------------------------- state

    def state_dict(self) -> dict[str, Any]:
        """Plain-data position of this stream (per worker process); see the module docstring."""
        buffer = self._pending if self._pending is not None else [ref for ref, _ in self._buffer]
        return {
            "version": 1,
            "epoch": self.epoch,
            "shard_cursor": self._pos,
            "record_cursor": self._rec,
            "yielded": self._yielded,
            "buffer": [list(ref) for ref in buffer],
            "rng": None if self._rng is None else self._rng.bit_generator.state,
            "seed": self.seed,
            "rank": self.rank,
            "world_size": self.world_size,
            "num_shards": len(self.shard_paths),
            "worker": None if self._worker is None else list(self._worker),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state``; ``{"epoch": e}`` alone starts epoch ``e`` (e.g. after a resize)."""
        mine = {
            "seed": self.seed,
            "rank": self.rank,
            "world_size": self.world_size,
            "num_shards": len(self.shard_paths),
        }
        wrong = {k: (state[k], v) for k, v in mine.items() if k in state and state[k] != v}
        if wrong:
            detail = ", ".join(f"{k}: saved {a} vs stream {b}" for k, (a, b) in wrong.items())
            raise ValueError(
                f"cannot resume exactly, the partition changed ({detail}); load {{'epoch': e}} instead"
            )
        self.epoch = int(state["epoch"])
        self._reset()
        self._pos, self._rec = int(state.get("shard_cursor", 0)), int(state.get("record_cursor", 0))
        self._yielded = int(state.get("yielded", 0))
        self._pending = [tuple(ref) for ref in state.get("buffer", [])] or None
        if state.get("rng") is not None:
            self._rng = np.random.Generator(np.random.PCG64())
            self._rng.bit_generator.state = state["rng"]
        self._worker = tuple(state["worker"]) if state.get("worker") is not None else None

    # -------------------------------------------------------------------------------- iteration

    def __iter__(self) -> Iterator[Record]:
        info = get_worker_info()
        worker = (info.id, info.num_workers) if info is not None else (0, 1)
        fresh = not (self._pos or self._rec or self._yielded or self._buffer or self._pending or self._rng)
        if self._worker not in (None, worker) and not fresh:
            raise RuntimeError(
                f"this state belongs to DataLoader worker {self._worker[0]} of {self._worker[1]}, but it is "
                f"iterated by worker {worker[0]} of {worker[1]}; resume with the same num_workers"
            )
        self._worker = worker
        for _ in range(2):
            before, produced = self._yielded, 0
            for record in self._epoch_records(*worker):
                produced += 1
                yield record
            self.epoch += 1
            self._reset()
            if produced or not before:  # an epoch that had already ended moves on to the next one
                return

    def _epoch_records(self, worker: int, num_workers: int) -> Iterator[Record]:
        shards = self.shards_of(self.epoch, self.rank, worker, num_workers)
        target = self._slot_target(self.epoch, worker, num_workers)
        if self._rng is None:
            self._rng = np.random.default_rng([self.seed, self.epoch, self.rank, worker])
        if self._pending is not None:
            self._buffer, self._pending = self._refetch(shards, self._pending), None
        source = self._source(shards, cycle=target is not None)
        buf, size = self._buffer, self.shuffle_buffer
        while True:
            item = None
            if target is None or self._yielded + len(buf) < target:
                item = next(source, None)
            if item is None:
                if not buf:
                    return
                out = buf.pop(int(self._rng.integers(len(buf))))
            elif len(buf) < size:
                buf.append(item)
                continue
            elif buf:
                j = int(self._rng.integers(len(buf)))
                out, buf[j] = buf[j], item
            else:
                out = item
            self._yielded += 1
            yield out[1]

    def _source(self, shards: list[int], cycle: bool) -> Iterator[tuple[tuple[int, int], Record]]:
        """Good records from the cursor on; cursors advance before each record is handed out."""
        last_good = self._pos
        while shards and (cycle or self._pos < len(shards)):
            if self._pos - last_good > len(shards):
                names = [self.shard_paths[i] for i in shards]
                raise RuntimeError(f"equalize: no readable record in a whole pass over shards {names}")
            for idx, record in self._read_shard(shards[self._pos % len(shards)], start=self._rec):
                self._rec = idx + 1
                if record is not None:
                    last_good = self._pos
                    yield (self._pos, idx), record
            self._pos, self._rec = self._pos + 1, 0

    def _refetch(
        self, shards: list[int], refs: list[tuple[int, int]]
    ) -> list[tuple[tuple[int, int], Record]]:
        wanted: dict[int, set[int]] = defaultdict(set)
        for pos, idx in refs:
            wanted[pos].add(idx)
        found = {}
        for pos, indices in wanted.items():
            for idx, record in self._read_shard(shards[pos % len(shards)], only=indices):
                if record is not None:
                    found[(pos, idx)] = record
        return [(ref, found[ref]) for ref in refs if ref in found]

    def _read_shard(
        self, shard: int, start: int = 0, only: set[int] | None = None
    ) -> Iterator[tuple[int, Record | None]]:
        """``(index, record or None when corrupt)`` for the record groups of one shard from ``start``."""
        start = min(only) if only else start
        seen = 0
        try:
            with tarfile.open(self.shard_paths[shard], "r:") as tar:
                for idx, parts in enumerate(_groups(tar)):
                    seen = idx + 1
                    if only is not None and idx > max(only):
                        return
                    if idx >= start and (only is None or idx in only):
                        yield idx, self._decode_or_none(tar, parts)
        except (tarfile.TarError, OSError):
            self.skipped["truncated_shard" if seen else "unreadable_shard"] += 1
            return
        expected = self._counts[shard]
        if only is None and expected is not None and seen < expected:
            self.skipped["truncated_shard"] += 1

    def _decode_or_none(self, tar: tarfile.TarFile, parts: dict[str, tarfile.TarInfo]) -> Record | None:
        try:
            return _decode(tar, parts, self.read_audio)
        except _Skip as skip:
            self.skipped[skip.reason] += 1
            return None


def _decode(tar: tarfile.TarFile, parts: dict[str, tarfile.TarInfo], read_audio: bool) -> Record:
    """One record group -> :class:`Record`, or :class:`_Skip` naming what is wrong with it."""
    import soundfile as sf

    def load(ext: str, reason: str, decode):
        if ext not in parts:
            raise _Skip(f"missing_{reason}")
        try:
            return decode(io.BytesIO(tar.extractfile(parts[ext]).read()))
        except Exception as err:  # tarfile, json, soundfile and numpy raise many types for bad bytes
            raise _Skip(f"bad_{reason}") from err

    meta = load("json", "metadata", json.load)
    audio = codes = None
    if read_audio:
        if "flac" in parts:
            data = load(
                "flac", "audio", lambda f: sf.read(f, dtype="float32", always_2d=True)[0].mean(axis=1)
            )
        else:
            data = load("npy", "audio", lambda f: np.load(f, allow_pickle=False).astype(np.float32))
        if data.ndim != 1 or data.size == 0 or not np.isfinite(data).all():
            raise _Skip("bad_audio")
        audio = torch.from_numpy(np.ascontiguousarray(data))
    if "codes.npy" in parts:
        codes = torch.from_numpy(load("codes.npy", "codes", np.load).astype(np.int64))
    try:
        return Record(**meta, audio=audio, codes=codes)
    except (TypeError, ValueError) as err:
        raise _Skip("bad_metadata") from err


def _resolve(shards: str | Path | Sequence[str | Path]) -> tuple[list[str], list[int | None]]:
    """Shard paths and their record counts from ``index.json`` (``None`` where no index lists a shard)."""
    if isinstance(shards, (str, Path)):
        path = Path(shards) / INDEX_FILE if Path(shards).is_dir() else Path(shards)
        shards = [path] if path.suffix != ".json" else []
        if not shards:
            index = json.loads(path.read_text())
            if index.get("format") != FORMAT:
                raise ValueError(f"{str(path)!r} is not a {FORMAT} index (format={index.get('format')!r})")
            return [str(path.parent / e["path"]) for e in index["shards"]], [
                e["num_records"] for e in index["shards"]
            ]
    if not shards:
        raise ValueError("no shards given")
    known: dict[str, int] = {}
    for parent in {Path(p).parent for p in shards}:
        if (parent / INDEX_FILE).is_file():
            entries = json.loads((parent / INDEX_FILE).read_text())["shards"]
            known.update({str(parent / e["path"]): e["num_records"] for e in entries})
    return [str(p) for p in shards], [known.get(str(Path(p))) for p in shards]
