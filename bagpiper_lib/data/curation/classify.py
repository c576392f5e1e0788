"""Category classification: speech / music / sound from the caption (paper: Qwen3-32B reads the
caption), for items whose category is ``None`` (all items with ``reclassify=True``)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from bagpiper_lib.data.curation.items import StageReport, _counts, _get, _with
from bagpiper_lib.data.llm import LLMError, TextGenerator
from bagpiper_lib.data.records import CATEGORIES


class CategoryClassifier(Protocol):
    """Maps a rich caption to one of :data:`~bagpiper_lib.data.records.CATEGORIES`."""

    def classify(self, caption: str) -> str: ...


class KeywordCategoryClassifier:
    """Offline classifier: the category whose cue words occur most often (ties: speech, music, sound).

    A caption without any cue is ``default`` (``"sound"``: no voice, no music cue).
    """

    CUES = {
        "speech": r"speech|speak\w*|spoken|voices?|says?|said|saying|talk\w*|conversation\w*|narrat\w*|"
        r"vowels?|utterances?|transcri\w*|words?|sentences?|dialogues?|accents?|pronounc\w*|speakers?",
        "music": r"music\w*|melod\w*|bpm|chords?|songs?|instrument\w*|guitars?|pianos?|drums?|beats?|"
        r"tempo|rhythm\w*|harmon\w*|genre|synth\w*|violins?|singers?|singing|vocals?|tunes?|notes?",
        "sound": r"sound effects?|beeps?|thuds?|noises?|noisy|knock\w*|bangs?|clicks?|engines?|rain|wind|"
        r"footsteps?|dogs?|bark\w*|birds?|chirp\w*|water|sirens?|alarms?|crash\w*|buzz\w*|hum|"
        r"explosions?|ambien\w*|tones?|clatter\w*|rustl\w*|whoosh\w*|impacts?|bursts?",
    }

    def __init__(self, cues: Mapping[str, str] | None = None, default: str = "sound") -> None:
        self.patterns = {cat: re.compile(rf"\b(?:{rx})\b") for cat, rx in (cues or self.CUES).items()}
        self.default = default

    def scores(self, caption: str) -> dict[str, int]:
        text = caption.lower()
        return {cat: len(pattern.findall(text)) for cat, pattern in self.patterns.items()}

    def classify(self, caption: str) -> str:
        scores = self.scores(caption)
        best = max(scores, key=scores.get)
        return best if scores[best] > 0 else self.default


DEFAULT_CLASSIFY_PROMPT = (
    "Below is a detailed description of an audio clip. Decide which audio type dominates it: "
    '"speech" (people talking), "music" (songs, instruments, singing) or "sound" (sound effects, '
    "environmental or mechanical sounds). Answer with exactly one word: speech, music or sound.\n\n"
    "Description:\n{caption}\n\nAnswer:"
)


class LLMCategoryClassifier:
    """Prompts a text LLM (paper: Qwen3-32B) with ``prompt`` (``{caption}`` is replaced by the caption).

    An answer naming no category (or a failed call) falls back to ``fallback`` and is counted in
    ``failures``.
    """

    def __init__(
        self,
        client: TextGenerator,
        prompt: str = DEFAULT_CLASSIFY_PROMPT,
        fallback: CategoryClassifier | None = None,
        max_new_tokens: int = 16,
    ) -> None:
        self.client, self.prompt, self.max_new_tokens = client, prompt, max_new_tokens
        self.fallback = fallback or KeywordCategoryClassifier()
        self.failures = 0

    def classify(self, caption: str) -> str:
        try:
            answer = self.client.generate(
                self.prompt.replace("{caption}", caption),
                max_new_tokens=self.max_new_tokens,
                temperature=0.0,
                seed=0,
            )
        except LLMError:
            answer = ""
        found = re.search(r"\b(speech|music|sound)", answer.lower())
        if found is None:
            self.failures += 1
            return self.fallback.classify(caption)
        return found.group(1)


def classify_categories(
    items: Sequence[Any], classifier: CategoryClassifier | None = None, reclassify: bool = False
) -> tuple[list[Any], StageReport]:
    """Fill in ``category`` from the caption where it is ``None`` (everywhere with ``reclassify``).

    ``details``: ``classified`` (new category -> items classified), ``changed`` (relabelled items)."""
    clf = classifier or KeywordCategoryClassifier()
    out, assigned, changed = [], Counter(), 0
    for item in items:
        old = _get(item, "category")
        if old is not None and not reclassify:
            out.append(item)
            continue
        new = clf.classify(_get(item, "caption"))
        if new not in CATEGORIES:
            raise ValueError(f"classifier returned {new!r}; categories are {list(CATEGORIES)}")
        assigned[new] += 1
        changed += old is not None and new != old
        out.append(_with(item, category=new))
    details = {"classified": dict(sorted(assigned.items())), "changed": changed}
    if hasattr(clf, "failures"):
        details["classifier_failures"] = clf.failures
    # relabelling removes nothing: input and kept are both counted by the new category
    return out, StageReport("classification", _counts(out), _counts(out), details)
