"""Configs and factories of the built-in backbone entries (``qwen3``, ``llama``, ``hf_causal_lm``).

This module imports neither torch nor transformers, so the registry can list presets cheaply; the
factories import :class:`~bagpiper_lib.backbones.hf.Backbone` when called.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["TINY_QWEN3", "TINY_LLAMA", "TINY_QWEN2", "QWEN3_8B", "qwen3", "llama"]

# Tiny random-init configs: 2 layers, hidden 64, 4 query heads over 2 key/value heads (GQA), vocab 300.
# Built in milliseconds on a CPU (after the first transformers import).
_TINY_COMMON: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 300,
    "max_position_embeddings": 512,
}
# Qwen3-8B-Base unties its head; the tiny Qwen3 does too, the tiny Llama ties it, so both cases are covered.
TINY_QWEN3: dict[str, Any] = {**_TINY_COMMON, "head_dim": 16, "tie_word_embeddings": False}
TINY_LLAMA: dict[str, Any] = {**_TINY_COMMON, "tie_word_embeddings": True}
TINY_QWEN2: dict[str, Any] = {**_TINY_COMMON, "tie_word_embeddings": False}

# The architecture of Qwen3-8B-Base (random init: real weights come with pretrained=<dir>). About
# 8.2 B parameters, 16 GB in bfloat16; meant for GPU memory/throughput checks.
QWEN3_8B: dict[str, Any] = {
    "hidden_size": 4096,
    "intermediate_size": 12288,
    "num_hidden_layers": 36,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "vocab_size": 151936,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
    "tie_word_embeddings": False,
}


def qwen3(pretrained: str | Path | None = None, **kwargs: Any):
    """Qwen3 causal LM body (the paper's backbone: Qwen3-8B-Base). Arguments as ``Backbone``."""
    from bagpiper_lib.backbones.hf import Backbone

    return Backbone(pretrained, model_type="qwen3", **kwargs)


def llama(pretrained: str | Path | None = None, **kwargs: Any):
    """Llama causal LM body (Llama 2/3 and compatible checkpoints). Arguments as ``Backbone``."""
    from bagpiper_lib.backbones.hf import Backbone

    return Backbone(pretrained, model_type="llama", **kwargs)
