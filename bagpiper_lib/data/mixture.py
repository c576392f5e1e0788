"""The task mixture: which conversation each training sample is, in the proportions of the paper.

Pretraining mixes caption->audio : audio->caption : text-only = 300 : 150 : 150 **by tokens**, each
audio task split evenly over speech / music / sound (scarce categories are upsampled). SFT mixes
understanding and generation samples. Proportions are hit by a deficit scheduler rather than by
sampling probabilities: the next sample goes to the task (then the category) furthest below its
share of the tokens produced so far, so the realised ratios converge at rate 1/n and are exact up to
one sample's length. Records inside a category are drawn by a seeded RNG (with replacement).

The mixture is deterministic given its seed and its state (``state_dict``) restores it exactly.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from bagpiper_lib.data.records import CATEGORIES, Record
from bagpiper_lib.sequence import templates
from bagpiper_lib.sequence.messages import SequenceBuilder
from bagpiper_lib.sequence.sample import Sample

__all__ = ["PRETRAIN_RATIOS", "SFT_RATIOS", "TASKS", "TaskMixture", "SFTItem"]

PRETRAIN_RATIOS = {"caption_to_audio": 300.0, "audio_to_caption": 150.0, "text_only": 150.0}
SFT_RATIOS = {"understanding": 1.0, "generation": 1.0}
AUDIO_TASKS = ("caption_to_audio", "audio_to_caption", "understanding", "generation")
TASKS = ("caption_to_audio", "audio_to_caption", "text_only", "understanding", "generation")


@dataclass
class SFTItem:
    """One simulated SFT conversation over a record: request, reasoning and answer (understanding) or
    request and reasoning (generation; the record's caption and audio complete it)."""

    record_id: str
    kind: str  # "understanding" | "generation"
    request: str
    reasoning: str
    answer: str = ""


class TaskMixture:
    """Draws training samples task by task.

    Args:
        builder: turns conversations into samples.
        records: audio-caption records (with ``audio`` for audio->caption, codes for caption->audio).
        texts: the text-only corpus.
        ratios: task -> share by tokens (tasks of :data:`TASKS`); zero or missing tasks are off.
        codes: ``record -> codes [K, T]`` for audio output (default: ``record.codes``).
        sft: simulated SFT items (for the understanding / generation tasks).
        categories: categories an audio task is split evenly over (those present in ``records``).
        system_prompts: overrides of :data:`~bagpiper_lib.sequence.templates.SYSTEM_PROMPTS`.
        seed: RNG seed.
    """

    def __init__(
        self,
        builder: SequenceBuilder,
        records: Sequence[Record],
        texts: Sequence[str] = (),
        *,
        ratios: dict[str, float] | None = None,
        codes: Callable[[Record], torch.Tensor] | None = None,
        sft: Sequence[SFTItem] = (),
        system_prompts: dict[str, str] | None = None,
        seed: int = 0,
    ):
        ratios = dict(PRETRAIN_RATIOS if ratios is None else ratios)
        unknown = sorted(set(ratios) - set(TASKS))
        if unknown:
            raise ValueError(f"unknown tasks {unknown} in ratios; known tasks: {list(TASKS)}")
        self.ratios = {t: float(r) for t, r in ratios.items() if float(r) > 0}
        if not self.ratios:
            raise ValueError("ratios give no task a positive share")
        self.builder = builder
        self.records = list(records)
        self.texts = list(texts)
        self.codes = codes or _record_codes
        self.system = dict(system_prompts or {})
        self.by_category = {c: [r for r in self.records if r.category == c] for c in CATEGORIES}
        self.categories = [c for c in CATEGORIES if self.by_category[c]]
        self.by_id = {r.id: r for r in self.records}
        self.sft = {kind: [s for s in sft if s.kind == kind] for kind in ("understanding", "generation")}
        for task in self.ratios:
            if task in AUDIO_TASKS and not self.categories:
                raise ValueError(f"task {task!r} needs audio records, none given")
            if task == "text_only" and not self.texts:
                raise ValueError("task 'text_only' needs a text corpus (texts=...)")
            if task in self.sft and not self.sft[task]:
                raise ValueError(f"task {task!r} needs SFT items of that kind (sft=...)")
        self.seed = seed
        self.rng = random.Random(seed)
        self.tokens = {t: 0 for t in self.ratios}
        self.category_tokens = {(t, c): 0 for t in self.ratios for c in self.categories}

    # ------------------------------------------------------------------ scheduling
    def _behind(self, produced: dict[Any, int], shares: dict[Any, float]) -> Any:
        total = sum(produced.values())
        weight = sum(shares.values())
        return max(
            shares, key=lambda key: (shares[key] / weight * total - produced[key], -list(shares).index(key))
        )

    def next_task(self) -> tuple[str, str | None]:
        """The task and category (``None`` for text-only) of the next sample."""
        task = self._behind(self.tokens, self.ratios)
        if task == "text_only":
            return task, None
        shares = {(task, c): 1.0 for c in self.categories}
        return task, self._behind({k: self.category_tokens[k] for k in shares}, shares)[1]

    def sample(self) -> Sample:
        """Build the next sample and account its tokens."""
        task, category = self.next_task()
        sample = self._build(task, category)
        self.tokens[task] += len(sample)
        if category is not None:
            self.category_tokens[(task, category)] += len(sample)
        return sample

    def __iter__(self) -> Iterator[Sample]:
        while True:
            yield self.sample()

    def take(self, n: int) -> list[Sample]:
        return [self.sample() for _ in range(n)]

    def shares(self) -> dict[str, float]:
        """Realised token share per task so far."""
        total = max(sum(self.tokens.values()), 1)
        return {t: n / total for t, n in self.tokens.items()}

    # ------------------------------------------------------------------ building
    def _system(self, task: str) -> str | None:
        return self.system.get(task)

    def _build(self, task: str, category: str | None) -> Sample:
        if task == "text_only":
            index = self.rng.randrange(len(self.texts))
            return self.builder.build(templates.text_only(self.texts[index]), id=f"text_only:{index}")
        if task in self.sft:
            return self._build_sft(task, category)
        pool = self.by_category[category]
        record = pool[self.rng.randrange(len(pool))]
        if task == "caption_to_audio":
            messages = templates.caption_to_audio(
                record.caption, self.codes(record), system=self._system(task)
            )
        else:
            if record.audio is None:
                raise ValueError(f"record {record.id!r} has no audio loaded; audio->caption needs it")
            messages = templates.audio_to_caption(
                record.audio, record.caption, sample_rate=record.sample_rate, system=self._system(task)
            )
        return self.builder.build(messages, id=f"{task}:{record.id}")

    def _build_sft(self, task: str, category: str) -> Sample:
        items = [
            s
            for s in self.sft[task]
            if self.by_id.get(s.record_id) and self.by_id[s.record_id].category == category
        ]
        items = items or self.sft[task]
        item = items[self.rng.randrange(len(items))]
        record = self.by_id.get(item.record_id)
        if record is None:
            raise ValueError(f"SFT item refers to record {item.record_id!r}, which is not among the records")
        if task == "understanding":
            messages = templates.understanding(
                record.audio,
                item.request,
                record.caption,
                item.reasoning,
                item.answer,
                sample_rate=record.sample_rate,
                system=self._system(task),
            )
        else:
            messages = templates.generation(
                item.request, item.reasoning, record.caption, self.codes(record), system=self._system(task)
            )
        return self.builder.build(messages, id=f"{task}:{record.id}")

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "rng": self.rng.getstate(),
            "tokens": dict(self.tokens),
            "category_tokens": [[t, c, n] for (t, c), n in self.category_tokens.items()],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        rng = state["rng"]
        self.rng.setstate((rng[0], tuple(rng[1]), rng[2]))
        self.tokens = {t: int(n) for t, n in state["tokens"].items()}
        self.category_tokens = {(t, c): int(n) for t, c, n in state["category_tokens"]}


def _record_codes(record: Record) -> torch.Tensor:
    if record.codes is None:
        raise ValueError(f"record {record.id!r} has no codes; run the prepare step or pass codes=")
    return record.codes
