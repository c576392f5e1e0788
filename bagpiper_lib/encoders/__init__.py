"""Continuous audio encoders (``AudioEncoder``): waveform -> features ``[B, T', D]``.

Registry of entries; built-ins are registered below, plugins through the entry-point group
``bagpiper_lib.encoders``.
"""

from bagpiper_lib.encoders import adaptors  # adaptor registry: adaptors.build / available
from bagpiper_lib.encoders.base import AudioEncoder
from bagpiper_lib.encoders.qwen3_omni import TINY_CONFIG as _QWEN3_OMNI_TINY
from bagpiper_lib.encoders.ssl import TINY_CONFIG as _SSL_TINY
from bagpiper_lib.encoders.whisper import TINY_CONFIG as _WHISPER_TINY
from bagpiper_lib.registry import Registry

registry = Registry("encoder", group="bagpiper_lib.encoders")
available = registry.available
build = registry.build
register = registry.register
presets = registry.presets

DEFAULT = "qwen3_omni"

# Whisper-style log-mel encoders (16 kHz); see bagpiper_lib.encoders.{qwen3_omni,whisper,mel}.
register(
    "qwen3_omni",
    "bagpiper_lib.encoders.qwen3_omni:Qwen3OmniEncoder",
    presets={"tiny": {"config": _QWEN3_OMNI_TINY}},
    doc="Qwen3-Omni audio tower (paper default) via transformers; 128 mels, ~13 frames/s",
)
register(
    "whisper",
    "bagpiper_lib.encoders.whisper:WhisperAudioEncoder",
    presets={"tiny": {"config": _WHISPER_TINY}},
    doc="Whisper encoder via transformers.WhisperEncoder; <= 30 s, 50 frames/s",
)

register(
    "mel",
    "bagpiper_lib.encoders.mel:MelEncoder",
    presets={"tiny": {"n_mels": 80}},
    doc="log-mel frames + a learnable per-bin affine, no network (ablation baseline, CPU demo); 100 frames/s",
)

# Self-supervised speech encoders (16 kHz, 50 frames/s); see bagpiper_lib.encoders.ssl.
register(
    "hubert",
    "bagpiper_lib.encoders.ssl:HubertEncoder",
    presets={"tiny": {"config": _SSL_TINY}},
    doc="HuBERT via transformers.HubertModel (16 kHz raw waveform, 50 frames/s, layer selectable)",
)
register(
    "wavlm",
    "bagpiper_lib.encoders.ssl:WavLMEncoder",
    presets={"tiny": {"config": _SSL_TINY}},
    doc="WavLM via transformers.WavLMModel (16 kHz raw waveform, 50 frames/s, layer selectable)",
)

__all__ = ["AudioEncoder", "DEFAULT", "adaptors", "registry", "available", "build", "register", "presets"]
