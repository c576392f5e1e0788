"""Evaluation: text error rates, Fréchet distances, embedders and caption-based question answering.

::

    from bagpiper_lib import evaluation

    evaluation.word_error_rate(hyps, refs)                  # corpus WER after normalize_text
    evaluation.frechet_distance(feats_a, feats_b)           # [N, D] vs [M, D], float64
    embedder = evaluation.EncoderAudioEmbedder({"name": "whisper", "preset": "tiny"})
    evaluation.frechet_audio_distance(wavs_a, wavs_b, embedder, sample_rate=16000)
    evaluation.multiple_choice_accuracy(captions, questions, evaluation.KeywordAnswerer())

Modules: ``metrics`` (text normalisation, WER/CER, cosine), ``frechet`` (Fréchet / FAD),
``embedders`` (audio/text embedders), ``qa`` (questions, keyword answerer, reply parsing),
``answerers`` (HTTP chat and local-LLM answerers). ``transformers`` is imported only by the CLAP
embedders and the local-LLM answerer, when they are built. Never imports Lightning.
"""

from bagpiper_lib.evaluation.answerers import HTTPChatAnswerer, LocalLLMAnswerer, chat_prompt
from bagpiper_lib.evaluation.dsp import detect_onsets, dsp_checks, estimate_f0, estimate_tempo, expected_f0
from bagpiper_lib.evaluation.embedders import (
    AudioEmbedder,
    ClapAudioEmbedder,
    ClapTextEmbedder,
    EncoderAudioEmbedder,
    HashingTextEmbedder,
    TextEmbedder,
)
from bagpiper_lib.evaluation.frechet import (
    frechet_audio_distance,
    frechet_distance,
    frechet_from_moments,
    gaussian_moments,
)
from bagpiper_lib.evaluation.metrics import (
    character_error_rate,
    cosine_similarity,
    mean_cosine,
    normalize_text,
    word_error_rate,
)
from bagpiper_lib.evaluation.probes import (
    GenerationSettings,
    ProbeError,
    ProbeResult,
    ProbeRunner,
    cycle_probe,
    generation_probe,
    run_probes,
    understanding_probe,
)
from bagpiper_lib.evaluation.qa import (
    Answerer,
    KeywordAnswerer,
    Question,
    answer_questions,
    multiple_choice_accuracy,
    parse_choice,
    validate_question,
)
from bagpiper_lib.evaluation.report import record_questions, write_report

__all__ = [
    "detect_onsets",
    "dsp_checks",
    "estimate_f0",
    "estimate_tempo",
    "expected_f0",
    "GenerationSettings",
    "ProbeError",
    "ProbeResult",
    "ProbeRunner",
    "cycle_probe",
    "generation_probe",
    "record_questions",
    "run_probes",
    "understanding_probe",
    "write_report",
    "Answerer",
    "AudioEmbedder",
    "ClapAudioEmbedder",
    "ClapTextEmbedder",
    "EncoderAudioEmbedder",
    "HTTPChatAnswerer",
    "HashingTextEmbedder",
    "KeywordAnswerer",
    "LocalLLMAnswerer",
    "Question",
    "TextEmbedder",
    "answer_questions",
    "character_error_rate",
    "chat_prompt",
    "cosine_similarity",
    "frechet_audio_distance",
    "frechet_distance",
    "frechet_from_moments",
    "gaussian_moments",
    "mean_cosine",
    "multiple_choice_accuracy",
    "normalize_text",
    "parse_choice",
    "validate_question",
    "word_error_rate",
]
