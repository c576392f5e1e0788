"""Codec throughput: seconds of audio tokenised per second, per codec (tiny presets), batch 1 and 16.

``codec.encode`` on noise clips at the codec's own sample rate (no resampling), through the public
``AudioCodec`` API (validation, padding to the hop, masking included). Entries per codec:

* ``codecs.<name>.batch1``: audio seconds / wall second at batch 1, against real time (1 s/s): the
  ratio is the real-time factor;
* ``codecs.<name>.batch16``: the same at batch 16, against batch 1: the ratio is what batching buys.

Both are informational (no target): the tiny presets are random-init stand-ins for the real codecs.
"""

from __future__ import annotations

from typing import Any

import torch

from benchmarks.harness import entry, median_time

NAME = "codecs"
CODECS = ("xcodec", "encodec", "dac")

SIZES: dict[str, dict[str, Any]] = {
    "full": {"seconds": 10.0, "batches": (1, 16), "repeats": 5},
    "quick": {"seconds": 2.0, "batches": (1, 16), "repeats": 3},
    "smoke": {"seconds": 0.2, "batches": (1, 2), "repeats": 1},
}


def run(size: str = "full") -> list[dict[str, Any]]:
    from bagpiper_lib import codecs

    cfg = SIZES[size]
    seconds, repeats = cfg["seconds"], cfg["repeats"]
    small, large = cfg["batches"]
    results = []
    for name in CODECS:
        try:
            codec = codecs.build({"name": name, "preset": "tiny"})
        except ImportError as err:  # optional reference packages (encodec, descript-audio-codec)
            from benchmarks.harness import skipped

            results += [
                skipped(f"codecs.{name}.batch{b}", str(err), unit="audio s/s") for b in (small, large)
            ]
            continue
        gen = torch.Generator().manual_seed(0)
        samples = int(seconds * codec.sample_rate)
        rate = {}
        for batch in (small, large):
            wav = torch.randn(batch, samples, generator=gen) * 0.1
            codes, frames = codec.encode(wav)
            if codes.shape[:2] != (batch, codec.num_codebooks):
                raise AssertionError(f"{name}: codes of shape {tuple(codes.shape)}")
            t, times = median_time(lambda wav=wav, codec=codec: codec.encode(wav), repeats)
            rate[batch] = batch * seconds / t
            results.append(
                entry(
                    f"codecs.{name}.batch{batch}",
                    rate[batch],
                    1.0 if batch == small else rate[small],
                    unit="audio s/s",
                    baseline_name="real time" if batch == small else f"batch {small}",
                    repeats=repeats,
                    clip_seconds=seconds,
                    batch=batch,
                    sample_rate=codec.sample_rate,
                    frame_rate=codec.frame_rate,
                    codebooks=codec.num_codebooks,
                    frames_per_clip=int(frames[0]),
                    seconds_per_call=t,
                )
            )
    return results
