"""Discrete audio codecs (``AudioCodec``): waveform <-> codes ``[B, K, T]``.

Built-in entries (imported lazily, so ``import bagpiper_lib.codecs`` stays cheap and a missing optional
package only matters when its codec is built):

* ``xcodec`` (default) — X-Codec through ``transformers.XcodecModel``; 16 kHz, 50 frames/s.
* ``encodec`` — Meta's reference ``encodec`` package (``pip install 'bagpiper-lib[encodec]'``).
* ``dac`` — Descript's reference ``descript-audio-codec`` (``pip install 'bagpiper-lib[dac]'``).

Plugins register through the entry-point group ``bagpiper_lib.codecs``.
"""

from bagpiper_lib.codecs.base import AudioCodec
from bagpiper_lib.codecs.dac import TINY_CONFIG as _DAC_TINY
from bagpiper_lib.codecs.encodec import TINY_CONFIG as _ENCODEC_TINY
from bagpiper_lib.codecs.xcodec import TINY_CONFIG as _XCODEC_TINY
from bagpiper_lib.registry import Registry

registry = Registry("codec", group="bagpiper_lib.codecs")
available = registry.available
build = registry.build
register = registry.register
presets = registry.presets

DEFAULT = "xcodec"

register(
    "xcodec",
    "bagpiper_lib.codecs.xcodec:XCodec",
    presets={"tiny": {"config": _XCODEC_TINY}},
    doc="X-Codec via transformers.XcodecModel (16 kHz, 50 Hz, bandwidth -> codebooks)",
)
register(
    "encodec",
    "bagpiper_lib.codecs.encodec:EnCodec",
    presets={"tiny": {"model": "24khz", "config": _ENCODEC_TINY}},
    doc="EnCodec via the reference encodec package (24 kHz causal / 48 kHz)",
)
register(
    "dac",
    "bagpiper_lib.codecs.dac:DAC",
    presets={"tiny": {"model": "16khz", "config": _DAC_TINY}},
    doc="Descript Audio Codec via the reference descript-audio-codec package (16 / 24 / 44.1 kHz)",
)

__all__ = ["AudioCodec", "DEFAULT", "registry", "available", "build", "register", "presets"]
