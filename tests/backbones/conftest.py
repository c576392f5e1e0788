"""Shared helpers of the backbone tests: tiny random-init backbones and reference runs."""

from __future__ import annotations

import pytest
import torch

from bagpiper_lib import backbones

ENTRIES = ["qwen3", "llama", "hf_causal_lm"]


def tiny(name: str = "qwen3", **kwargs) -> backbones.Backbone:
    """A tiny random-init backbone of registry entry ``name`` (eval mode, so no dropout)."""
    return backbones.build({"name": name, "preset": "tiny", **kwargs}).eval()


def embeds(batch: int, length: int, hidden: int = 64, seed: int = 0) -> torch.Tensor:
    """Random inputs_embeds ``[B, T, H]`` of unit scale (what an embedding table would give)."""
    return torch.randn(batch, length, hidden, generator=torch.Generator().manual_seed(seed))


def positions(*lengths: int) -> torch.Tensor:
    """position_ids ``[1, sum(lengths)]`` of samples packed in one row, restarting at 0 per sample."""
    return torch.cat([torch.arange(n) for n in lengths])[None]


@pytest.fixture(autouse=True, scope="package")
def _one_thread():
    """The tiny models are far too small for intra-op threads: on a busy 2-core box they make every
    matmul ~10x slower. Restored afterwards for the other test packages."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(params=ENTRIES)
def entry(request) -> str:
    return request.param
