"""Pre-tokenise a corpus with a codec: audio -> ``<out_dir>/<codec_name>/<id>.codes.npy``.

Training on 100M clips cannot afford to run the codec encoder in the data loader every epoch, so a
``prepare`` pass encodes each clip once and stores its codes ``[K, T]`` (int16 when the codebook fits,
else int32) next to the corpus. Codes are keyed by codec name, so every codec of an ablation keeps its
own files and the manifest maps each name to its file: ``"codes": {"xcodec": "...", "dac": "..."}``.

Batching: records are read ``sort_window`` batches at a time, sorted by length and encoded in batches of
similar length with ``lengths``, so padding stays small and memory bounded. Saved codes equal
``codec.encode`` of the clip alone: codecs whose padded batches are exact (``context_frames == 0``, or
``None``, where the codec itself groups equal lengths) get similar-length batches; codecs whose last
``context_frames`` frames depend on padding are batched by equal length only (``exact=False`` trades
that for speed).

The clip that is encoded is what ``loader`` returns: by default an :class:`AudioLoader` at the codec's
rate with the paper's random 30 s window, drawn from ``(seed, epoch, id)``, so the same loader settings
reproduce the waveform that matches the codes.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path

import numpy as np
import torch

from bagpiper_lib.audio import pad_waveforms
from bagpiper_lib.data.manifest import CODE_FILES, AudioLoader, safe_stem, write_manifest
from bagpiper_lib.data.records import Record

__all__ = ["codes_path", "encode_records", "load_codes", "prepare_codes", "save_codes"]


def codes_path(out_dir: str | Path, codec_name: str, record_id: str) -> Path:
    """Where :func:`prepare_codes` stores a record's codes: ``out_dir/<codec_name>/<id>.codes.npy``."""
    return Path(out_dir) / codec_name / f"{safe_stem(record_id)}.codes.npy"


def save_codes(path: str | Path, codes: torch.Tensor, codebook_size: int | None = None) -> Path:
    """Save codes ``[K, T]`` as int16 (codebook up to 32768 entries) or int32, atomically."""
    if codes.dim() != 2 or codes.dtype.is_floating_point:
        raise ValueError(f"codes must be an integer tensor [K, T], got {codes.dtype} {tuple(codes.shape)}")
    top = int(codebook_size) if codebook_size is not None else int(codes.max()) + 1 if codes.numel() else 0
    dtype = np.int16 if top <= np.iinfo(np.int16).max + 1 else np.int32
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.save(f, codes.cpu().numpy().astype(dtype), allow_pickle=False)
    os.replace(tmp, path)
    return path


def _read_codes(path: str | Path) -> torch.Tensor:
    array = np.load(path, allow_pickle=False)
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(
            f"codes file {str(path)!r} holds {array.dtype} {array.shape}, expected integer [K, T]"
        )
    return torch.from_numpy(array.astype(np.int64))


def load_codes(record: Record, codec_name: str) -> torch.Tensor:
    """Codes ``[K, T]`` (long) of ``record`` for ``codec_name``: the in-memory ``record.codes`` when
    ``record.codec`` is that codec, else the file named in the manifest's ``codes`` map."""
    if record.codes is not None and record.codec == codec_name:
        return record.codes
    files = record.params.get(CODE_FILES) or {}
    if codec_name not in files:
        raise KeyError(
            f"record {record.id!r} has no codes for codec {codec_name!r}; available: {sorted(files)} "
            "(run prepare_codes with this codec first)"
        )
    return _read_codes(files[codec_name])


def prepare_codes(
    records: Iterable[Record],
    codec: torch.nn.Module,
    codec_spec_name: str,
    out_dir: str | Path,
    *,
    batch_size: int = 8,
    loader: AudioLoader | None = None,
    manifest: str | Path | bool = True,
    sort_window: int = 32,
    exact: bool = True,
    overwrite: bool = False,
) -> list[Record]:
    """Encode every record's audio with ``codec`` and save its codes under ``out_dir/<codec_spec_name>``.

    Args:
        records: records with ``path`` or in-memory ``audio`` (e.g. from :func:`read_manifest`).
        codec: an ``AudioCodec`` (``codecs.build(spec)``); runs on whatever device it lives on.
        codec_spec_name: the key of these codes, e.g. ``"xcodec"`` or ``"dac-12cb"``.
        batch_size: clips per ``codec.encode`` call.
        loader: reads and crops the audio; default ``AudioLoader(codec.sample_rate)``. Bad audio is
            skipped and counted in ``loader.skipped``.
        manifest: ``True`` writes ``out_dir/manifest.jsonl``, a path writes there, ``False`` writes none.
            Codes of other codecs already on the records are kept in the map.
        sort_window: batches read ahead and sorted by length (memory: ``batch_size * sort_window`` clips).
        exact: batch only equal lengths for codecs whose padded batches change the last frames.
        overwrite: re-encode clips whose codes file exists (default: reuse it, so a killed job resumes).

    Returns:
        copies of the records that were encoded, in input order, with ``codes [K, T]``, ``codec`` set and
        the codes file added to ``params[CODE_FILES]``; other fields as given (loaded audio is not kept).
    """
    if batch_size < 1 or sort_window < 1:
        raise ValueError(f"batch_size and sort_window must be >= 1, got {batch_size} and {sort_window}")
    loader = loader if loader is not None else AudioLoader(codec.sample_rate)
    by_length = exact and getattr(codec, "context_frames", 0) not in (0, None)
    out: list[Record] = []
    it = iter(records)
    while chunk := list(islice(it, batch_size * sort_window)):
        done: dict[int, Record] = {}
        todo: list[tuple[int, Record, Path, torch.Tensor]] = []  # (position, record, file, audio)
        for i, record in enumerate(chunk):
            path = codes_path(out_dir, codec_spec_name, record.id)
            if path.is_file() and not overwrite:
                done[i] = _with_codes(record, codec_spec_name, path, _read_codes(path))
            elif (loaded := loader.load_or_none(record)) is not None:
                todo.append((i, record, path, loaded.audio))
        todo.sort(key=lambda item: item[3].shape[0])
        for batch in _batches(todo, batch_size, by_length):
            for (i, record, path, _), codes in zip(batch, _encode(codec, [item[3] for item in batch])):
                save_codes(path, codes, getattr(codec, "codebook_size", None))
                done[i] = _with_codes(record, codec_spec_name, path, codes)
        out.extend(done[i] for i in sorted(done))
    if manifest is not False:
        target = Path(out_dir) / "manifest.jsonl" if manifest is True else Path(manifest)
        write_manifest(out, target)
    return out


def encode_records(
    records: list[Record], codec: torch.nn.Module, *, batch_size: int = 16, exact: bool = True
) -> list[Record]:
    """Set ``codes [K, T]`` in memory on every record that has ``audio`` and no codes yet (nothing is saved).

    Batched by length (and sample rate) like :func:`prepare_codes`; with ``exact`` a codec whose padded
    batches change the last frames only batches equal lengths, so codes equal encoding each clip alone.
    Returns ``records`` (updated in place).
    """
    by_length = exact and getattr(codec, "context_frames", 0) not in (0, None)
    todo = [r for r in records if r.codes is None and r.audio is not None]
    for rate in sorted({r.sample_rate for r in todo}):
        items = sorted(
            ((r, r.audio) for r in todo if r.sample_rate == rate), key=lambda item: item[1].shape[0]
        )
        for batch in _batches(items, batch_size, by_length, audio=1):
            for (record, _), codes in zip(batch, _encode(codec, [item[1] for item in batch], rate)):
                record.codes = codes.long()
    return records


def _batches(items: list, batch_size: int, by_length: bool, audio: int = 3) -> Iterator[list]:
    """Consecutive batches of ``items`` (their ``item[audio]`` is the waveform), equal lengths only if asked."""
    batch: list = []
    for item in items:
        if batch and (len(batch) == batch_size or (by_length and item[audio].shape != batch[0][audio].shape)):
            yield batch
            batch = []
        batch.append(item)
    if batch:
        yield batch


def _encode(
    codec: torch.nn.Module, wavs: list[torch.Tensor], sample_rate: int | None = None
) -> list[torch.Tensor]:
    batch, lengths = pad_waveforms(wavs)
    codes, frames = codec.encode(batch, lengths, sample_rate=sample_rate)
    return [codes[row, :, : int(frames[row])].cpu() for row in range(len(wavs))]


def _with_codes(record: Record, codec_name: str, path: Path, codes: torch.Tensor) -> Record:
    params = copy.deepcopy(record.params)
    params.setdefault(CODE_FILES, {})[codec_name] = str(path.resolve())
    return dataclasses.replace(record, codes=codes.long(), codec=codec_name, params=params)
