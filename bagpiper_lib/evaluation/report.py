"""Scoring and reporting of probe outputs (see :mod:`bagpiper_lib.evaluation.probes`).

Scores against the references; bad input raises ``ValueError`` naming the records (the probes re-raise
it naming the probe)::

    caption_scores(hyps, refs, text_embedder)        -> {"wer", "cosines"}
    attribute_scores(captions, records)              -> {"attributes", "attribute_accuracy_mean", ...}
    qa_scores(captions, records, answerer)           -> {"qa_accuracy", "qa_chance", "num_questions", "correct"}
    audio_scores(gen, gen_rates, refs, ref_rates, ids, embedder) -> {"cosines", "empty_clips", "fad"}

Questions for caption QA: :func:`record_questions` (``params["questions"]`` or, for the synthetic
corpus, :func:`synthetic_questions`). Documents: :func:`write_report` writes ``results.json``,
``results.md``, ``attribute_accuracy_<probe>.png`` (per-category bars next to chance) and
``spectrograms_<probe>.png`` (reference next to generated). matplotlib is imported when plotting.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bagpiper_lib.data import synthetic
from bagpiper_lib.data.records import CATEGORIES, Record
from bagpiper_lib.evaluation.frechet import frechet_distance
from bagpiper_lib.evaluation.metrics import cosine_similarity, word_error_rate
from bagpiper_lib.evaluation.qa import answer_questions, validate_question

__all__ = [
    "QA_QUESTIONS",
    "attribute_scores",
    "audio_scores",
    "caption_scores",
    "format_value",
    "is_synthetic",
    "qa_scores",
    "record_questions",
    "summary",
    "synthetic_questions",
    "write_report",
]

# Questions about the scalar attributes of the synthetic corpus. A choice's text uses the words the
# captions use for that value, so a keyword reader of a correct caption picks it out.
QA_QUESTIONS = {
    "tempo": "What is the tempo?",
    "instrument": "Which instrument plays?",
    "dynamics": "How loudly is it played?",
    "register": "In which register is it played?",
    "texture": "Is it a melody or chords?",
    "mode": "Is the key major or minor?",
    "event_count": "How many sound events are there?",
    "loudness": "How loud are the sound events?",
    "pitch": "What is the pitch of the voice?",
    "speaker": "What kind of voice is it?",
    "rate": "How fast is the voice?",
}
_CHOICE_TEXT: dict[str, Any] = {
    "tempo": "{} BPM",
    "instrument": {"pluck": "plucked string"},
    "dynamics": {"soft": "soft (softly)", "medium": "medium volume", "loud": "loud (loudly)"},
    "register": "{} register",
    "texture": {"chords": "chords (chord progression)"},
    "event_count": {1: "one event", 2: "two events", 3: "three events"},
    "pitch": "{} pitch",
}


def _mean(values) -> float | None:
    values = [float(v) for v in values]
    return float(np.mean(values)) if values else None


def is_synthetic(record: Record) -> bool:
    """True when ``record.params`` holds every scored attribute of its category (synthetic corpus)."""
    return all(a in record.params for a in synthetic.ATTRIBUTES[record.category])


def synthetic_questions(record: Record, num_choices: int = 4, seed: int = 0) -> list[dict]:
    """Multiple-choice questions about a synthetic record (one per attribute of ``QA_QUESTIONS``): the true
    value among up to ``num_choices`` values of its set, distractors and order drawn from ``(seed, id, attribute)``."""
    out = []
    for attribute in synthetic.ATTRIBUTES[record.category]:
        if attribute not in QA_QUESTIONS or attribute not in record.params:
            continue
        truth, values = record.params[attribute], synthetic.VALUES[attribute]
        rng = np.random.default_rng([seed, zlib.crc32(record.id.encode()), zlib.crc32(attribute.encode())])
        others = [v for v in values if v != truth]
        picks = rng.choice(len(others), min(num_choices, len(values)) - 1, replace=False)
        options = [truth, *(others[i] for i in picks)]
        order = [int(i) for i in rng.permutation(len(options))]
        text = _CHOICE_TEXT.get(attribute, {})
        choices = [text.format(v) if isinstance(text, str) else text.get(v, str(v)) for v in options]
        choices = [choices[i] for i in order]
        out.append({"question": QA_QUESTIONS[attribute], "choices": choices, "answer": order.index(0)})
    return out


def record_questions(record: Record, seed: int = 0) -> list[dict]:
    """``record.params["questions"]`` when given, else :func:`synthetic_questions` for a synthetic record, else ``[]``."""
    given = record.params.get("questions")
    if given is not None:
        return [validate_question(q, f"record {record.id!r} questions[{i}]") for i, q in enumerate(given)]
    return synthetic_questions(record, seed=seed) if is_synthetic(record) else []


def _same_length(hyps: Sequence, refs: Sequence, what: str) -> None:
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} {what} for {len(refs)} references: counts must match")


def caption_scores(hyps: Sequence[str], refs: Sequence[str], text_embedder) -> dict[str, Any]:
    """Corpus ``wer`` and per-item text-text ``cosines`` of ``hyps`` vs ``refs`` (embeddings must be finite)."""
    _same_length(hyps, refs, "captions")
    wer = word_error_rate(list(hyps), list(refs))
    feats = {
        name: torch.as_tensor(text_embedder.embed(list(texts)))
        for name, texts in (("generated", hyps), ("reference", refs))
    }
    for name, value in feats.items():
        if value.dim() != 2 or value.shape[0] != len(refs) or not torch.isfinite(value).all():
            raise ValueError(
                f"the text embedder returned NaN/Inf or a bad shape {tuple(value.shape)} for {name} captions"
            )
    return {"wer": wer, "cosines": cosine_similarity(feats["generated"], feats["reference"]).tolist()}


def attribute_scores(captions: Sequence[str], records: Sequence[Record]) -> dict[str, Any]:
    """Attribute accuracy of captions over the synthetic records: ``{name: {"accuracy", "chance", "count"}}``
    and macro means (``None`` / ``{}`` when no record is synthetic)."""
    _same_length(captions, records, "captions")
    idx = [i for i, r in enumerate(records) if is_synthetic(r)]
    if not idx:
        return {"attributes": {}, "attribute_accuracy_mean": None, "attribute_chance_mean": None}
    chosen = [records[i] for i in idx]
    scores = synthetic.attribute_accuracy([captions[i] for i in idx], chosen)
    counts = {"category": len(chosen)}
    for record in chosen:
        for attribute in synthetic.ATTRIBUTES[record.category]:
            counts[attribute] = counts.get(attribute, 0) + 1
    table = {
        n: {"accuracy": v, "chance": synthetic.chance_level(n), "count": counts[n]} for n, v in scores.items()
    }
    return {
        "attributes": table,
        "attribute_accuracy_mean": _mean(v["accuracy"] for v in table.values()),
        "attribute_chance_mean": _mean(v["chance"] for v in table.values()),
    }


def qa_scores(captions: Sequence[str], records: Sequence[Record], answerer, seed: int = 0) -> dict[str, Any]:
    """Caption QA: questions of each record (:func:`record_questions`) answered from its caption alone.

    ``qa_accuracy`` over all questions, ``qa_chance`` (mean ``1 / choices``), ``num_questions`` and
    per-record ``correct`` / ``totals``; accuracy and chance are ``None`` without questions."""
    _same_length(captions, records, "captions")
    questions = [record_questions(r, seed) for r in records]
    asked = [i for i, q in enumerate(questions) if q]
    correct = [0] * len(records)
    if asked:
        answers = iter(
            answer_questions([captions[i] for i in asked], [questions[i] for i in asked], answerer)
        )
        for i in asked:
            correct[i] = sum(int(p == a) for p, a in (next(answers) for _ in questions[i]))
    flat = [q for group in questions for q in group]
    return {
        "qa_accuracy": sum(correct) / len(flat) if flat else None,
        "qa_chance": _mean(1 / len(q["choices"]) for q in flat),
        "num_questions": len(flat),
        "correct": correct,
        "totals": [len(q) for q in questions],
    }


def _embed(
    embedder, wavs: list[torch.Tensor], rates: list[int], ids: list[str], what: str
) -> dict[int, torch.Tensor]:
    """Finite embedding rows of the non-empty clips, by index (clips grouped by sample rate)."""
    rows: dict[int, torch.Tensor] = {}
    keep = [i for i, w in enumerate(wavs) if w.numel()]
    for rate in dict.fromkeys(rates[i] for i in keep):
        idx = [i for i in keep if rates[i] == rate]
        feats = torch.as_tensor(embedder.embed([wavs[i] for i in idx], rate)).double()
        if feats.dim() != 2 or feats.shape[0] != len(idx):
            raise ValueError(f"the audio embedder returned shape {tuple(feats.shape)} for {len(idx)} {what}")
        rows.update(zip(idx, feats))
    bad = [ids[i] for i, row in rows.items() if not torch.isfinite(row).all()]
    if bad:
        raise ValueError(f"the audio embedder returned NaN or Inf for the {what} of {bad[:5]}")
    return rows


def audio_scores(
    generated: Sequence[torch.Tensor],
    generated_rates: Sequence[int],
    references: Sequence[torch.Tensor],
    reference_rates: Sequence[int],
    ids: Sequence[str],
    embedder,
    fad: bool = True,
) -> dict[str, Any]:
    """Per-item audio-audio ``cosines`` of generated vs reference clips (an empty generated clip scores 0),
    ``empty_clips`` and, with ``fad``, the Fréchet audio distance of the non-empty generated clips to the
    references (``None`` with fewer than 2 on either side)."""
    _same_length(generated, references, "generated clips")
    gen = _embed(embedder, list(generated), list(generated_rates), list(ids), "generated clips")
    ref = _embed(embedder, list(references), list(reference_rates), list(ids), "reference clips")
    if len(ref) != len(references):
        raise ValueError(f"empty reference clips: {[i for j, i in enumerate(ids) if j not in ref][:5]}")
    keep = sorted(gen)
    cosines = torch.zeros(len(generated))
    if keep:
        cosines[keep] = cosine_similarity(
            torch.stack([gen[i] for i in keep]), torch.stack([ref[i] for i in keep])
        )
    out: dict[str, Any] = {"cosines": cosines.tolist(), "empty_clips": len(generated) - len(keep)}
    if fad:
        enough = len(keep) >= 2 and len(ref) >= 2
        out["fad"] = (
            frechet_distance(torch.stack([gen[i] for i in keep]), torch.stack(list(ref.values())))
            if enough
            else None
        )
    return out


# ---------------------------------------------------------------------------------------------- documents


def _jsonable(value):
    """Plain JSON data: NaN/Inf -> None, tensors and numpy values -> Python."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (torch.Tensor, np.ndarray, np.generic)):
        return _jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def format_value(value) -> str:
    """A metric as table text: ``None`` -> ``n/a``, floats with 4 significant digits."""
    if value is None:
        return "n/a"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _markdown(results: Mapping, meta: Mapping, files: Mapping[str, list[str]]) -> str:
    lines = ["# Bagpiper evaluation", ""]
    lines += [
        f"- {k}: `{format_value(v) if not isinstance(v, Mapping) else json.dumps(_jsonable(v))}`"
        for k, v in meta.items()
    ]
    for name, result in results.items():
        lines += ["", f"## {name}", "", "| metric | value |", "| --- | --- |"]
        lines += [f"| {k} | {format_value(v)} |" for k, v in result.metrics.items() if k != "attributes"]
        table = result.metrics.get("attributes") or {}
        if table:
            lines += [
                "",
                f"### Attribute accuracy ({name})",
                "",
                "| attribute | accuracy | chance | n |",
                "| --- | --- | --- | --- |",
            ]
            lines += [
                f"| {a} | {v['accuracy']:.3f} | {v['chance']:.3f} | {v['count']} |" for a, v in table.items()
            ]
        lines += [f"\n![{Path(f).stem}]({f})" for f in files.get(name, [])]
    return "\n".join(lines) + "\n"


def summary(results: Mapping) -> str:
    """One line per probe: its scalar metrics (``name key=value ...``)."""
    return "\n".join(
        f"{name} " + " ".join(f"{k}={format_value(v)}" for k, v in r.metrics.items() if k != "attributes")
        for name, r in results.items()
    )


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_attribute_accuracy(table: Mapping[str, Mapping], path: Path, title: str = "") -> Path:
    """Bars of accuracy next to chance, one panel per category (``category`` itself in an ``all`` panel)."""
    plt = _plt()
    groups = {"all": ["category"] if "category" in table else []}
    groups.update({c: [a for a in synthetic.ATTRIBUTES[c] if a in table] for c in CATEGORIES})
    groups = {k: v for k, v in groups.items() if v}
    fig, axes = plt.subplots(
        1,
        len(groups),
        figsize=(2 + 0.6 * sum(map(len, groups.values())), 3.2),
        squeeze=False,
        gridspec_kw={"width_ratios": [len(v) for v in groups.values()]},
    )
    for ax, (group, names) in zip(axes[0], groups.items()):
        x = np.arange(len(names))
        ax.bar(x - 0.2, [table[n]["accuracy"] for n in names], 0.4, label="accuracy")
        ax.bar(x + 0.2, [table[n]["chance"] for n in names], 0.4, color="0.7", label="chance")
        ax.set_xticks(x, names, rotation=45, ha="right", fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_title(group)
    axes[0][0].set_ylabel("accuracy")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def _log_spectrogram(wav: torch.Tensor) -> np.ndarray:
    wav = wav.float().reshape(-1)
    n_fft = 512 if wav.numel() >= 512 else 64
    wav = torch.nn.functional.pad(wav, (0, max(0, n_fft - wav.numel())))
    spec = torch.stft(wav, n_fft, n_fft // 4, window=torch.hann_window(n_fft), return_complex=True)
    return (20 * torch.log10(spec.abs().clamp(min=1e-5))).numpy()


def plot_spectrogram_pairs(pairs: Sequence, path: Path) -> Path:
    """One row per :class:`~bagpiper_lib.evaluation.probes.AudioPair`: reference and generated spectrograms
    on a shared time axis (the longer clip's duration), so a wrong length shows."""
    plt = _plt()
    fig, axes = plt.subplots(len(pairs), 2, figsize=(8, 2.2 * len(pairs)), squeeze=False)
    for row, pair in zip(axes, pairs):
        seconds = max(
            pair.reference.numel() / pair.reference_rate, pair.generated.numel() / pair.generated_rate
        )
        for ax, wav, rate, label in (
            (row[0], pair.reference, pair.reference_rate, "reference"),
            (row[1], pair.generated, pair.generated_rate, "generated"),
        ):
            ax.set_title(f"{pair.id} ({label})", fontsize=8)
            if wav.numel() == 0:
                ax.text(0.5, 0.5, "empty clip", ha="center", va="center")
                continue
            extent = [0, wav.numel() / rate, 0, rate / 2]
            ax.imshow(_log_spectrogram(wav), origin="lower", aspect="auto", extent=extent)
            ax.set_xlim(0, seconds)
            ax.set_xlabel("time (s)", fontsize=7)
            ax.set_ylabel("Hz", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def write_report(
    results: Mapping, out_dir: str | Path, meta: Mapping | None = None, num_spectrograms: int = 3
) -> dict[str, Path]:
    """Write ``results.json``, ``results.md`` and the plots of ``results`` (``{name: ProbeResult}``) under ``out_dir``.

    Returns ``{"json": ..., "markdown": ..., "<probe>_attributes": ..., "<probe>_spectrograms": ...}``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    files: dict[str, list[str]] = {}
    for name, result in results.items():
        if result.metrics.get("attributes"):
            path = plot_attribute_accuracy(
                result.metrics["attributes"],
                out / f"attribute_accuracy_{name}.png",
                f"{name}: attribute accuracy vs chance",
            )
            paths[f"{name}_attributes"] = path
            files.setdefault(name, []).append(path.name)
        if result.audio and num_spectrograms > 0:
            path = plot_spectrogram_pairs(result.audio[:num_spectrograms], out / f"spectrograms_{name}.png")
            paths[f"{name}_spectrograms"] = path
            files.setdefault(name, []).append(path.name)
    meta = dict(meta or {})
    document = {**meta, "probes": {n: r.to_dict() for n, r in results.items()}, "files": files}
    paths["json"] = out / "results.json"
    text = json.dumps(_jsonable(document), indent=2, allow_nan=False, ensure_ascii=False)
    paths["json"].write_text(text, encoding="utf-8")
    paths["markdown"] = out / "results.md"
    paths["markdown"].write_text(_markdown(results, meta, files), encoding="utf-8")
    return paths
