"""bagpiper_lib: components of Bagpiper, an audio foundation model mapping audio <-> rich captions.

Component families each expose a registry (``available()``, ``build(spec)``, ``register``)::

    from bagpiper_lib import codecs, encoders, backbones, sequence
    codec = codecs.build({"name": "xcodec", "preset": "tiny"})

The package never imports Lightning; training recipes live in ``recipes/``.
"""

__version__ = "0.1.0"
