"""SFT data simulation (paper §2.3.2, Figure 4, appendix B): caption-then-process samples from captions.

Every sample starts from an audio-caption pair and always carries an explicit thinking trace:

* **understanding** ``[Audio, Request, Rich caption, CoT, Answer]``: the LLM writes a (request,
  answer) pair about 1-3 attributes that the caption actually covers (sampled from
  :data:`ATTRIBUTES`; several related ones make a compositional request), then a CoT that reasons from
  the caption to the answer.
* **generation** ``[Request, CoT, Rich caption, Audio]``: the LLM writes a request in the voice of
  one of 12 :data:`PERSONAS`, either *explicit* (names the sounds) or *imaginary* (a feeling, an
  atmosphere, a scene), then a CoT that plans the audio the caption describes.

An LLM judge scores each sample 1-5 on :data:`JUDGE_DIMENSIONS`; samples whose mean exceeds the
threshold (paper: 3) are kept. LLM output is parsed leniently (JSON inside code fences or followed by
text, lists/objects for text fields, scores written as ``"4"`` or ``"4/5"``); whatever still fails
(no JSON, missing field, score not a number in 1-5) or a client error is counted per stage and the
sample is skipped: the simulation never crashes on a bad completion.

:data:`ATTRIBUTES` is a compact stand-in for the paper's 108-attribute list (which is not published);
each attribute names the word prefixes that show a caption talks about it.
"""

from __future__ import annotations

import json
import random
import re
import statistics
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from bagpiper_lib.data.llm import LLMError, TextGenerator

__all__ = [
    "UNDERSTANDING_SYSTEM_PROMPT", "GENERATION_SYSTEM_PROMPT", "UNDERSTANDING_TEMPLATE",
    "GENERATION_TEMPLATE", "Attribute", "ATTRIBUTES", "PERSONAS", "GENERATION_STYLES", "JUDGE_DIMENSIONS",
    "SFTSample", "SFTReport", "caption_attributes", "pick_attributes", "understanding_request_prompt",
    "understanding_cot_prompt", "generation_request_prompt", "generation_cot_prompt", "judge_prompt",
    "parse_json_object", "parse_fields", "parse_scores", "simulate",
]  # fmt: skip

UNDERSTANDING_SYSTEM_PROMPT = (
    "You are a helpful audio understanding assistant. When given an audio and a question about it, first "
    "think through what you hear in the audio and how it relates to the question, then provide a clear "
    "and accurate answer."
)
GENERATION_SYSTEM_PROMPT = (
    "You are a helpful audio generation assistant. When given a request, first plan the audio that "
    "fulfils it, then describe that audio in a rich caption, then produce it."
)
UNDERSTANDING_TEMPLATE = ("audio", "request", "caption", "reasoning", "answer")
GENERATION_TEMPLATE = ("request", "reasoning", "caption", "audio")
GENERATION_STYLES = ("explicit", "imaginary")
JUDGE_DIMENSIONS = (
    "request_diversity", "request_response_alignment", "reasoning_coherence", "caption_quality", "training_value",
)  # fmt: skip


@dataclass(frozen=True)
class Attribute:
    """A queryable aspect of audio; ``cues`` are word prefixes showing a caption covers it."""

    name: str
    group: str
    cues: tuple[str, ...]


def _a(name: str, group: str, cues: str) -> Attribute:
    return Attribute(name, group, tuple(cues.split("|")))


ATTRIBUTES: tuple[Attribute, ...] = (
    _a("spoken content and transcript", "speech", "say|said|transcri|utter|words|quote"),
    _a("language, dialect and accent", "speech", "language|english|dialect|accent|german|french|spanish"),
    _a(
        "number of speakers and turn-taking",
        "speech",
        "speakers|conversation|dialogue|turn|interrupt|overlap",
    ),
    _a("speaker gender and age", "speech", "male|female|man|woman|child|adult|elderly|young"),
    _a("speaker emotion and tone", "speech", "emotion|happy|sad|angry|calm|excited|tone|confident|nervous"),
    _a("speaking rate", "speech", "pace|speaking rate|fast|slow|rapid|hurried"),
    _a("voice pitch and timbre", "speech", "pitch|timbre|voice|baritone|soprano|raspy|breathy|husky"),
    _a("articulation and disfluency", "speech", "articulat|enunciat|disfluen|stutter|hesitat|vowel"),
    _a("speaking style and intent", "speech", "narrat|announc|lectur|question|whisper|shout|instruct"),
    _a("genre and style", "music", "genre|rock|jazz|pop|classical|hip-hop|electronic|folk|metal|ambient"),
    _a("tempo and meter", "music", "bpm|tempo|meter|time signature|4/4|3/4|beat"),
    _a("key and harmony", "music", "key|chord|harmon|major|minor|progression"),
    _a("melody and motifs", "music", "melod|motif|riff|hook|theme|arpeggi"),
    _a("instrumentation", "music", "instrument|guitar|piano|drum|bass|violin|synth|strings|brass|flute"),
    _a("vocals and lyrics", "music", "vocal|sing|sung|lyric|choir|rap"),
    _a("musical mood", "music", "mood|uplifting|melanchol|energetic|dark|nostalg|joyful|serene"),
    _a("structure and dynamics", "music", "verse|chorus|intro|outro|crescendo|dynamic|structure|section"),
    _a("production and mix", "music", "mix|production|master|compress|lo-fi|polished"),
    _a("sound event identity", "sound", "sound effect|beep|thud|knock|bang|click|siren|alarm|bark|engine"),
    _a("sound source material", "sound", "metal|wood|glass|plastic|water|stone|paper|fabric"),
    _a("event count and order", "sound", "then|followed|sequence|repeat|times|series|once|twice"),
    _a("event timing and duration", "sound", "second|begin|end|start|duration|onset|lasting|abrupt"),
    _a("loudness and intensity", "sound", "loud|quiet|soft|volume|intens|faint|db"),
    _a("frequency content", "sound", "frequency|hz|low-frequency|high-frequency|bright|muffled|shrill"),
    _a("acoustic environment", "scene", "room|hall|outdoor|indoor|street|studio|forest|office|setting"),
    _a("reverberation and distance", "scene", "reverb|echo|spacious|distance|distant|close-miked|close"),
    _a("background noise", "scene", "noise|hiss|hum|background|ambien"),
    _a("stereo image", "scene", "stereo|left|right|center|centre|pann|mono|spatial"),
    _a("recording quality", "scene", "quality|distort|clipping|fidelity|recording|artifact"),
    _a("likely purpose and context", "scene", "purpose|likely|suggest|context|intended|evok"),
)
_GENERAL = (
    Attribute("overall content", "general", ()),
    Attribute("likely source and context", "general", ()),
)

PERSONAS = (
    "a film sound designer building the soundtrack of a scene",
    "an indie video-game developer who needs in-game audio",
    "a podcast producer preparing an episode",
    "an elementary-school music teacher planning a lesson",
    "a creator of a meditation and sleep app",
    "an advertising creative director working on a commercial",
    "a museum curator designing an audio installation",
    "an accessibility researcher writing audio descriptions",
    "a language-learning app designer who needs spoken examples",
    "a theatre director planning sound cues",
    "a travel vlogger looking for a fitting soundscape",
    "a novelist who wants to hear a scene from their book",
)


def caption_attributes(caption: str) -> list[Attribute]:
    """The :data:`ATTRIBUTES` whose cue prefixes start a word of the caption."""
    text = caption.lower()
    return [a for a in ATTRIBUTES if re.search(r"\b(?:" + "|".join(map(re.escape, a.cues)) + ")", text)]


def pick_attributes(caption: str, rng: random.Random, max_attributes: int = 3) -> list[Attribute]:
    """1..``max_attributes`` attributes the caption covers, the later ones preferably of the first's group."""
    present = caption_attributes(caption) or list(_GENERAL)
    count = rng.randint(1, min(max_attributes, len(present)))
    first = rng.choice(present)
    related = [a for a in present if a.group == first.group and a != first]
    others = [a for a in present if a.group != first.group]
    rng.shuffle(related)
    rng.shuffle(others)
    return [first, *(related + others)[: count - 1]]


def _quoted(caption: str) -> str:
    return f'Rich caption of the audio:\n"""\n{caption.strip()}\n"""'


def understanding_request_prompt(caption: str, attributes: Sequence[Attribute]) -> str:
    """Prompt for a (request, answer) pair about ``attributes`` of the audio the caption describes."""
    names = "; ".join(a.name for a in attributes)
    compose = " Combine them into one compositional question." if len(attributes) > 1 else ""
    return (
        "You simulate a user of an audio assistant and the assistant's ideal reply. The user has an audio "
        "clip; you only see its rich caption.\n"
        f"Write one complex but reasonable question about the audio that needs these attributes: {names}."
        f"{compose} The question must be answerable from the caption alone, must sound like a real user "
        "and must not mention the caption. Then write the ideal answer, grounded only in the caption.\n\n"
        f"{_quoted(caption)}\n\n"
        'Reply with a JSON object only: {"request": "...", "answer": "..."}'
    )


def understanding_cot_prompt(caption: str, request: str, answer: str) -> str:
    """Prompt for the thinking trace that reasons from the caption (what is heard) to the answer."""
    return (
        "Write the thinking trace of an audio assistant that hears the audio described below, receives the "
        "request and arrives at the answer. Reason from what is heard (the caption) to the answer in five "
        "parts: User Intent; Evidence & Salient Audio Cues; Inferred Details (Assumptions); Answering Plan; "
        "Self-Check. Use only facts from the caption and speak of the audio, not of a caption.\n\n"
        f"{_quoted(caption)}\n\nRequest: {request}\n\nAnswer: {answer}\n\n"
        'Reply with a JSON object only: {"reasoning": "..."}'
    )


def generation_request_prompt(caption: str, persona: str, style: str) -> str:
    """Prompt for a generation request by ``persona`` that the captioned audio would fulfil."""
    if style not in GENERATION_STYLES:
        raise ValueError(f"style must be one of {GENERATION_STYLES}, got {style!r}")
    how = (
        "The request names the concrete sounds, voices, music and details it needs."
        if style == "explicit"
        else "The request describes a feeling, an atmosphere or a scene instead of listing sounds."
    )
    return (
        f"You are {persona}. You ask an audio generation assistant for a clip, and the audio described "
        f"below must be a fitting answer to your request. {how} Write the request in your own voice; do "
        "not copy the caption.\n\n"
        f"{_quoted(caption)}\n\n"
        'Reply with a JSON object only: {"request": "..."}'
    )


def generation_cot_prompt(caption: str, request: str) -> str:
    """Prompt for the thinking trace that turns the request into a plan of the captioned audio."""
    return (
        "Write the thinking trace of an audio generation assistant that receives the request below and "
        "plans the audio described by the caption, before writing that caption. Use four parts: User "
        "Intent; Inferred Details; Audio Quality; Generation Plan. Plan from the request towards the audio; "
        "do not copy the caption verbatim.\n\n"
        f"Request: {request}\n\n{_quoted(caption)}\n\n"
        'Reply with a JSON object only: {"reasoning": "..."}'
    )


def judge_prompt(sample: SFTSample) -> str:
    """Prompt for 1-5 scores of ``sample`` on the five :data:`JUDGE_DIMENSIONS`."""
    order = UNDERSTANDING_TEMPLATE if sample.kind == "understanding" else GENERATION_TEMPLATE
    parts = [f"[{name}]\n{getattr(sample, name)}" for name in order if name != "audio"]
    scores = ", ".join(f'"{d}": <1-5>' for d in JUDGE_DIMENSIONS)
    return (
        f"You review simulated {sample.kind} training samples for an audio assistant. Rate the sample on a "
        "1-5 scale (5 best) for: user request diversity (natural, non-generic request), request-response "
        "alignment, thinking trace coherence, rich caption quality, and overall training value.\n\n"
        + "\n\n".join(parts)
        + f"\n\nReply with a JSON object only: {{{scores}}}"
    )


# ---------------------------------------------------------------- lenient parsing of LLM output


def parse_json_object(text: str) -> dict[str, Any] | None:
    """The first JSON object in ``text``: inside a code fence or not, with any text around it."""
    decoder = json.JSONDecoder()
    for chunk in [*re.findall(r"```[a-zA-Z]*\s*(.*?)```", text, re.S), text]:
        for brace in re.finditer(r"\{", chunk):
            try:
                obj, _ = decoder.raw_decode(chunk, brace.start())
            except ValueError:
                continue
            if isinstance(obj, dict):
                return obj
    return None


def _text(value: Any) -> str | None:
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return "\n".join(v.strip() for v in value)
    if isinstance(value, dict) and value and all(isinstance(v, str) for v in value.values()):
        return "\n".join(f"{k}: {v.strip()}" for k, v in value.items())
    return None


def parse_fields(text: str, fields: Sequence[str]) -> dict[str, str] | None:
    """``fields`` as non-empty text from the JSON in ``text`` (lists/objects of strings are joined)."""
    obj = parse_json_object(text)
    if obj is None:
        return None
    out = {name: _text(obj.get(name)) for name in fields}
    return out if all(out.values()) else None


def parse_scores(text: str, dimensions: Sequence[str] = JUDGE_DIMENSIONS) -> dict[str, float] | None:
    """Every dimension's score in [1, 5] (numbers or strings like ``"4"``, ``"4/5"``), else None."""
    obj = parse_json_object(text)
    if obj is None:
        return None
    if isinstance(obj.get("scores"), dict):
        obj = obj["scores"]
    scores = {}
    for name in dimensions:
        value = obj.get(name)
        if isinstance(value, str):
            match = re.match(r"\s*(\d+(?:\.\d+)?)", value)
            value = float(match.group(1)) if match else None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 1 <= value <= 5:
            return None
        scores[name] = float(value)
    return scores


# ---------------------------------------------------------------- samples and the driver


@dataclass
class SFTSample:
    """One simulated sample; ``answer`` is empty for generation (the audio is the answer)."""

    record_id: str
    kind: str  # "understanding" | "generation"
    request: str
    caption: str
    reasoning: str
    answer: str = ""
    meta: dict[str, Any] = field(default_factory=dict)  # attributes / persona and style
    scores: dict[str, float] = field(default_factory=dict)  # judge scores per dimension

    @property
    def score(self) -> float | None:
        return statistics.fmean(self.scores.values()) if self.scores else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SFTReport:
    """Counts of the simulation; failures are keyed by stage (``"understanding.request"``, ``"judge"``...)."""

    generated: Counter = field(default_factory=Counter)  # kind -> samples with request and CoT parsed
    parse_failures: Counter = field(default_factory=Counter)  # stage -> unparseable completions
    client_errors: Counter = field(default_factory=Counter)  # stage -> calls that returned no text
    judged_out: Counter = field(default_factory=Counter)  # kind -> mean score <= threshold
    kept: Counter = field(default_factory=Counter)  # kind -> samples returned

    def to_dict(self) -> dict[str, Any]:
        out = {name: dict(sorted(getattr(self, name).items())) for name in self.__dataclass_fields__}
        return {**out, "totals": {name: sum(counts.values()) for name, counts in out.items()}}


class _Caller:
    """Calls the client and parses its completion, counting failures per stage; None on failure."""

    def __init__(self, client: TextGenerator, report: SFTReport, seed: int, **generate_kwargs: Any) -> None:
        self.client, self.report, self.seed, self.kwargs = client, report, seed, generate_kwargs
        self.calls = 0

    def __call__(self, stage: str, prompt: str, parse: Callable[[str], Any], **overrides: Any) -> Any:
        self.calls += 1
        try:
            text = self.client.generate(
                prompt, **{**self.kwargs, **overrides, "seed": self.seed + self.calls}
            )
        except LLMError:
            self.report.client_errors[stage] += 1
            return None
        parsed = parse(text)
        if parsed is None:
            self.report.parse_failures[stage] += 1
        return parsed


def _get(record: Any, name: str) -> Any:
    return record[name] if isinstance(record, Mapping) else getattr(record, name)


def simulate(
    records: Sequence[Any],
    client: TextGenerator,
    seed: int = 0,
    *,
    understanding_per_record: int = 1,
    generation_per_record: int = 1,
    imaginary_share: float = 0.5,
    max_attributes: int = 3,
    threshold: float = 3.0,
    judge: bool = True,
    temperature: float = 0.7,
    max_new_tokens: int = 1024,
) -> tuple[list[SFTSample], SFTReport]:
    """Simulate SFT samples from records (``Record`` or dicts with ``id`` and ``caption``).

    Per record: ``understanding_per_record`` understanding and ``generation_per_record`` generation
    samples (each 2 LLM calls, +1 judge call). With ``judge`` a sample is kept when its mean judge
    score is strictly above ``threshold``. Choices (attributes, persona, style) and call seeds derive
    from ``seed``, so a run with a deterministic client is reproducible.
    """
    rng = random.Random(seed)
    report = SFTReport()
    call = _Caller(client, report, seed, temperature=temperature, max_new_tokens=max_new_tokens)
    kept = []
    for record in records:
        rid, caption = str(_get(record, "id")), _get(record, "caption")
        drafts = []
        for _ in range(understanding_per_record):
            attributes = pick_attributes(caption, rng, max_attributes)
            qa = call(
                "understanding.request",
                understanding_request_prompt(caption, attributes),
                lambda t: parse_fields(t, ("request", "answer")),
            )
            if qa is None:
                continue
            cot = call(
                "understanding.reasoning",
                understanding_cot_prompt(caption, qa["request"], qa["answer"]),
                lambda t: parse_fields(t, ("reasoning",)),
            )
            if cot is not None:
                meta = {"attributes": [a.name for a in attributes]}
                request, answer = qa["request"], qa["answer"]
                drafts.append(
                    SFTSample(rid, "understanding", request, caption, cot["reasoning"], answer, meta)
                )
        for _ in range(generation_per_record):
            persona = rng.choice(PERSONAS)
            style = "imaginary" if rng.random() < imaginary_share else "explicit"
            req = call(
                "generation.request",
                generation_request_prompt(caption, persona, style),
                lambda t: parse_fields(t, ("request",)),
            )
            if req is None:
                continue
            cot = call(
                "generation.reasoning",
                generation_cot_prompt(caption, req["request"]),
                lambda t: parse_fields(t, ("reasoning",)),
            )
            if cot is not None:
                meta = {"persona": persona, "style": style}
                drafts.append(
                    SFTSample(rid, "generation", req["request"], caption, cot["reasoning"], meta=meta)
                )
        for sample in drafts:
            report.generated[sample.kind] += 1
            if judge:
                scores = call("judge", judge_prompt(sample), parse_scores, temperature=0.0)
                if scores is None:
                    continue
                sample.scores = scores
                if sample.score <= threshold:
                    report.judged_out[sample.kind] += 1
                    continue
            report.kept[sample.kind] += 1
            kept.append(sample)
    return kept, report
