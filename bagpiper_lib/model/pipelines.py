"""Caption-then-process pipelines on top of :meth:`GenerationMixin.generate`.

=============  ==========================================  ==========================
call           prompt (system + user)                     assistant plan
=============  ==========================================  ==========================
caption        audio                                       text (caption)
understand     audio, request                              text (caption), think, text (answer)
synthesize     caption                                     audio
respond        request                                     think, text (caption), audio
=============  ==========================================  ==========================

Arguments take one item or a list; results are always lists, one entry per item.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bagpiper_lib.sequence import templates
from bagpiper_lib.sequence.messages import Message

__all__ = ["PipelineMixin", "Understanding", "Generation"]


@dataclass
class Understanding:
    caption: str
    reasoning: str
    answer: str


@dataclass
class Generation:
    reasoning: str
    caption: str
    wav: torch.Tensor  # [N] at codec.sample_rate


def _texts(value, name: str) -> list[str]:
    items = [value] if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else None
    if not items or not all(isinstance(x, str) for x in items):
        raise ValueError(f"{name} must be a str or a non-empty list of str, got {value!r}")
    return items


def _waves(wav) -> list[torch.Tensor]:
    if isinstance(wav, torch.Tensor):
        if wav.dim() == 1:
            return [wav]
        if wav.dim() == 2:
            return list(wav)
        raise ValueError(f"wav must be [N] or [B, N], got shape {tuple(wav.shape)}")
    items = list(wav)
    if not items or not all(isinstance(x, torch.Tensor) and x.dim() == 1 for x in items):
        raise ValueError("wav must be a tensor [N] / [B, N] or a non-empty list of [N] tensors")
    return items


class PipelineMixin:
    """``caption`` / ``understand`` / ``synthesize`` / ``respond`` for ``BagpiperModel``."""

    def _need_audio_input(self) -> None:
        if self.encoder is None:
            raise ValueError("this checkpoint has no audio encoder: it cannot caption or understand audio")

    def _system(self, task: str, system: str | None) -> list[Message]:
        text = templates.SYSTEM_PROMPTS[task] if system is None else system
        return [Message("system", "text", text)] if text else []

    def caption(
        self, wav, sample_rate: int, *, system: str | None = None, seed: int | None = None, **text
    ) -> list[str]:
        """Rich caption of each clip."""
        self._need_audio_input()
        prompts = [
            self.prompt(
                [
                    *self._system("audio_to_caption", system),
                    Message("user", "audio_in", w, sample_rate=sample_rate),
                ]
            )
            for w in _waves(wav)
        ]
        return [segs[0].text for segs in self.generate(prompts, ["text"], text=text or None, seed=seed)]

    def understand(
        self, wav, sample_rate: int, request, *, system: str | None = None, seed: int | None = None, **text
    ) -> list[Understanding]:
        """Caption, reasoning and answer for each (clip, request) pair."""
        self._need_audio_input()
        waves = _waves(wav)
        requests = _texts(request, "request")
        if len(requests) == 1 and len(waves) > 1:
            requests = requests * len(waves)
        if len(requests) != len(waves):
            raise ValueError(f"got {len(waves)} clips but {len(requests)} requests")
        prompts = [
            self.prompt(
                [
                    *self._system("understanding", system),
                    Message("user", "audio_in", w, sample_rate=sample_rate),
                    Message("user", "text", r),
                ]
            )
            for w, r in zip(waves, requests)
        ]
        out = []
        for segs in self.generate(prompts, ["text", "think", "text"], text=text or None, seed=seed):
            caption = segs[0].text
            if caption.startswith(templates.CAPTION_PREFIX):
                caption = caption[len(templates.CAPTION_PREFIX) :]
            out.append(Understanding(caption, segs[1].text, segs[2].text))
        return out

    def synthesize(
        self, caption, *, system: str | None = None, seed: int | None = None, **audio
    ) -> list[torch.Tensor]:
        """Waveforms ``[N]`` at ``codec.sample_rate`` for each caption (CFG per ``AUDIO_DEFAULTS``)."""
        prompts = [
            self.prompt([*self._system("caption_to_audio", system), Message("user", "text", c)])
            for c in _texts(caption, "caption")
        ]
        segments = self.generate(prompts, ["audio"], audio=audio or None, seed=seed)
        return [self._decode_codes(segs[0].codes) for segs in segments]

    def respond(
        self,
        request,
        *,
        system: str | None = None,
        seed: int | None = None,
        text: dict | None = None,
        audio: dict | None = None,
    ) -> list[Generation]:
        """Caption-then-generate: reasoning, rich caption, then the audio for each request."""
        prompts = [
            self.prompt([*self._system("generation", system), Message("user", "text", r)])
            for r in _texts(request, "request")
        ]
        out = []
        for segs in self.generate(prompts, ["think", "text", "audio"], text=text, audio=audio, seed=seed):
            out.append(Generation(segs[0].text, segs[1].text, self._decode_codes(segs[2].codes)))
        return out

    def _decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        if codes.shape[-1] == 0:
            return torch.zeros(0)
        wav, _ = self.codec.decode(codes[None].to(self.codec.device))
        return wav[0].cpu()
