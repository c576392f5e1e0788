"""``BagpiperModel``: the assembled audio <-> rich-caption model (forward/loss, generation, pipelines)."""

from bagpiper_lib.model.bagpiper import DEFAULT_CONFIG, PRESETS, BagpiperModel, LoadReport
from bagpiper_lib.model.generation import AUDIO_DEFAULTS, TEXT_DEFAULTS, Segment
from bagpiper_lib.model.loss import LossOutput
from bagpiper_lib.model.pipelines import Generation, Understanding

__all__ = [
    "BagpiperModel",
    "DEFAULT_CONFIG",
    "PRESETS",
    "LoadReport",
    "LossOutput",
    "Segment",
    "TEXT_DEFAULTS",
    "AUDIO_DEFAULTS",
    "Generation",
    "Understanding",
]
