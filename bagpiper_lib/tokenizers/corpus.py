"""Built-in training text for the ``bpe`` tokenizer: short English captions of speech, music and sounds.

``CORPORA["tiny"]`` trains the ``bpe`` preset ``tiny`` in milliseconds. The captions imitate the rich
captions Bagpiper learns (instrument, key, tempo, speaker, emotion, events), so its merges suit them.
"""

from __future__ import annotations

__all__ = ["CORPORA", "TINY_CORPUS"]

TINY_CORPUS: tuple[str, ...] = (
    "A piano plays a slow melody in C major at 90 BPM, soft dynamics.",
    "An acoustic guitar strums gentle chords in G major at 100 BPM.",
    "A violin plays a sad melody in A minor at 72 BPM, with slow vibrato.",
    "A drum kit keeps a steady rock beat at 120 BPM with loud cymbals.",
    "A jazz trio plays a swing rhythm in B flat major at 140 BPM.",
    "An electronic synth pad holds a warm chord while a bass pulses at 128 BPM.",
    "A cello plays long low notes in D minor at 60 BPM, calm and dark.",
    "A flute plays a bright and fast melody in F major at 110 BPM.",
    "A brass band plays a loud march in E flat major at 116 BPM.",
    "A music box plays a soft lullaby in C major at 80 BPM.",
    "A male speaker says, in a calm voice: the meeting starts at nine.",
    "A female speaker says, happily: we won the game this afternoon!",
    "A young woman speaks quickly and sounds excited about her trip.",
    "An old man speaks slowly in a low, tired voice about the weather.",
    "Two speakers talk in a noisy cafe; one of them laughs.",
    "A child asks a question in a high voice, then giggles.",
    "A news reader speaks clearly and neutrally about the economy.",
    "A woman whispers a secret; the speech is quiet and breathy.",
    "A man shouts angrily, and a door slams behind him.",
    "A teacher explains a math problem in a patient, friendly tone.",
    "A dog barks twice in the distance while wind blows through trees.",
    "Rain falls steadily on a tin roof, with distant thunder.",
    "Birds chirp in the morning as a car passes on a wet road.",
    "A clock ticks in a quiet room; a phone rings three times.",
    "Waves crash on the shore and seagulls call overhead.",
    "A crowd cheers and claps loudly after a goal in a stadium.",
    "Footsteps echo in a long hallway, then a door creaks open.",
    "A train horn sounds as the train rumbles over the tracks.",
    "Glass breaks on a hard floor, followed by a short silence.",
    "A cat meows softly while a kettle starts to whistle.",
    "Sound event: a siren wails for five seconds and fades away.",
    "Music genre: ambient. Tempo: slow. Mood: calm and dreamy.",
    "Music genre: pop. Tempo: 118 BPM. Key: E minor. Mood: upbeat.",
    "Music genre: classical. Instruments: strings and piano. Mood: sad.",
    "Speech: a female speaker, neutral emotion, clear recording, 16 kHz.",
    "Speech: a male speaker, angry emotion, some background noise.",
    "From 0.0 to 2.5 seconds a bell rings; from 2.5 to 4.0 seconds silence.",
    "The recording is clean, with no noise and no reverb.",
    "The audio is noisy and has strong reverb, like a large hall.",
    "A sine tone at 440 Hz plays for one second, then stops.",
    "A choir sings a slow hymn in F major with long, soft notes.",
    "A saxophone plays a smooth solo over a walking bass line.",
)

CORPORA: dict[str, tuple[str, ...]] = {"tiny": TINY_CORPUS}
