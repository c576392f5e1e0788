"""Things several benchmarks build: the tiny model with a longer context, synthetic samples."""

from __future__ import annotations

import copy
from typing import Any

import torch

__all__ = ["tiny_model_config", "tiny_model", "caption", "random_codes", "pack_rows"]

_TEXT = (
    "a dog barks twice in a quiet street while rain falls on a tin roof and a woman laughs "
    "softly upbeat electronic music with a steady kick drum at one hundred twenty beats per minute "
    "male speaker calm voice reading the news close microphone small room light reverb"
)
_WORDS = _TEXT.split(" ")


def tiny_model_config(max_positions: int = 2048) -> dict[str, Any]:
    """The ``"tiny"`` preset with the backbone's context raised to ``max_positions`` (rotary: no new weights)."""
    from bagpiper_lib.backbones.presets import TINY_QWEN3
    from bagpiper_lib.model.bagpiper import PRESETS

    cfg = copy.deepcopy(PRESETS["tiny"])
    cfg["backbone"] = {
        "name": "qwen3",
        "preset": "tiny",
        "config": {**TINY_QWEN3, "max_position_embeddings": int(max_positions)},
    }
    return cfg


def tiny_model(max_positions: int = 2048, seed: int = 0, **overrides: Any):
    from bagpiper_lib.model import BagpiperModel

    torch.manual_seed(seed)
    return BagpiperModel.from_config({**tiny_model_config(max_positions), **overrides})


def caption(rng: torch.Generator, num_bytes: int) -> str:
    """Random English-looking text of exactly ``num_bytes`` ASCII bytes (one byte-tokenizer id each)."""
    picks = torch.randint(len(_WORDS), (num_bytes // 2 + 1,), generator=rng).tolist()
    return " ".join(_WORDS[i] for i in picks)[:num_bytes]  # every word has >= 1 byte + a space


def random_codes(rng: torch.Generator, codebooks: int, frames: int, codebook_size: int) -> torch.Tensor:
    return torch.randint(0, codebook_size, (codebooks, frames), generator=rng)


def pack_rows(samples: list, budget: int, rows: int, pad_ids: torch.Tensor, *, fullest: bool = False):
    """The first ``rows`` rows that ``plan_rows`` makes of ``samples`` (rows come in random order), packed.

    ``fullest``: the ``rows`` fullest rows instead (a steady-state training batch: the corpus's last,
    part-filled row is not among them)."""
    from bagpiper_lib.sequence import PackingPlan, collate_packed, plan_rows

    plan = plan_rows([len(s) for s in samples], budget)
    chosen = plan.rows
    if fullest:
        chosen = sorted(chosen, key=lambda row: -sum(min(plan.lengths[i], budget) for i in row))
    chosen = chosen[:rows]
    picked = [i for row in chosen for i in row]
    local = {i: j for j, i in enumerate(picked)}
    sub = PackingPlan(
        rows=[[local[i] for i in row] for row in chosen],
        truncated=[],
        rejected=[],
        budget=budget,
        lengths=[plan.lengths[i] for i in picked],
    )
    return collate_packed([samples[i] for i in picked], sub, pad_ids)
