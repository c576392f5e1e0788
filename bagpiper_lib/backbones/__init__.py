"""Decoder-only LLM backbones (``Backbone``): ``inputs_embeds [B, T, H]`` -> hidden states ``[B, T, H]``.

Built-in entries (factories imported lazily):

* ``qwen3`` (default) — Qwen3 through transformers (paper: Qwen3-8B-Base); presets ``tiny``, ``8b``.
* ``llama`` — Llama through transformers; preset ``tiny``.
* ``hf_causal_lm`` — any transformers ``AutoModelForCausalLM`` type: ``model_type`` + ``config`` dict,
  or ``pretrained=<directory or hub id>``; preset ``tiny`` (a tiny Qwen2).

Every entry loads real weights with ``pretrained=`` (a local directory by default; hub ids need
``local_files_only=False`` or the local Hugging Face cache). Plugins register through the entry-point
group ``bagpiper_lib.backbones``::

    backbone = backbones.build({"name": "qwen3", "pretrained": "/ckpt/Qwen3-8B-Base", "dtype": "bfloat16"})
"""

from bagpiper_lib.backbones.hf import Backbone
from bagpiper_lib.backbones.presets import QWEN3_8B, TINY_LLAMA, TINY_QWEN2, TINY_QWEN3
from bagpiper_lib.registry import Registry

registry = Registry("backbone", group="bagpiper_lib.backbones")
available = registry.available
build = registry.build
register = registry.register
presets = registry.presets

DEFAULT = "qwen3"

register(
    "qwen3",
    "bagpiper_lib.backbones.presets:qwen3",
    presets={"tiny": {"config": TINY_QWEN3}, "8b": {"config": QWEN3_8B, "dtype": "bfloat16"}},
    doc="Qwen3 causal LM body via transformers (paper: Qwen3-8B-Base)",
)
register(
    "llama",
    "bagpiper_lib.backbones.presets:llama",
    presets={"tiny": {"config": TINY_LLAMA}},
    doc="Llama causal LM body via transformers",
)
register(
    "hf_causal_lm",
    "bagpiper_lib.backbones.hf:Backbone",
    presets={"tiny": {"model_type": "qwen2", "config": TINY_QWEN2}},
    doc="any transformers AutoModelForCausalLM body: model_type + config, or pretrained=<dir or hub id>",
)

__all__ = ["Backbone", "DEFAULT", "registry", "available", "build", "register", "presets"]
