"""Read the attributes back from a caption (ground truth or a model's guess).

``parse_caption`` finds the category from keyword counts, cuts off a mixture's trailing sentence at a
marker ("Underneath", "At a lower level", "Behind it") and reads the dominant part's attributes with
per-attribute regular expressions. It returns what it finds (missing keys are absent) and never raises.
"""

from __future__ import annotations

import re

from bagpiper_lib.data.synth.attributes import NUMBER_PATTERN, word_number

__all__ = ["parse_caption"]

_I = re.IGNORECASE
_NUM = r"(\d{1,4}(?:\.\d{1,4})?)"
_CATEGORY_WORDS = {
    "music": re.compile(
        r"\b(?:melod\w*|chords?|bpm|beats per minute|piano|organ|pluck\w*|bells?|major|minor|music\w*|notes?|instrument)\b",
        _I,
    ),
    "speech": re.compile(
        r"\b(?:voices?|vowels?|speakers?|sung|sings?|singing|transcript|pitch(?:ed)?|speech)\b", _I
    ),
    "sound": re.compile(
        r"\b(?:events?|beeps?|clicks?|noise bursts?|sweeps?|thuds?|hum|silence|pink noise)\b", _I
    ),
}
_MARKER = re.compile(r"\b(?:underneath|at a lower level|behind it)\b", _I)
_DURATION = re.compile(_NUM + r"(?:-second|\s+seconds?)\b", _I)

_KEY = re.compile(r"\b([A-G]) (major|minor)\b")
_TEMPO = re.compile(r"\b(\d{1,3})\s*(?:bpm|beats per minute)\b", _I)
_INSTRUMENT = re.compile(r"\b(piano|organ|pluck\w*|bell)", _I)
_DYNAMICS = re.compile(r"\b(softly|soft|medium|loudly|loud)\b", _I)
_REGISTER = re.compile(r"\b(low|middle|high)[ -]register\b", _I)
_TEXTURE = re.compile(r"\b(melod\w*|chords?)\b", _I)
_NOTE_COUNT = re.compile(rf"\b({NUMBER_PATTERN})\s+(?:notes?|chords?)\b", _I)

_EVENT = re.compile(r"\b(noise burst|beep|click|rising sweep|falling sweep|thud)s?\b", _I)
_CLAUSE_SPLIT = re.compile(r"[,;:]|\.\s|\bthen\b|\band\b|\bfinally\b|\bfirst\b", _I)
_TIME = re.compile(r"(\b(?:at|from)\s+)?" + _NUM + r"\s*s\b", _I)
_EVENT_COUNT = re.compile(
    rf"\b({NUMBER_PATTERN})\s+(?:(?:quiet|moderate|loud)\s+)?(?:sound\s+)?events?\b", _I
)
_BACKGROUND = re.compile(r"\b(silen\w*|hum|pink noise)\b", _I)
_LOUDNESS = re.compile(r"\b(quiet|moderate|loud)\b", _I)

_PITCH = re.compile(r"\b(low|mid|medium|high)(?:-pitched|\s+pitch)\b", _I)
_SPEAKER = re.compile(r"\b(male|female|child)-like\b", _I)
_RATE = re.compile(r"\b(slow|moderate|fast)\b", _I)
_VOWELS = (
    re.compile(r'"([aeiou](?: [aeiou]){0,15})"'),
    re.compile(r"\b([aeiou](?:-[aeiou]){1,15})\b"),
    re.compile(r"\bvowel ([aeiou])\b"),
)


def _category(text: str) -> str | None:
    best, best_key = None, None
    for name, pattern in _CATEGORY_WORDS.items():
        hits = [m.start() for m in pattern.finditer(text)]
        if hits:
            key = (len(hits), -hits[0])
            if best_key is None or key > best_key:
                best, best_key = name, key
    return best


def _first(pattern: re.Pattern, text: str, group: int = 1) -> str | None:
    match = pattern.search(text)
    return match.group(group) if match else None


def _music(text: str, out: dict) -> None:
    if m := _KEY.search(text):
        out["key"], out["mode"] = m.group(1), m.group(2).lower()
    if (tempo := _first(_TEMPO, text)) is not None:
        out["tempo"] = int(tempo)
    if (inst := _first(_INSTRUMENT, text)) is not None:
        out["instrument"] = "pluck" if inst.lower().startswith("pluck") else inst.lower()
    if (dyn := _first(_DYNAMICS, text)) is not None:
        out["dynamics"] = {"softly": "soft", "loudly": "loud"}.get(dyn.lower(), dyn.lower())
    if (reg := _first(_REGISTER, text)) is not None:
        out["register"] = reg.lower()
    if (tex := _first(_TEXTURE, text)) is not None:
        out["texture"] = "chords" if tex.lower().startswith("chord") else "melody"
    if (count := _first(_NOTE_COUNT, text)) is not None:
        out["note_count"] = word_number(count)


def _sound(text: str, out: dict) -> None:
    events, onsets, durations = [], [], []
    for clause in _CLAUSE_SPLIT.split(text):
        if not (m := _EVENT.search(clause)):
            continue
        events.append(m.group(1).lower())
        onset = duration = None
        for t in _TIME.finditer(clause):
            if t.group(1) and onset is None:
                onset = float(t.group(2))
            elif not t.group(1) and duration is None:
                duration = float(t.group(2))
        onsets.append(onset)
        durations.append(duration)
    if events:
        out["events"] = events
        if all(o is not None for o in onsets):
            out["onsets"] = onsets
        if all(d is not None for d in durations):
            out["event_durations"] = durations
    if (count := _first(_EVENT_COUNT, text)) is not None:
        out["event_count"] = word_number(count)
    elif events:
        out["event_count"] = len(events)
    if (bg := _first(_BACKGROUND, text)) is not None:
        bg = bg.lower()
        out["background"] = "silence" if bg.startswith("silen") else ("hum" if bg == "hum" else "noise")
    if (loud := _first(_LOUDNESS, text)) is not None:
        out["loudness"] = loud.lower()


def _speech(text: str, out: dict) -> None:
    if (pitch := _first(_PITCH, text)) is not None:
        out["pitch"] = "mid" if pitch.lower() == "medium" else pitch.lower()
    if (speaker := _first(_SPEAKER, text)) is not None:
        out["speaker"] = speaker.lower()
    if (rate := _first(_RATE, text)) is not None:
        out["rate"] = rate.lower()
    for pattern in _VOWELS:
        if (vowels := _first(pattern, text)) is not None:
            out["vowels"] = vowels.replace(" ", "-")
            out["vowel_count"] = vowels.count(" ") + vowels.count("-") + 1
            break


def parse_caption(caption: str) -> dict:
    """Attributes stated by ``caption`` (any template, a short caption, or arbitrary text).

    Returns a dict with whatever was found among: ``category``, ``duration`` (s), ``mixed_with`` (the
    quieter category of a mixture); music: ``key mode tempo instrument dynamics register texture
    note_count``; sound: ``events`` (types in order), ``onsets`` / ``event_durations`` (s, when every
    event states one), ``event_count background loudness``; speech: ``pitch speaker rate vowels``
    (``"a-e-o"``) ``vowel_count``. Values use the same vocabulary as ``Record.params``.
    """
    if not isinstance(caption, str):
        return {}
    out: dict = {}
    marker = _MARKER.search(caption)
    primary = caption[: marker.start()] if marker else caption
    category = _category(primary)
    if category is None:
        return out
    out["category"] = category
    if marker and (secondary := _category(caption[marker.end() :])) is not None:
        out["mixed_with"] = secondary
    if (duration := _first(_DURATION, primary)) is not None:
        out["duration"] = float(duration)
    {"music": _music, "sound": _sound, "speech": _speech}[category](primary, out)
    return out
