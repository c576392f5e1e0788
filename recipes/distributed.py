"""Distributed helpers referenced by the strategy configs (``recipes/configs/strategies/``)."""

from __future__ import annotations

from torch import nn

__all__ = ["bagpiper_wrap_policy", "is_wrap_unit"]

# Transformer blocks of the backbone and the audio encoders: each becomes one FSDP unit, so only one
# block's full weights exist at a time; frozen blocks (the encoder) end up in units of their own.
WRAP_SUFFIXES = ("DecoderLayer", "EncoderLayer")


def is_wrap_unit(module: nn.Module) -> bool:
    """True for a transformer block of any transformers model (``*DecoderLayer`` / ``*EncoderLayer``)."""
    return type(module).__name__.endswith(WRAP_SUFFIXES)


def bagpiper_wrap_policy(module: nn.Module, recurse: bool, nonwrapped_numel: int) -> bool:
    """FSDP ``auto_wrap_policy``: keep recursing, wrap every transformer block."""
    return True if recurse else is_wrap_unit(module)
