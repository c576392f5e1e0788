"""Decoder-only LLM backbones (``Backbone``): ``inputs_embeds`` -> hidden states ``[B, T, H]``.

Registry of entries; built-ins are registered below, plugins through the entry-point group
``bagpiper_lib.backbones``.
"""

from bagpiper_lib.registry import Registry

registry = Registry("backbone", group="bagpiper_lib.backbones")
available = registry.available
build = registry.build
register = registry.register
presets = registry.presets

__all__ = ["registry", "available", "build", "register", "presets"]
