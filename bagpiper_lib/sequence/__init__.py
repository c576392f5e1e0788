"""Sequence layer: vocabulary layout, codebook patterns, message builder and packing.

``sequence.patterns`` is the registry of codebook interleaving patterns (entry-point group
``bagpiper_lib.patterns``).
"""

from bagpiper_lib.registry import Registry

patterns = Registry("pattern", group="bagpiper_lib.patterns")

__all__ = ["patterns"]
