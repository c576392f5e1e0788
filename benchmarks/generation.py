"""Generation: KV-cached decoding vs full-prefix recompute, ``BagpiperModel.generate``, batched CFG.

Raw comparison on the tiny backbone (context raised to 4096 positions), one row, a 32-position prompt:

* cached: ``backbone.allocate_cache(rows, prompt + steps)``, prefill, then one position per step;
* recompute: every step runs the whole prefix again without a cache (what decoding costs without one).
  In the full run every step is run; ``--quick`` runs the recompute forward at 16 evenly spaced
  prefix lengths and integrates (trapezoid) over the others: a step's cost depends only on its prefix
  length, so this estimates the same sum.

The last hidden state of both is asserted equal. Entries:

* ``generation.cached_vs_recompute_<N>``: decoding steps/s, cached vs recompute, at N = 256 and 1024
  steps (target >= 5x at 1024);
* ``generation.cached_step_flat``: median seconds of a cached step with ~1024 filled positions vs
  ~256, same cache size, the two interleaved (target <= 1.25: the per-step cost must not grow);
* ``generation.generate``: ``BagpiperModel.generate`` audio frames/s (plan ``["audio"]``, exactly N frames,
  no guidance) vs the raw cached backbone steps/s (informational: the decoding logic's share);
* ``generation.cfg_batched``: raw cached step with 2 rows (conditional + unconditional in one forward)
  vs the unguided 1-row step (target <= 1.3); two separate 1-row passes are recorded alongside;
* ``generation.generate_cfg``: ``generate`` with ``cfg_scale=3`` vs ``cfg_scale=1`` (target <= 1.3).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from benchmarks.common import caption, tiny_model
from benchmarks.harness import Target, entry, median_time, time_pair

NAME = "generation"

SIZES: dict[str, dict[str, Any]] = {
    # steps: the two decode lengths; samples: recompute steps actually run per decode (None: all);
    # cfg_steps / frames: CFG and generate
    "full": {
        "steps": (256, 1024),
        "prompt": 32,
        "samples": None,
        "cfg_steps": 256,
        "frames": 256,
        "repeats": 5,
    },
    "quick": {"steps": (256, 1024), "prompt": 32, "samples": 16, "cfg_steps": 64, "frames": 32, "repeats": 3},
    "smoke": {"steps": (8, 32), "prompt": 4, "samples": 4, "cfg_steps": 4, "frames": 4, "repeats": 1},
}


def _backbone(max_positions: int):
    from bagpiper_lib import backbones
    from bagpiper_lib.backbones.presets import TINY_QWEN3

    torch.manual_seed(0)
    spec = {"name": "qwen3", "config": {**TINY_QWEN3, "max_position_embeddings": max_positions}}
    return backbones.build(spec).eval()


@torch.no_grad()
def cached_decode(backbone, embeds: torch.Tensor, prompt: int) -> torch.Tensor:
    """Prefill ``prompt`` positions, then decode the rest of ``embeds [B, P + N, H]`` one step at a time."""
    rows, total = embeds.shape[:2]
    positions = torch.arange(total)[None].expand(rows, -1)
    cache = backbone.allocate_cache(rows, total)
    hidden = backbone(embeds[:, :prompt], positions[:, :prompt], cache=cache)
    for t in range(prompt, total):
        hidden = backbone(embeds[:, t : t + 1], positions[:, t : t + 1], cache=cache)
    return hidden[:, -1]


@torch.no_grad()
def recompute_decode(
    backbone, embeds: torch.Tensor, prompt: int, stride: int = 1
) -> tuple[float, torch.Tensor]:
    """Seconds of decoding without a cache (every step reruns its whole prefix) and the last hidden.

    With ``stride > 1`` only every ``stride``-th step (and the last) is run; the others are
    interpolated linearly between their neighbours' measured costs.
    """
    rows, total = embeds.shape[:2]
    positions = torch.arange(total)[None].expand(rows, -1)
    steps = list(range(prompt, total))  # step t predicts from prefix [0, t + 1)
    sampled = sorted(set(steps[::stride]) | {steps[-1]})
    cost: dict[int, float] = {}
    hidden = None
    for t in sampled:
        start = time.perf_counter()
        hidden = backbone(embeds[:, : t + 1], positions[:, : t + 1])[:, -1]
        cost[t] = time.perf_counter() - start
    total_s = 0.0
    for a, b in zip(sampled, sampled[1:]):  # trapezoid over the steps between two measured ones
        total_s += (cost[a] + cost[b]) / 2 * (b - a)
    total_s += cost[sampled[0]]
    return total_s, hidden


def _prompt(model, rng: torch.Generator):
    from bagpiper_lib.sequence.messages import Message

    return model.prompt([Message("user", "text", caption(rng, 24))])


def run(size: str = "full") -> list[dict[str, Any]]:
    cfg = SIZES[size]
    short, long = cfg["steps"]
    prompt, repeats, samples = cfg["prompt"], cfg["repeats"], cfg["samples"]
    backbone = _backbone(max_positions=4096)
    hidden_size = backbone.hidden_size
    gen = torch.Generator().manual_seed(0)
    results = []

    # --------------------------------------------------------------- cached vs recompute
    for steps in (short, long):
        embeds = torch.randn(1, prompt + steps, hidden_size, generator=gen)
        last: dict[str, torch.Tensor] = {}  # the timed runs double as the parity check's input

        def cached(e=embeds, last=last):
            last["hidden"] = cached_decode(backbone, e, prompt)

        cached_s, cached_times = median_time(cached, repeats, warmup=0)
        last_cached = last["hidden"]
        stride = 1 if samples is None else max(1, steps // samples)
        runs = [recompute_decode(backbone, embeds, prompt, stride) for _ in range(repeats)]
        recompute_s = sorted(r[0] for r in runs)[len(runs) // 2]
        if not torch.allclose(last_cached, runs[0][1], atol=1e-4, rtol=1e-4):
            raise AssertionError("cached and recomputed decoding disagree on the last hidden state")
        results.append(
            entry(
                f"generation.cached_vs_recompute_{steps}",
                steps / cached_s,
                steps / recompute_s,
                unit="steps/s",
                baseline_name="full-prefix recompute, no cache",
                target=Target("ratio", ">=", 5.0) if steps == long else None,
                repeats=repeats,
                rows=1,
                prompt=prompt,
                steps=steps,
                recompute_stride=stride,
                cached_times=cached_times,
            )
        )
    # Flatness: one cache sized for the long decode, prefilled to ~prompt + long or to ~prompt + short
    # positions, then ``window`` timed steps; the two fill levels alternate (ABBA) and each is the
    # median over all its steps, so load drift and the odd interrupted step hit both alike.
    window = max(1, short // 4)
    total = prompt + long
    embeds = torch.randn(1, total, hidden_size, generator=gen)
    positions = torch.arange(total)[None]
    times: dict[int, list[float]] = {total - window: [], prompt + short - window: []}
    with torch.no_grad():
        for rep in range(max(repeats, 5)):
            for fill in list(times) if rep % 2 == 0 else list(times)[::-1]:
                cache = backbone.allocate_cache(1, total)
                backbone(embeds[:, :fill], positions[:, :fill], cache=cache)
                for t in range(fill, fill + window):
                    start = time.perf_counter()
                    backbone(embeds[:, t : t + 1], positions[:, t : t + 1], cache=cache)
                    times[fill].append(time.perf_counter() - start)
    late, early = (statistics.median(v) for v in times.values())
    results.append(
        entry(
            "generation.cached_step_flat",
            late,
            early,
            unit="s per cached step (median)",
            baseline_name=f"cached step at ~{short} filled positions, same cache size",
            target=Target("ratio", "<=", 1.25),
            repeats=max(repeats, 5),
            steps=[short, long],
            window=window,
        )
    )

    # --------------------------------------------------------------- batched CFG, raw backbone
    cfg_steps = cfg["cfg_steps"]
    embeds = torch.randn(2, prompt + cfg_steps, hidden_size, generator=gen)

    def unguided():
        cached_decode(backbone, embeds[:1], prompt)

    def batched():
        cached_decode(backbone, embeds, prompt)

    def two_passes():  # two rows, each its own cache and forward per step
        rows, total = 1, prompt + cfg_steps
        positions = torch.arange(total)[None]
        caches = [backbone.allocate_cache(rows, total) for _ in range(2)]
        with torch.no_grad():
            for r in range(2):
                backbone(embeds[r : r + 1, :prompt], positions[:, :prompt], cache=caches[r])
            for t in range(prompt, total):
                for r in range(2):
                    backbone(embeds[r : r + 1, t : t + 1], positions[:, t : t + 1], cache=caches[r])

    batched_s, unguided_s, _ = time_pair(batched, unguided, repeats)
    two_s, _ = median_time(two_passes, repeats, warmup=0)
    results.append(
        entry(
            "generation.cfg_batched",
            batched_s / cfg_steps,
            unguided_s / cfg_steps,
            unit="s per step",
            baseline_name="unguided (1 row)",
            target=Target("ratio", "<=", 1.3),
            repeats=repeats,
            steps=cfg_steps,
            two_passes_s_per_step=two_s / cfg_steps,
            batched_vs_two_passes=batched_s / two_s,
        )
    )

    # --------------------------------------------------------------- BagpiperModel.generate
    frames = cfg["frames"]
    model = tiny_model(max_positions=4096).eval()
    request = _prompt(model, gen)

    def generate(scale: float):
        audio = {"max_steps": frames, "min_steps": frames, "cfg_scale": scale}
        return model.generate([request], ["audio"], text={"max_steps": 1}, audio=audio, seed=0)

    codes = generate(1.0)[0][0].codes
    if codes is None or codes.shape != (model.vocab.num_codebooks, frames):
        raise AssertionError(
            f"generate produced codes of shape {getattr(codes, 'shape', None)}, not [K, {frames}]"
        )
    steps = frames + model.pattern.max_delay + 3  # role, modality, frames + delay tail, end
    guided_s, plain_s, _ = time_pair(lambda: generate(3.0), lambda: generate(1.0), repeats, warmup=0)
    embeds = torch.randn(1, len(request) + steps, hidden_size, generator=gen)
    raw_s, _ = median_time(lambda: cached_decode(model.backbone, embeds, len(request)), repeats)
    results.append(
        entry(
            "generation.generate",
            frames / plain_s,
            steps / raw_s,
            unit="frames/s (generate) vs steps/s (raw)",
            baseline_name="raw cached backbone decoding",
            repeats=repeats,
            frames=frames,
            forward_steps=steps,
            codebooks=model.vocab.num_codebooks,
            audio_tokens_per_s=frames * model.vocab.num_codebooks / plain_s,
        )
    )
    results.append(
        entry(
            "generation.generate_cfg",
            guided_s,
            plain_s,
            unit="s per generate call",
            baseline_name="generate without guidance (cfg_scale=1)",
            target=Target("ratio", "<=", 1.3),
            repeats=repeats,
            frames=frames,
        )
    )
    return results
