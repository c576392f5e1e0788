"""Packing: real-token fraction and training tokens/s of packed rows vs padded batches.

Two corpora of synthetic :class:`~bagpiper_lib.sequence.Sample`, each built and trained by its own model:

* ``demo``: the demo's own samples, from the model of ``recipes/configs/demo.yaml`` (its 512-id BPE,
  log-mel encoder with 4x stacking, 8 x 1024 X-Codec ids, delay pattern, 4-layer 128-wide Qwen3):
  synthetic records with the demo's clip durations (1.0-1.5 s) drawn by the task mixture with the
  demo's task ratios (caption -> audio 50 : audio -> caption 400 : text only 25); about 10-260
  positions, median about 130. The step is that model's.
* ``skewed``: built by the tiny model (byte tokenizer, 8 x 1024 X-Codec ids, delay pattern, 2-layer
  64-wide Qwen3): log-normal lengths (median 48 positions, sigma 1.1, clipped to 16-1024), mostly
  short text-only samples and a tail of long caption -> audio samples, the shape where padding hurts
  most.

Packed: :func:`~bagpiper_lib.sequence.plan_rows` / :func:`~bagpiper_lib.sequence.pack`
(best-fit-decreasing) into rows of ``budget`` = 1024 positions; padded:
:func:`~bagpiper_lib.sequence.collate_padded` over batches of 8 samples in corpus (random) order, as a
shuffling loader without length bucketing yields them.

Entries per corpus:

* ``packing.<corpus>.slots_used``: real tokens / slots over the whole corpus, packed vs padded
  (target >= 0.99);
* ``packing.<corpus>.tokens_per_s``: real tokens per second of a training step of the corpus's model (forward,
  chunked loss, backward), packed vs padded, on the same samples both ways (those of the first
  ``rows`` rows of the corpus plan); target >= 1.5x on the skewed corpus, informational on demo;
* ``packing.<corpus>.body_tokens_per_s``: the same through the input embedding (audio encoder
  included) and the backbone only, with a dummy objective instead of the loss; informational: the
  part of the step that padding inflates.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import yaml

from benchmarks.common import caption, pack_rows, random_codes, tiny_model
from benchmarks.harness import Target, entry, time_pair

NAME = "packing"

SIZES: dict[str, dict[str, Any]] = {
    # demo / skewed: corpus sizes (enough rows that the last, partial row is < 1 %);
    # rows: packed rows (and the same samples padded) on which throughput is timed
    "full": {
        "demo": 4000,
        "skewed": 6000,
        "budget": 1024,
        "batch": 8,
        "rows": {"demo": 8, "skewed": 16},
        "repeats": 5,
    },
    "quick": {
        "demo": 1000,
        "skewed": 1500,
        "budget": 1024,
        "batch": 8,
        "rows": {"demo": 2, "skewed": 4},
        "repeats": 3,
    },
    "smoke": {
        "demo": 40,
        "skewed": 60,
        "budget": 1024,
        "batch": 4,
        "rows": {"demo": 1, "skewed": 1},
        "repeats": 1,
    },
}


DEMO_CONFIG = Path(__file__).resolve().parents[1] / "recipes" / "configs" / "demo.yaml"
_MODEL_KEYS = ("codec", "encoder", "adaptor", "backbone", "tokenizer", "pattern", "vocabulary", "head")


def _demo_yaml() -> dict[str, Any]:
    try:
        return yaml.safe_load(DEMO_CONFIG.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise FileNotFoundError(f"the packing benchmark reads the demo config {DEMO_CONFIG}: {err}") from err


def demo_settings() -> tuple[dict[str, float], tuple[float, float]]:
    """Task ratios and clip durations of ``recipes/configs/demo.yaml``."""
    data = _demo_yaml()["data"]
    tasks = {k: float(v) for k, v in data["tasks"].items()}
    return tasks, tuple(float(x) for x in data["source"]["duration"])


def demo_model(max_positions: int):
    """The demo's model (``model`` section of ``recipes/configs/demo.yaml``), context ``max_positions``."""
    from bagpiper_lib.model import BagpiperModel

    spec = {k: v for k, v in _demo_yaml()["model"].items() if k in _MODEL_KEYS}
    backbone = dict(spec["backbone"])
    backbone["config"] = {**backbone.get("config", {}), "max_position_embeddings": int(max_positions)}
    torch.manual_seed(0)
    return BagpiperModel.from_config({**spec, "backbone": backbone})


def demo_corpus(model, n: int, seed: int = 0) -> list:
    """``n`` samples drawn the way the demo draws them: synthetic records + the task mixture.

    Codes for caption -> audio are random with the codec's frame count (the lengths the codec would
    give, without spending the benchmark's time on encoding). Without an audio encoder the
    audio -> caption task is left out.
    """
    from bagpiper_lib.data import synthetic
    from bagpiper_lib.data.mixture import TaskMixture

    tasks, duration = demo_settings()
    if model.encoder is None:
        tasks.pop("audio_to_caption", None)
    records = synthetic.generate(min(n, 200), seed=seed, duration=duration)
    texts = synthetic.text_corpus(min(n, 200), seed=seed)
    rng = torch.Generator().manual_seed(seed)
    k, size = model.vocab.num_codebooks, model.vocab.codebook_size
    for record in records:
        record.codes = random_codes(rng, k, int(model.codec.num_frames(record.audio.shape[0])), size)
    return TaskMixture(model.builder, records, texts, ratios=tasks, seed=seed).take(n)


def skewed_corpus(model, n: int, budget: int, seed: int = 1) -> list:
    """Log-normal lengths (median 48, sigma 1.1) clipped to ``[16, budget]``: text-only samples below 128
    positions, caption -> audio samples (40-byte caption, no system prompt) from 128 up."""
    from bagpiper_lib.sequence import templates

    rng = torch.Generator().manual_seed(seed)
    k, size = model.vocab.num_codebooks, model.vocab.codebook_size
    lengths = (torch.randn(n, generator=rng) * 1.1 + math.log(48)).exp().round().clamp(16, budget).long()
    out = []
    for i, length in enumerate(lengths.tolist()):
        if length < 128:
            messages = templates.text_only(caption(rng, length - 4))  # bos, role, modality, eos
        else:
            text = 40  # bos + (role, modality, text, end) + (role, modality, delay tail..., end)
            frames = length - 1 - (3 + text) - (3 + model.pattern.max_delay)
            codes = random_codes(rng, k, frames, size)
            messages = templates.caption_to_audio(caption(rng, text), codes, system="")
        out.append(model.builder.build(messages, id=f"skewed-{i}"))
        assert len(out[-1]) == length, (len(out[-1]), length)
    return out


def padded_batches(samples: list, batch: int) -> list[list]:
    return [samples[i : i + batch] for i in range(0, len(samples), batch)]


def run(size: str = "full") -> list[dict[str, Any]]:
    from bagpiper_lib.sequence import collate_padded, pack, plan_rows

    cfg = SIZES[size]
    budget, batch, repeats = cfg["budget"], cfg["batch"], cfg["repeats"]
    results = []
    for corpus_name in ("demo", "skewed"):
        if corpus_name == "demo":
            model = demo_model(max_positions=budget)
            samples = demo_corpus(model, cfg["demo"])
        else:
            model = tiny_model(max_positions=budget)
            samples = skewed_corpus(model, cfg["skewed"], budget)
        model.train()
        pad_ids = model._stream_pads
        lengths = [len(s) for s in samples]
        plan = plan_rows(lengths, budget)
        packed_report = plan.report()
        padded = padded_batches(samples, batch)
        padded_real = sum(lengths)
        padded_slots = sum(len(b) * max(len(s) for s in b) for b in padded)
        results.append(
            entry(
                f"packing.{corpus_name}.slots_used",
                packed_report.efficiency,
                padded_real / padded_slots,
                unit="real tokens / slots",
                baseline_name=f"padded batches of {batch}",
                target=Target("value", ">=", 0.99),
                samples=len(samples),
                budget=budget,
                rows=packed_report.num_rows,
                mean_length=padded_real / len(samples),
                max_length=max(lengths),
                slots_used_at_2x_budget=plan_rows(lengths, 2 * budget).report().efficiency,
            )
        )

        # Throughput on the same samples both ways: those of the first ``rows`` rows of the corpus
        # plan (rows come in random order, each filled as the packer fills a corpus), packed as
        # planned vs padded in batches of ``batch`` in their corpus order.
        rows = cfg["rows"][corpus_name]  # the skewed corpus varies more from row to row: more rows
        packed = [pack_rows(samples, budget, rows, pad_ids)]
        subset = [samples[i] for i in sorted(i for row in plan.rows[:rows] for i in row)]
        padded_subset = [collate_padded(group, pad_ids) for group in padded_batches(subset, batch)]
        real = sum(len(s) for s in subset)
        assert real == int(packed[0].attention_mask.sum())
        shape = {
            "samples": len(subset),
            "real_tokens": real,
            "packed_slots": sum(b.tokens.shape[0] * b.tokens.shape[1] for b in packed),
            "padded_slots": sum(b.tokens.shape[0] * b.tokens.shape[1] for b in padded_subset),
        }

        def train_step(batches, model=model):
            for b in batches:
                model.zero_grad(set_to_none=True)
                model(b).loss.backward()

        def body_step(batches, model=model):
            """Embedding + backbone only, forward + backward of a dummy objective."""
            for b in batches:
                model.zero_grad(set_to_none=True)
                hidden = model.backbone(model.input_embeddings(b.tokens, b.audio_in), b.position_ids)
                hidden.float().square().mean().backward()

        warm = pack(samples[:2], budget, pad_ids)
        for name, step, target in (
            ("tokens_per_s", train_step, Target("ratio", ">=", 1.5) if corpus_name == "skewed" else None),
            ("body_tokens_per_s", body_step, None),
        ):
            step([warm])
            packed_s, padded_s, _ = time_pair(
                lambda step=step, b=packed: step(b),
                lambda step=step, b=padded_subset: step(b),
                repeats,
                warmup=0,
            )
            results.append(
                entry(
                    f"packing.{corpus_name}.{name}",
                    real / packed_s,
                    real / padded_s,
                    unit="real tokens/s (fwd+bwd)" + (", backbone only" if step is body_step else ""),
                    baseline_name=f"padded batches of {batch}",
                    target=target,
                    repeats=repeats,
                    **shape,
                )
            )
    return results
