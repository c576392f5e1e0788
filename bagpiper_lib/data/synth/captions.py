"""Captions written from synthesis parameters.

Each category has ``TEMPLATES_PER_CATEGORY`` long-caption templates that state the same facts in
different words; ``parsing.parse_caption`` reads every one of them back. Examples (template 0)::

    music:  "A soft piano melody in A minor at 90 BPM. It has eight notes in the middle register and
             lasts 1.5 seconds."
    sound:  "Three sound events over a low hum: a beep at 0.20 s lasting 0.1 s, a thud at 0.65 s
             lasting 0.15 s, and a rising sweep at 1.10 s lasting 0.3 s. The events are loud, and the
             clip lasts 1.5 seconds."
    speech: "A high-pitched, child-like voice sings the vowels a-e-o at a fast rate. The voice enters
             at 0.10 s and the clip lasts 1.5 seconds."

A mixture appends one sentence about the quieter part, introduced by a marker of ``MIX_MARKERS``.
"""

from __future__ import annotations

from bagpiper_lib.data.synth.attributes import number_word

__all__ = ["MIX_MARKERS", "TEMPLATES_PER_CATEGORY", "long_caption", "mixture_sentence", "short_caption"]

TEMPLATES_PER_CATEGORY = 3
MIX_MARKERS = ("Underneath", "At a lower level", "Behind it")

INSTRUMENT_NOUNS = {"piano": "piano", "organ": "organ", "pluck": "plucked string", "bell": "bell"}
TEXTURE_NOUNS = {"melody": "melody", "chords": "chord progression"}
DYNAMIC_ADJECTIVES = {"soft": "soft", "medium": "medium-volume", "loud": "loud"}
DYNAMIC_ADVERBS = {"soft": "softly", "medium": "at medium volume", "loud": "loudly"}
BACKGROUND_PHRASES = {"silence": "silence", "hum": "a low hum", "noise": "pink noise"}
SPEAKER_PHRASES = {"male": "deep male-like", "female": "female-like", "child": "child-like"}


def seconds(x: float) -> str:
    """``1.5 -> "1.5"``, ``1.25 -> "1.25"``, ``1.0 -> "1.0"``."""
    text = f"{x:.2f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def _a(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _cap(text: str) -> str:
    return text[0].upper() + text[1:]


def _plural(n: int, word: str) -> str:
    return f"{number_word(n)} {word}{'' if n == 1 else 's'}"


def _music(p: dict, template: int) -> str:
    inst, texture = INSTRUMENT_NOUNS[p["instrument"]], TEXTURE_NOUNS[p["texture"]]
    unit = "note" if p["texture"] == "melody" else "chord"
    count, dur = _plural(p["note_count"], unit), seconds(p["duration"])
    key = f"{p['key']} {p['mode']}"
    if template == 0:
        return (
            f"{_cap(_a(DYNAMIC_ADJECTIVES[p['dynamics']]))} {inst} {texture} in {key} at {p['tempo']} BPM. "
            f"It has {count} in the {p['register']} register and lasts {dur} seconds."
        )
    if template == 1:
        return (
            f"This {dur}-second clip is {_a(texture)} played {DYNAMIC_ADVERBS[p['dynamics']]} on {_a(inst)}. "
            f"It is in the key of {key}, with a tempo of {p['tempo']} beats per minute. "
            f"{_cap(count)} {'is' if p['note_count'] == 1 else 'are'} heard in the {p['register']} register."
        )
    return (
        f"{_cap(count)} in the {p['register']} register {'forms' if p['note_count'] == 1 else 'form'} {_a(str(p['tempo']))} BPM {texture} in {key}. "
        f"The instrument is {_a(inst)} sound, played {DYNAMIC_ADVERBS[p['dynamics']]}. "
        f"The recording lasts {dur} seconds."
    )


def _event(kind: str, onset: float, dur: float, form: int) -> str:
    if form == 0:
        return f"a {kind} at {onset:.2f} s lasting {seconds(dur)} s"
    if form == 1:
        return f"a {kind} ({seconds(dur)} s long) at {onset:.2f} s"
    return f"a {seconds(dur)} s {kind} from {onset:.2f} s"


def _event_list(p: dict, template: int) -> str:
    items = [_event(*e, template) for e in zip(p["events"], p["onsets"], p["event_durations"])]
    if len(items) == 1:
        return items[0]
    if template == 0:
        return ", ".join(items[:-1]) + (", and " if len(items) > 2 else " and ") + items[-1]
    if template == 1:
        return "; then ".join(items)
    middle = "".join(f", then {x}" for x in items[1:-1])
    return f"first {items[0]}{middle}, and finally {items[-1]}"


def _sound(p: dict, template: int) -> str:
    n, bg, loud = p["event_count"], BACKGROUND_PHRASES[p["background"]], p["loudness"]
    events, dur = _event_list(p, template), seconds(p["duration"])
    if template == 0:
        return (
            f"{_cap(_plural(n, 'sound event'))} over {bg}: {events}. "
            f"The {'event is' if n == 1 else 'events are'} {loud}, and the clip lasts {dur} seconds."
        )
    if template == 1:
        return f"A {dur}-second recording of {bg} with {number_word(n)} {loud} sound event{'' if n == 1 else 's'}. In order: {events}."
    return (
        f"Over {bg}, we hear {events}. There {'is' if n == 1 else 'are'} {_plural(n, 'event')} in total, "
        f"all at a {loud} level, within {dur} seconds."
    )


def _vowel_phrase(vowels: str) -> str:
    return f"the vowel{'' if '-' not in vowels else 's'} {vowels}"


def _speech(p: dict, template: int) -> str:
    speaker, vowels, dur = SPEAKER_PHRASES[p["speaker"]], p["vowels"], seconds(p["duration"])
    if template == 0:
        return (
            f"A {p['pitch']}-pitched, {speaker} voice sings {_vowel_phrase(vowels)} at a {p['rate']} rate. "
            f"The voice enters at {p['onset']:.2f} s and the clip lasts {dur} seconds."
        )
    if template == 1:
        return (
            f"A {dur}-second clip of a {speaker} speaker with a {p['pitch']} pitch. "
            f'The transcript is "{vowels.replace("-", " ")}", sung at a {p["rate"]} pace.'
        )
    verb = "is" if p["vowel_count"] == 1 else "are"
    return (
        f"{_cap(_vowel_phrase(vowels))} {verb} sung by a {speaker} voice at a {p['pitch']} pitch. "
        f"The rate is {p['rate']}, {_plural(p['vowel_count'], 'vowel')} in {dur} seconds."
    )


def long_caption(params: dict, template: int) -> str:
    """The rich multi-sentence caption of a single-category ``params`` dict in template ``template``."""
    writer = {"music": _music, "sound": _sound, "speech": _speech}[params["category"]]
    return writer(params, template % TEMPLATES_PER_CATEGORY)


def mixture_sentence(params: dict, marker: int) -> str:
    """One sentence about the quieter part of a mixture (its own category's parameters)."""
    head = MIX_MARKERS[marker % len(MIX_MARKERS)]
    if params["category"] == "music":
        inst, texture = INSTRUMENT_NOUNS[params["instrument"]], TEXTURE_NOUNS[params["texture"]]
        return f"{head}, {_a(inst)} {texture} in {params['key']} {params['mode']} plays quietly."
    if params["category"] == "speech":
        return (
            f"{head}, a {SPEAKER_PHRASES[params['speaker']]} voice sings {_vowel_phrase(params['vowels'])}."
        )
    kinds = ", ".join(params["events"])
    return f"{head}, {_plural(params['event_count'], 'sound event')} can be heard ({kinds})."


def short_caption(params: dict, secondary: dict | None = None) -> str:
    """A one-line caption; ``secondary`` (a mixture's quieter part) adds "; underneath: ..."."""
    c = params["category"]
    if c == "music":
        inst, texture = INSTRUMENT_NOUNS[params["instrument"]], TEXTURE_NOUNS[params["texture"]]
        text = f"{DYNAMIC_ADJECTIVES[params['dynamics']]} {inst} {texture} in {params['key']} {params['mode']}, {params['tempo']} BPM"
    elif c == "sound":
        kinds = params["events"]
        listed = kinds[0] if len(kinds) == 1 else ", ".join(kinds[:-1]) + " and " + kinds[-1]
        text = f"{listed} over {BACKGROUND_PHRASES[params['background']]}"
    else:
        text = (
            f"{params['pitch']}-pitched {SPEAKER_PHRASES[params['speaker']]} voice singing {params['vowels']}"
        )
    if secondary is not None:
        nouns = {"music": "music", "speech": "a voice", "sound": "sound events"}
        text += f"; underneath: {nouns[secondary['category']]}"
    return text
