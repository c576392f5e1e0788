"""Task templates: the conversations Bagpiper trains on, as lists of :class:`Message`.

Pretraining (paper section 2.2)::

    audio_to_caption   system | user audio_in            | assistant text(caption)
    caption_to_audio   system | user text(caption)       | assistant audio_out
    text_only                                             assistant text   (plain language modelling)

SFT, caption-then-process (paper section 2.3)::

    understanding      system | user audio_in, text(request) | assistant text(caption), think(CoT), text(answer)
    generation         system | user text(request)           | assistant think(CoT), text(caption), audio_out

System prompts are data: :data:`SYSTEM_PROMPTS` holds the defaults (the understanding prompt is the
paper's, appendix B), every template takes ``system=`` to override, and ``system=""`` drops the
system message.
"""

from __future__ import annotations

from typing import Any

import torch

from bagpiper_lib.sequence.messages import Message

__all__ = [
    "SYSTEM_PROMPTS",
    "CAPTION_PREFIX",
    "audio_to_caption",
    "caption_to_audio",
    "text_only",
    "understanding",
    "generation",
    "TEMPLATES",
]

SYSTEM_PROMPTS: dict[str, str] = {
    "audio_to_caption": "You are an audio captioner. Describe the audio in rich detail.",
    "caption_to_audio": "You are an audio generator. Produce the audio described by the caption.",
    "understanding": (
        "You are a helpful audio understanding assistant. When given an audio and a question about it, "
        "first think through what you hear in the audio and how it relates to the question, then provide "
        "a clear and accurate answer."
    ),
    "generation": (
        "You are a helpful audio generation assistant. When given a request, first think through what "
        "the audio should contain, then describe it in a rich caption, then generate the audio."
    ),
}

# The understanding template's caption message starts with this, as in the paper's examples.
CAPTION_PREFIX = "Caption of the audio: "


def _system(task: str, system: str | None) -> list[Message]:
    text = SYSTEM_PROMPTS[task] if system is None else system
    return [Message("system", "text", text)] if text else []


def audio_to_caption(
    audio: torch.Tensor, caption: str, *, sample_rate: int | None = None, system: str | None = None
) -> list[Message]:
    """Pretraining audio -> caption: the caption is the target."""
    return [
        *_system("audio_to_caption", system),
        Message("user", "audio_in", audio, sample_rate=sample_rate),
        Message("assistant", "text", caption),
    ]


def caption_to_audio(caption: str, codes: torch.Tensor, *, system: str | None = None) -> list[Message]:
    """Pretraining caption -> audio: codec ``codes [K, T]`` are the target."""
    return [
        *_system("caption_to_audio", system),
        Message("user", "text", caption),
        Message("assistant", "audio_out", codes),
    ]


def text_only(text: str) -> list[Message]:
    """Text-only pretraining: the whole text is the target."""
    return [Message("assistant", "text", text)]


def understanding(
    audio: torch.Tensor,
    request: str,
    caption: str,
    reasoning: str,
    answer: str,
    *,
    sample_rate: int | None = None,
    system: str | None = None,
) -> list[Message]:
    """SFT understanding: [Audio, Request, Rich caption, CoT, Answer]."""
    return [
        *_system("understanding", system),
        Message("user", "audio_in", audio, sample_rate=sample_rate),
        Message("user", "text", request),
        Message("assistant", "text", CAPTION_PREFIX + caption),
        Message("assistant", "think", reasoning),
        Message("assistant", "text", answer),
    ]


def generation(
    request: str, reasoning: str, caption: str, codes: torch.Tensor, *, system: str | None = None
) -> list[Message]:
    """SFT generation: [Request, CoT, Rich caption, Audio]."""
    return [
        *_system("generation", system),
        Message("user", "text", request),
        Message("assistant", "think", reasoning),
        Message("assistant", "text", caption),
        Message("assistant", "audio_out", codes),
    ]


TEMPLATES: dict[str, Any] = {
    "audio_to_caption": audio_to_caption,
    "caption_to_audio": caption_to_audio,
    "text_only": text_only,
    "understanding": understanding,
    "generation": generation,
}
