"""Probes: what a checkpoint understands, generates, and keeps through a round trip.

Each probe runs a model over records that hold audio and a reference caption (the synthetic corpus
by default, or a manifest) and scores what comes out::

    understanding   audio -> model.caption -> caption metrics vs the reference caption
    generation      caption -> model.synthesize -> audio metrics vs the reference audio
    cycle           audio -> caption -> audio     (audio-audio cosine vs the original audio)
                    caption -> audio -> caption   (text cosine, WER, attributes vs the original caption)

    settings = GenerationSettings(max_steps=64, temperature=0.0, seed=0)
    results = run_probes(model, "understanding,generation", records, settings=settings)
    results["understanding"].metrics["qa_accuracy"]

``metrics`` keys (``None`` where a metric does not apply, e.g. attributes of a non-synthetic record):

* understanding: ``num_items``, ``wer``, ``text_cosine``, ``mean_caption_words``, ``qa_accuracy``,
  ``qa_chance``, ``num_questions``, ``attributes`` (``{name: {"accuracy", "chance", "count"}}``),
  ``attribute_accuracy_mean``, ``attribute_chance_mean``;
* generation: ``num_items``, ``empty_clips``, ``fad``, ``audio_cosine``, ``generated_seconds_mean``,
  ``reference_seconds_mean``, ``duration_abs_error_mean``;
* cycle: ``num_items``, ``empty_clips``, ``audio_cycle_cosine``, ``text_cycle_cosine``,
  ``text_cycle_wer``, ``attributes``, ``attribute_accuracy_mean``, ``attribute_chance_mean``.

Cosines are means over items. An empty generated clip scores audio cosine 0 and is left out of the
FAD (which needs 2 non-empty clips); its re-caption is the empty string. Attribute accuracy and QA
need synthetic records (or questions in ``params["questions"]``); the questions, the scoring and the
``results.json`` / ``results.md`` / plots live in :mod:`bagpiper_lib.evaluation.report`. QA answers
come from the generated caption alone (pluggable answerer, ``KeywordAnswerer`` by default). A model is
anything with ``caption(wavs, sample_rate, seed=, **text)`` / ``synthesize(captions, seed=, **audio)``,
an ``encoder`` (``None``: no audio input) and a ``codec`` with ``sample_rate``. Never imports Lightning.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from bagpiper_lib.data import synthetic
from bagpiper_lib.data.records import Record
from bagpiper_lib.evaluation import report
from bagpiper_lib.evaluation.embedders import EncoderAudioEmbedder, HashingTextEmbedder
from bagpiper_lib.evaluation.metrics import normalize_text
from bagpiper_lib.evaluation.qa import KeywordAnswerer

__all__ = [
    "PROBES",
    "AudioPair",
    "GenerationSettings",
    "ProbeError",
    "ProbeResult",
    "ProbeRunner",
    "capabilities",
    "cycle_probe",
    "evaluation_records",
    "generation_probe",
    "resolve_probes",
    "run_probes",
    "understanding_probe",
]

PROBES = ("understanding", "generation", "cycle")
_NEEDS = {"understanding": ("audio_in",), "generation": ("audio_out",), "cycle": ("audio_in", "audio_out")}
_MISSING = {
    "audio_in": "audio input (audio -> caption), but the checkpoint has no audio encoder",
    "audio_out": "audio output (caption -> audio), but the checkpoint has no codec / synthesize()",
}


class ProbeError(ValueError):
    """A probe cannot run or score (missing modality, bad records, mismatched or non-finite outputs)."""


@dataclass(frozen=True)
class GenerationSettings:
    """Decoding of every probe: ``max_steps`` (``None``: the model's defaults), ``temperature`` (0 =
    greedy), ``seed``, optional ``top_k`` / ``cfg_scale`` overrides, and clips per model call."""

    max_steps: int | None = None
    temperature: float = 0.0
    seed: int = 0
    top_k: int | None = None
    cfg_scale: float | None = None
    batch_size: int = 8

    def __post_init__(self) -> None:
        for name in ("max_steps", "top_k"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive int or None, got {value!r}")
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature!r}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {self.batch_size!r}")

    def text(self) -> dict[str, Any]:
        """Overrides for ``model.caption`` (text decoding)."""
        out = {"temperature": float(self.temperature), "max_steps": self.max_steps, "top_k": self.top_k}
        return {k: v for k, v in out.items() if v is not None}

    def audio(self) -> dict[str, Any]:
        """Overrides for ``model.synthesize`` (audio decoding)."""
        return {**self.text(), **({} if self.cfg_scale is None else {"cfg_scale": float(self.cfg_scale)})}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class AudioPair:
    """A reference clip and the clip a probe generated for it (for plots and listening)."""

    id: str
    reference: torch.Tensor
    reference_rate: int
    generated: torch.Tensor
    generated_rate: int


@dataclass
class ProbeResult:
    """``metrics`` (JSON-able, keys in the module docstring), per-record ``items`` and generated ``audio``."""

    name: str
    metrics: dict[str, Any]
    items: list[dict[str, Any]] = field(default_factory=list)
    audio: list[AudioPair] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"metrics": self.metrics, "items": self.items}


def resolve_probes(names: str | Sequence[str]) -> list[str]:
    """``"understanding,cycle"`` or a list -> validated probe names in order; unknown names fail with close matches."""
    items = names.split(",") if isinstance(names, str) else list(names)
    items = list(dict.fromkeys(n.strip() for n in items if n.strip()))
    if not items:
        raise ProbeError(f"no probe given; available: {', '.join(PROBES)}")
    for name in items:
        if name not in PROBES:
            close = difflib.get_close_matches(name, PROBES, n=2, cutoff=0.5)
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise ProbeError(f"unknown probe {name!r}{hint} (available: {', '.join(PROBES)})")
    return items


def capabilities(model) -> dict[str, bool]:
    """Which modalities ``model`` can consume and produce: ``{"audio_in": ..., "audio_out": ...}``."""
    return {
        "audio_in": getattr(model, "encoder", None) is not None and callable(getattr(model, "caption", None)),
        "audio_out": getattr(model, "codec", None) is not None
        and callable(getattr(model, "synthesize", None)),
    }


def evaluation_records(data: str = "synthetic", num_items: int = 16, seed: int = 0) -> list[Record]:
    """Records to probe: ``"synthetic"`` (held-out split of the corpus) or ``"manifest:<path>"`` (first ``num_items``)."""
    if isinstance(num_items, bool) or not isinstance(num_items, int) or num_items < 1:
        raise ProbeError(f"num_items must be a positive int, got {num_items!r}")
    if data == "synthetic":
        return synthetic.generate(num_items, seed=seed, split="heldout")
    if data.startswith("manifest:"):
        from pathlib import Path

        from bagpiper_lib.data.manifest import read_manifest

        path = Path(data[len("manifest:") :])
        if not path.is_file():
            raise FileNotFoundError(f"--data manifest {str(path)!r} does not exist")
        records = read_manifest(path)[:num_items]
        if not records:
            raise ProbeError(f"manifest {str(path)!r} holds no records")
        return records
    raise ProbeError(f"data must be 'synthetic' or 'manifest:<path>', got {data!r}")


@contextmanager
def _scoring(probe: str, what: str):
    """Re-raise a metric's ValueError/TypeError as a ProbeError naming the probe and the step."""
    try:
        yield
    except ProbeError:
        raise
    except (ValueError, TypeError) as err:
        raise ProbeError(f"{probe} probe, {what}: {err}") from err


def _mean(values) -> float | None:
    values = [float(v) for v in values]
    return float(np.mean(values)) if values else None


def _checked(probe: str, call: str, outputs, count: int, kind: type) -> list:
    """``outputs`` of ``model.<call>`` as a list of ``count`` ``kind`` objects, or a ProbeError."""
    if not isinstance(outputs, list) or len(outputs) != count:
        got = len(outputs) if isinstance(outputs, list) else type(outputs).__name__
        raise ProbeError(f"{probe} probe: model.{call} returned {got} outputs for {count} inputs")
    for out in outputs:
        if not isinstance(out, kind):
            raise ProbeError(
                f"{probe} probe: model.{call} returned a {type(out).__name__}, not {kind.__name__}"
            )
    return outputs


def _rows(keys: tuple[str, ...], *columns) -> list[dict[str, Any]]:
    """Per-record item dicts from aligned columns."""
    return [dict(zip(keys, row)) for row in zip(*columns)]


class ProbeRunner:
    """Runs probes over one model and record list, sharing work between them (with greedy or seeded
    decoding, the cycle probe reuses the understanding captions and the generation clips).

    Args:
        model: see the module docstring; put in eval mode here.
        records: records with ``audio`` (or a ``path``, loaded here) and a reference ``caption``.
        settings: decoding settings (:class:`GenerationSettings`).
        answerer: QA answerer (``answer(caption, question, choices) -> int``); default ``KeywordAnswerer``.
        text_embedder: ``embed(texts) -> [B, D]``; default ``HashingTextEmbedder``.
        audio_embedder: ``embed(wavs, sample_rate) -> [B, D]``; default ``EncoderAudioEmbedder`` over the
            model's own encoder, or a tiny whisper encoder when it has none.
    """

    def __init__(
        self,
        model,
        records: Sequence[Record],
        settings: GenerationSettings | None = None,
        *,
        answerer=None,
        text_embedder=None,
        audio_embedder=None,
    ):
        if not records:
            raise ProbeError("no records to probe: need at least one record with audio and a caption")
        self.model, self.settings = model, settings or GenerationSettings()
        if hasattr(model, "eval"):
            model.eval()
        self.answerer = answerer or KeywordAnswerer()
        self.text_embedder = text_embedder or HashingTextEmbedder()
        self._audio_embedder = audio_embedder
        self.records = self._loaded(records)
        self.ids, self.references = [r.id for r in self.records], [r.caption for r in self.records]
        self._memo: dict[str, list] = {}

    # ------------------------------------------------------------------ inputs
    @staticmethod
    def _loaded(records: Sequence[Record]) -> list[Record]:
        from bagpiper_lib.data.manifest import AudioError, AudioLoader

        loader, out = AudioLoader(sample_rate=None, max_seconds=30.0, crop="head"), []
        for record in records:
            if not isinstance(record, Record):
                raise ProbeError(f"records must be Record objects, got {type(record).__name__}")
            if not normalize_text(record.caption):
                raise ProbeError(f"record {record.id!r}: the reference caption is empty after normalisation")
            try:
                out.append(loader.load(record))
            except AudioError as err:
                raise ProbeError(f"cannot load the reference audio: {err}") from err
        return out

    @property
    def audio_embedder(self):
        if self._audio_embedder is None:
            encoder = getattr(self.model, "encoder", None)
            spec = encoder if isinstance(encoder, torch.nn.Module) else {"name": "whisper", "preset": "tiny"}
            self._audio_embedder = EncoderAudioEmbedder(spec)
        return self._audio_embedder

    def check(self, probe: str) -> None:
        """Raise :class:`ProbeError` when ``model`` lacks a modality ``probe`` needs."""
        (probe,) = resolve_probes([probe])
        can = capabilities(self.model)
        missing = [_MISSING[need] for need in _NEEDS[probe] if not can[need]]
        if missing:
            raise ProbeError(f"the {probe} probe needs {'; and '.join(missing)}")

    # ------------------------------------------------------------------ model calls
    def _caption(self, probe: str, wavs: list[torch.Tensor], rates: list[int]) -> list[str]:
        """Captions of clips (grouped by rate, in batches); an empty clip gets ``""`` without a model call."""
        out = ["" for _ in wavs]
        todo = [i for i, w in enumerate(wavs) if w.numel()]
        for rate in dict.fromkeys(rates[i] for i in todo):
            idx = [i for i in todo if rates[i] == rate]
            for start in range(0, len(idx), self.settings.batch_size):
                chunk = idx[start : start + self.settings.batch_size]
                texts = self.model.caption(
                    [wavs[i] for i in chunk], rate, seed=self.settings.seed, **self.settings.text()
                )
                for i, text in zip(chunk, _checked(probe, "caption", texts, len(chunk), str)):
                    out[i] = text
        return out

    def _synthesize(self, probe: str, captions: list[str]) -> list[torch.Tensor]:
        out = []
        for start in range(0, len(captions), self.settings.batch_size):
            chunk = captions[start : start + self.settings.batch_size]
            wavs = self.model.synthesize(chunk, seed=self.settings.seed, **self.settings.audio())
            for wav in _checked(probe, "synthesize", wavs, len(chunk), torch.Tensor):
                wav = wav.detach().float().cpu().reshape(-1)
                if not torch.isfinite(wav).all():
                    raise ProbeError(f"{probe} probe: model.synthesize returned NaN or Inf samples")
                out.append(wav)
        return out

    def captions(self, probe: str = "understanding") -> list[str]:
        """The model's captions of the reference audio (computed once)."""
        if "captions" not in self._memo:
            wavs, rates = [r.audio for r in self.records], [r.sample_rate for r in self.records]
            self._memo["captions"] = self._caption(probe, wavs, rates)
        return self._memo["captions"]

    def synthesized(self, probe: str = "generation") -> list[torch.Tensor]:
        """The model's audio for the reference captions (computed once)."""
        if "audio" not in self._memo:
            self._memo["audio"] = self._synthesize(probe, self.references)
        return self._memo["audio"]

    @property
    def output_rate(self) -> int:
        return int(self.model.codec.sample_rate)

    # ------------------------------------------------------------------ probes
    def _audio(self, probe: str, generated: list[torch.Tensor], fad: bool) -> dict[str, Any]:
        refs, ids, rates = [r.audio for r in self.records], self.ids, [self.output_rate] * len(generated)
        with _scoring(probe, "audio metrics"):
            ref_rates = [r.sample_rate for r in self.records]
            return report.audio_scores(generated, rates, refs, ref_rates, ids, self.audio_embedder, fad=fad)

    def _text(self, probe: str, hyps: list[str]) -> dict[str, Any]:
        with _scoring(probe, "caption metrics"):
            scores = report.caption_scores(hyps, self.references, self.text_embedder)
            return {**scores, **report.attribute_scores(hyps, self.records)}

    def understanding(self) -> ProbeResult:
        self.check("understanding")
        captions = self.captions("understanding")
        text = self._text("understanding", captions)
        with _scoring("understanding", "caption QA"):
            qa = report.qa_scores(captions, self.records, self.answerer, self.settings.seed)
        metrics = {
            "num_items": len(self.records),
            "wer": text["wer"],
            "text_cosine": _mean(text["cosines"]),
            "mean_caption_words": _mean(len(normalize_text(c).split()) for c in captions),
            **{k: qa[k] for k in ("qa_accuracy", "qa_chance", "num_questions")},
            **{k: text[k] for k in ("attributes", "attribute_accuracy_mean", "attribute_chance_mean")},
        }
        keys = ("id", "reference", "caption", "text_cosine", "qa_correct", "qa_total")
        columns = (self.ids, self.references, captions, text["cosines"], qa["correct"], qa["totals"])
        items = _rows(keys, *columns)
        return ProbeResult("understanding", metrics, items)

    def generation(self) -> ProbeResult:
        self.check("generation")
        wavs = self.synthesized("generation")
        audio = self._audio("generation", wavs, fad=True)
        gen_s = [w.numel() / self.output_rate for w in wavs]
        ref_s = [r.audio.numel() / r.sample_rate for r in self.records]
        metrics = {
            "num_items": len(self.records),
            "empty_clips": audio["empty_clips"],
            "fad": audio["fad"],
            "audio_cosine": _mean(audio["cosines"]),
            "generated_seconds_mean": _mean(gen_s),
            "reference_seconds_mean": _mean(ref_s),
            "duration_abs_error_mean": _mean(abs(g - r) for g, r in zip(gen_s, ref_s)),
        }
        if all(r.params for r in self.records):  # synthetic parameters known: DSP checks of the audio
            from bagpiper_lib.evaluation.dsp import dsp_checks

            metrics["dsp"] = dsp_checks(wavs, self.records, sample_rate=self.output_rate)
        keys = ("id", "caption", "generated_seconds", "reference_seconds", "audio_cosine")
        items = _rows(keys, self.ids, self.references, gen_s, ref_s, audio["cosines"])
        return ProbeResult("generation", metrics, items, self._pairs(wavs))

    def cycle(self) -> ProbeResult:
        self.check("cycle")
        captions = self.captions("cycle")
        round_audio = self._synthesize("cycle", captions)
        audio = self._audio("cycle", round_audio, fad=False)
        wavs = self.synthesized("cycle")
        recaptions = self._caption("cycle", wavs, [self.output_rate] * len(wavs))
        text = self._text("cycle", recaptions)
        metrics = {
            "num_items": len(self.records),
            "empty_clips": audio["empty_clips"],
            "audio_cycle_cosine": _mean(audio["cosines"]),
            "text_cycle_cosine": _mean(text["cosines"]),
            "text_cycle_wer": text["wer"],
            **{k: text[k] for k in ("attributes", "attribute_accuracy_mean", "attribute_chance_mean")},
        }
        keys = ("id", "caption", "audio_cycle_cosine", "cycle_caption", "text_cycle_cosine")
        items = _rows(keys, self.ids, captions, audio["cosines"], recaptions, text["cosines"])
        return ProbeResult("cycle", metrics, items, self._pairs(round_audio))

    def _pairs(self, wavs: list[torch.Tensor]) -> list[AudioPair]:
        return [
            AudioPair(r.id, r.audio, int(r.sample_rate), w, self.output_rate)
            for r, w in zip(self.records, wavs)
        ]

    def run(self, probes: str | Sequence[str] = PROBES) -> dict[str, ProbeResult]:
        """Every probe in ``probes``, after checking all of them against the model's modalities."""
        names = resolve_probes(probes)
        for name in names:
            self.check(name)
        return {name: getattr(self, name)() for name in names}


def understanding_probe(model, records=None, settings=None, **kwargs) -> ProbeResult:
    """The understanding probe alone; see :func:`run_probes`."""
    return run_probes(model, ["understanding"], records, settings, **kwargs)["understanding"]


def generation_probe(model, records=None, settings=None, **kwargs) -> ProbeResult:
    """The generation probe alone; see :func:`run_probes`."""
    return run_probes(model, ["generation"], records, settings, **kwargs)["generation"]


def cycle_probe(model, records=None, settings=None, **kwargs) -> ProbeResult:
    """The cycle-consistency probe alone; see :func:`run_probes`."""
    return run_probes(model, ["cycle"], records, settings, **kwargs)["cycle"]


def run_probes(
    model,
    probes: str | Sequence[str] = PROBES,
    records: Sequence[Record] | None = None,
    settings: GenerationSettings | None = None,
    **kwargs,
) -> dict[str, ProbeResult]:
    """Run ``probes`` (names or ``"a,b"``) on ``records`` (default: 16 held-out synthetic clips).

    ``kwargs`` go to :class:`ProbeRunner` (``answerer``, ``text_embedder``, ``audio_embedder``).
    """
    names = resolve_probes(probes)
    runner = ProbeRunner(model, evaluation_records() if records is None else records, settings, **kwargs)
    return runner.run(names)
