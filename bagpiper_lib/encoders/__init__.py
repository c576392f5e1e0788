"""Continuous audio encoders (``AudioEncoder``): waveform -> features ``[B, T', D]``.

Registry of entries; built-ins are registered below, plugins through the entry-point group
``bagpiper_lib.encoders``.
"""

from bagpiper_lib.encoders.base import AudioEncoder
from bagpiper_lib.registry import Registry

registry = Registry("encoder", group="bagpiper_lib.encoders")
available = registry.available
build = registry.build
register = registry.register
presets = registry.presets

__all__ = ["AudioEncoder", "registry", "available", "build", "register", "presets"]
