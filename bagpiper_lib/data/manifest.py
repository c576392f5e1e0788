"""JSONL manifests of audio-caption records and a fault-tolerant audio loader.

A manifest holds one JSON object per line::

    {"id": "yt_0001", "caption": "A man speaks calmly ...", "category": "speech", "audio": "wav/yt_0001.flac",
     "duration": 12.4, "sample_rate": 44100, "short_caption": "calm male speech",
     "quality": {"audio": 3.2}, "params": {...}, "codes": {"xcodec": "codes/xcodec/yt_0001.codes.npy"}}

Required: ``id``, ``caption``, ``category`` (speech / music / sound) and ``audio``, a path relative to the
manifest's folder or absolute. Optional: ``duration``, ``sample_rate``, ``short_caption``, ``quality``,
``params`` and ``codes``, a ``{codec_name: path}`` map of pre-tokenised codes (see ``prepare``; a plain
path string is accepted together with a ``codec`` field naming it). Paths are resolved when read, so a
record's ``path`` is absolute; the codes map travels in ``record.params[CODE_FILES]``. Blank lines are
skipped and unknown fields are ignored. Errors name the file, the line and the field.

Declared ``sample_rate``s may differ across lines: by default that is fine, :class:`AudioLoader`
resamples every clip to its rate. ``strict_sample_rate=True`` instead raises on the first line whose
declared rate differs from an earlier one, naming both rates and both lines.

:class:`AudioLoader` reads a record's audio with ``soundfile`` (mono, pure-torch resampling), applies
the paper's crop policy to clips longer than ``max_seconds`` (a random window, the head, or reject) and
skips unreadable, corrupt, empty or NaN audio, counting each reason in ``loader.skipped``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bagpiper_lib.audio import resample, save_audio
from bagpiper_lib.data.records import CATEGORIES, Record

__all__ = [
    "CODE_FILES",
    "REQUIRED_FIELDS",
    "AudioError",
    "AudioLoader",
    "ManifestError",
    "iter_manifest",
    "read_manifest",
    "safe_stem",
    "write_manifest",
]

REQUIRED_FIELDS = ("id", "caption", "category", "audio")
CODE_FILES = "code_files"  # key in ``Record.params``: {codec_name: absolute path of a .codes.npy file}
CROP_POLICIES = ("random", "head", "reject")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


class ManifestError(ValueError):
    """A malformed manifest line; ``path`` and ``line`` (1-based) locate it."""

    def __init__(self, path: str | Path, line: int, message: str) -> None:
        self.path, self.line = str(path), line
        super().__init__(f"{self.path}, line {line}: {message}")


class AudioError(ValueError):
    """Audio that cannot be used; ``reason`` is one of :attr:`AudioLoader.REASONS`."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


def safe_stem(record_id: str) -> str:
    """A file-name stem for ``record_id``: the id itself when it only uses ``[A-Za-z0-9_-]``, otherwise
    the id with other characters replaced by ``_`` plus a CRC32 suffix, so distinct ids stay distinct."""
    clean = _UNSAFE.sub("_", record_id)
    if clean == record_id and clean:
        return clean
    return f"{clean[:80]}-{zlib.crc32(record_id.encode()):08x}"


# ---------------------------------------------------------------------------------------------- reading


def iter_manifest(path: str | Path, *, strict_sample_rate: bool = False) -> Iterator[Record]:
    """Yield the :class:`Record` of each line of the JSONL manifest at ``path`` (audio not loaded).

    Raises :class:`ManifestError` naming the line for bad JSON, a missing or mistyped field and, with
    ``strict_sample_rate``, a declared ``sample_rate`` that differs from an earlier line's.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {str(path)!r} does not exist")
    root = path.resolve().parent
    first_rate: tuple[int, int] | None = None  # (rate, line)
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise ManifestError(
                    path, line_no, f"invalid JSON ({err.msg} at column {err.colno})"
                ) from None
            record = _record_from_json(obj, root, path, line_no)
            if strict_sample_rate and record.sample_rate is not None:
                if first_rate is None:
                    first_rate = (record.sample_rate, line_no)
                elif record.sample_rate != first_rate[0]:
                    raise ManifestError(
                        path,
                        line_no,
                        f"sample_rate {record.sample_rate} differs from sample_rate {first_rate[0]} on line "
                        f"{first_rate[1]} (strict_sample_rate=True; leave it False to resample on load)",
                    )
            yield record


def read_manifest(path: str | Path, *, strict_sample_rate: bool = False) -> list[Record]:
    """All records of a JSONL manifest; see :func:`iter_manifest`."""
    return list(iter_manifest(path, strict_sample_rate=strict_sample_rate))


_FIELD_TYPES: dict[str, tuple[type | tuple[type, ...], str]] = {
    "id": ((str, int), "a string"),
    "caption": (str, "a string"),
    "category": (str, "a string"),
    "audio": (str, "a path string"),
    "duration": ((int, float), "a number of seconds"),
    "sample_rate": (int, "an integer"),
    "short_caption": (str, "a string"),
    "quality": (dict, "an object"),
    "params": (dict, "an object"),
    "codes": ((dict, str), "an object {codec: path} or a path"),
    "codec": (str, "a string"),
}


def _record_from_json(obj: Any, root: Path, path: Path, line: int) -> Record:
    def fail(message: str) -> ManifestError:
        return ManifestError(path, line, message)

    if not isinstance(obj, dict):
        raise fail(f"expected a JSON object, got {type(obj).__name__}")
    for name in REQUIRED_FIELDS:
        if name not in obj:
            raise fail(f"missing required field {name!r} (required: {', '.join(REQUIRED_FIELDS)})")
    for name, (types, label) in _FIELD_TYPES.items():
        value = obj.get(name)
        if value is not None and (not isinstance(value, types) or isinstance(value, bool)):
            raise fail(f"field {name!r} must be {label}, got {type(value).__name__} {value!r:.60}")
    if obj["category"] not in CATEGORIES:
        raise fail(f"field 'category' must be one of {list(CATEGORIES)}, got {obj['category']!r}")
    if not obj["audio"].strip():
        raise fail("field 'audio' is an empty path")
    rate = obj.get("sample_rate")
    if rate is not None and rate <= 0:
        raise fail(f"field 'sample_rate' must be a positive integer, got {rate}")
    codes = obj.get("codes") or {}
    if isinstance(codes, str):
        if not obj.get("codec"):
            raise fail("field 'codes' is a single path: add a 'codec' field naming its codec, or use a map")
        codes = {obj["codec"]: codes}
    if not all(isinstance(v, str) for v in codes.values()):
        raise fail("field 'codes' must map codec names to paths of .codes.npy files")
    params = dict(obj.get("params") or {})
    if codes:
        params[CODE_FILES] = {name: str(root / p) for name, p in codes.items()}
    try:
        return Record(
            id=str(obj["id"]),
            caption=obj["caption"],
            category=obj["category"],
            sample_rate=rate,
            path=str(root / obj["audio"]),
            duration=None if obj.get("duration") is None else float(obj["duration"]),
            short_caption=obj.get("short_caption") or "",
            params=params,
            quality=dict(obj.get("quality") or {}),
            codec=obj.get("codec"),
        )
    except ValueError as err:
        raise fail(str(err)) from None


# ---------------------------------------------------------------------------------------------- writing


def write_manifest(
    records: Iterable[Record], path: str | Path, *, audio_dir: str | Path | None = None
) -> Path:
    """Write ``records`` as a JSONL manifest at ``path`` (atomically, via a temporary file).

    Paths inside the manifest's folder are written relative to it (the folder can move), others
    absolute. A record with in-memory ``audio`` but no ``path`` has it saved as 16-bit WAV under
    ``audio_dir`` (default ``<manifest folder>/audio``). Records are not modified. Declared fields
    (``duration``, ``sample_rate``) are written as they stand on the record.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    root = path.resolve().parent
    audio_dir = Path(audio_dir) if audio_dir is not None else root / "audio"
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(_record_to_json(record, root, audio_dir), ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path


def _portable(file: str | Path, root: Path) -> str:
    file = Path(file).resolve()
    return file.relative_to(root).as_posix() if file.is_relative_to(root) else str(file)


def _record_to_json(record: Record, root: Path, audio_dir: Path) -> dict[str, Any]:
    if record.path is not None:
        audio = record.path
    elif record.audio is not None:
        audio = audio_dir / f"{safe_stem(record.id)}.wav"
        save_audio(audio, record.audio, record.sample_rate)
    else:
        raise ValueError(f"record {record.id!r} has neither a path nor in-memory audio to write")
    obj: dict[str, Any] = {
        "id": record.id,
        "caption": record.caption,
        "category": record.category,
        "audio": _portable(audio, root),
    }
    if record.duration is not None:
        obj["duration"] = round(float(record.duration), 6)
    if record.sample_rate is not None:
        obj["sample_rate"] = int(record.sample_rate)
    if record.short_caption:
        obj["short_caption"] = record.short_caption
    if record.quality:
        obj["quality"] = record.quality
    params = {k: v for k, v in record.params.items() if k != CODE_FILES}
    if params:
        obj["params"] = params
    if record.params.get(CODE_FILES):
        obj["codes"] = {name: _portable(p, root) for name, p in record.params[CODE_FILES].items()}
    if record.codec is not None:
        obj["codec"] = record.codec
    return obj


# ---------------------------------------------------------------------------------------------- loading


class AudioLoader:
    """Load a record's audio as mono float32 ``[N]`` at ``sample_rate``, skipping and counting bad clips.

    Args:
        sample_rate: output rate in Hz (pure-torch polyphase resampling); ``None`` keeps each file's rate.
        max_seconds: longest clip kept whole (paper: 30 s); ``None`` disables cropping.
        crop: what to do with longer clips: ``"random"`` keeps a random ``max_seconds`` window (drawn
            from ``(seed, epoch, id)``, so a given seed gives the same window in any order or process),
            ``"head"`` keeps the first ``max_seconds``, ``"reject"`` skips the clip (reason ``too_long``).
        seed: seed of the random windows; :meth:`set_epoch` draws new windows per epoch.

    Only the kept window is read from disk (``soundfile`` seeks), so hour-long files cost 30 s of IO.
    :meth:`load` raises :class:`AudioError`; :meth:`load_or_none` (also ``loader(record)``) returns
    ``None`` and counts the reason in :attr:`skipped`.
    """

    REASONS = ("missing", "unreadable", "empty", "non_finite", "too_long")

    def __init__(
        self,
        sample_rate: int | None = None,
        max_seconds: float | None = 30.0,
        crop: str = "random",
        seed: int = 0,
    ) -> None:
        if crop not in CROP_POLICIES:
            raise ValueError(f"crop must be one of {list(CROP_POLICIES)}, got {crop!r}")
        if sample_rate is not None and (int(sample_rate) != sample_rate or sample_rate <= 0):
            raise ValueError(f"sample_rate must be a positive integer or None, got {sample_rate!r}")
        if max_seconds is not None and max_seconds <= 0:
            raise ValueError(f"max_seconds must be positive or None, got {max_seconds!r}")
        self.sample_rate = None if sample_rate is None else int(sample_rate)
        self.max_seconds, self.crop, self.seed, self.epoch = max_seconds, crop, int(seed), 0
        self.skipped: Counter[str] = Counter()

    def set_epoch(self, epoch: int) -> None:
        """Draw the random crop windows of ``epoch`` (the same ``seed`` and epoch give the same windows)."""
        self.epoch = int(epoch)

    def window(self, record_id: str, num_samples: int, sample_rate: int) -> tuple[int, int]:
        """``(start, stop)`` sample indices kept from a clip of ``num_samples`` at ``sample_rate``."""
        if self.max_seconds is None:
            return 0, num_samples
        keep = round(self.max_seconds * sample_rate)
        if num_samples <= keep:
            return 0, num_samples
        if self.crop == "reject":
            raise AudioError(
                "too_long", f"record {record_id!r}: {num_samples / sample_rate:.2f} s > {self.max_seconds} s"
            )
        if self.crop == "head":
            return 0, keep
        rng = np.random.default_rng([self.seed, self.epoch, zlib.crc32(record_id.encode())])
        start = int(rng.integers(0, num_samples - keep + 1))
        return start, start + keep

    def load(self, record: Record) -> Record:
        """A copy of ``record`` with ``audio [N]``, ``sample_rate`` and ``duration`` of the loaded clip."""
        if record.audio is not None:
            sr = int(record.sample_rate)
            start, stop = self.window(record.id, record.audio.shape[0], sr)
            wav = record.audio[start:stop].float()
        elif record.path is not None:
            wav, sr = self._read(record)
        else:
            raise AudioError("missing", f"record {record.id!r} has neither audio nor a path")
        if wav.numel() == 0:
            raise AudioError("empty", f"record {record.id!r}: audio is empty")
        if not bool(torch.isfinite(wav).all()):
            raise AudioError("non_finite", f"record {record.id!r}: audio contains NaN or Inf samples")
        if self.sample_rate is not None and sr != self.sample_rate:
            wav, sr = resample(wav, sr, self.sample_rate), self.sample_rate
            if self.max_seconds is not None:  # rate ratios can round one sample over the window
                wav = wav[: round(self.max_seconds * sr)]
        return dataclasses.replace(record, audio=wav.contiguous(), sample_rate=sr, duration=wav.shape[0] / sr)

    def _read(self, record: Record) -> tuple[torch.Tensor, int]:
        import soundfile as sf

        path = str(record.path)
        if not os.path.isfile(path):
            raise AudioError("missing", f"record {record.id!r}: audio file {path!r} does not exist")
        try:
            info = sf.info(path)
            if info.frames <= 0:
                raise AudioError("empty", f"record {record.id!r}: audio file {path!r} has no samples")
            start, stop = self.window(record.id, info.frames, info.samplerate)
            data = sf.read(path, start=start, stop=stop, dtype="float32", always_2d=True)[0]
        except AudioError:
            raise
        except Exception as err:  # soundfile raises several types for corrupt files
            raise AudioError("unreadable", f"record {record.id!r}: cannot read {path!r}: {err}") from err
        return torch.from_numpy(np.ascontiguousarray(data.mean(axis=1))), int(info.samplerate)

    def load_or_none(self, record: Record) -> Record | None:
        """:meth:`load`, or ``None`` with the reason counted in :attr:`skipped`."""
        try:
            return self.load(record)
        except AudioError as err:
            self.skipped[err.reason] += 1
            return None

    __call__ = load_or_none

    def iter_loaded(self, records: Iterable[Record]) -> Iterator[Record]:
        """The loaded records, bad ones skipped and counted."""
        for record in records:
            loaded = self.load_or_none(record)
            if loaded is not None:
                yield loaded
