"""Lightning data: packed batches drawn from the task mixture, resumable mid-epoch, distributed-safe.

``BagpiperDataModule`` reads its records from a source (the embedded synthetic corpus by default, or
JSONL manifests), gets the sequence builder and codec from the model it trains (``setup`` runs after
the LightningModule is built), pre-tokenises audio-output clips once, and serves:

* train: :class:`PackedStream` — ``batches_per_epoch`` batches of ``rows_per_batch`` rows of
  ``token_budget`` positions, filled best-fit from a :class:`~bagpiper_lib.data.mixture.TaskMixture`
  with CFG condition dropout; its ``state_dict`` makes Lightning resume it exactly mid-epoch. Every
  rank draws the same global batches and keeps its own rows of them, so the data of a run does not
  depend on the number of ranks, and every rank yields the same number of batches.
* val / test: a fixed list of packed batches from held-out records.
* predict: requests from ``predict`` (captions to synthesise, audio files to caption).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import lightning as L
import torch

from bagpiper_lib.data.mixture import PRETRAIN_RATIOS, SFTItem, TaskMixture
from bagpiper_lib.data.prepare import encode_records
from bagpiper_lib.data.records import Record
from bagpiper_lib.sequence.messages import ConditionDropout
from bagpiper_lib.sequence.packing import PackedBatch, PackingPlan, collate_packed, truncate_sample
from recipes.module import scalars

__all__ = ["BagpiperDataModule", "PackedStream", "load_records", "load_sft_items"]

DEFAULT_SOURCE = {"name": "synthetic", "train_size": 1000, "val_size": 32, "seed": 0, "duration": [1.0, 1.5]}


def load_records(source: dict[str, Any], split: str) -> tuple[list[Record], list[str]]:
    """Records and a text corpus of ``split`` (``"train"`` / ``"val"``) from a source spec."""
    name = source.get("name")
    if name == "synthetic":
        from bagpiper_lib.data import synthetic

        size = int(source["train_size" if split == "train" else "val_size"])
        seed = int(source.get("seed", 0))
        kwargs = {"duration": tuple(source["duration"])} if "duration" in source else {}
        records = synthetic.generate(
            size, seed=seed, split="train" if split == "train" else "heldout", **kwargs
        )
        texts = synthetic.text_corpus(max(size, 8), seed=seed if split == "train" else seed + 1)
        return records, texts
    if name == "manifest":
        from bagpiper_lib.data.manifest import AudioLoader, read_manifest

        path = source.get(split)
        if path is None or not Path(path).is_file():
            raise FileNotFoundError(f"data.source.{split}: manifest {path!r} does not exist")
        records = read_manifest(path)
        loader = AudioLoader(
            sample_rate=int(source.get("sample_rate", 16000)),
            max_seconds=float(source.get("max_seconds", 30.0)),
        )
        kept = []
        for record in records:
            if record.audio is None and record.codes is None:
                wav = loader.load_or_none(record)
                if wav is None:
                    continue
                record.audio, record.sample_rate = wav, loader.sample_rate
            kept.append(record)
        texts_path = source.get("texts")
        if texts_path is not None and not Path(texts_path).is_file():
            raise FileNotFoundError(f"data.source.texts: {texts_path!r} does not exist")
        texts = Path(texts_path).read_text().splitlines() if texts_path else []
        return kept, [t for t in texts if t.strip()]
    raise ValueError(f"data.source.name must be 'synthetic' or 'manifest', got {name!r}")


def load_sft_items(path: str | None) -> list[SFTItem]:
    """SFT items from a JSONL file (``record_id, kind, request, reasoning, answer`` per line)."""
    if not path:
        return []
    if not Path(path).is_file():
        raise FileNotFoundError(f"data.source.sft: {path!r} does not exist")
    items = []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        row = json.loads(line)
        missing = [k for k in ("record_id", "kind", "request", "reasoning") if k not in row]
        if missing:
            raise ValueError(f"{path}:{number}: SFT item lacks {missing}")
        items.append(
            SFTItem(row["record_id"], row["kind"], row["request"], row["reasoning"], row.get("answer", ""))
        )
    return items


class FixedBatches:
    """A re-iterable, fixed sequence of batches (a plain list would read as several dataloaders)."""

    def __init__(self, batches: list[PackedBatch]):
        self.batches = list(batches)

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class PackedStream:
    """Batches of packed rows drawn from a mixture; an iterable Lightning can checkpoint and resume.

    Args:
        mixture: the sample source.
        pad_ids: ``[K]`` fill of padding positions.
        token_budget: row length.
        rows_per_batch: rows per batch.
        batches: batches per epoch (``len``).
        dropout: CFG condition dropout transform (or ``None``).
        seed: seed of the dropout RNG.
        world, rank: data-parallel size and this process's rank. Every rank draws the same global
            batch of ``rows_per_batch * world`` rows (same mixture seed everywhere) and keeps rows
            ``[rank * rows_per_batch, (rank + 1) * rows_per_batch)``, so a run's data does not depend
            on how many processes share it: 2 ranks x 2 rows see exactly the rows of 1 rank x 4.
            Every rank yields the same number of batches (no hang on uneven ends).
    """

    def __init__(
        self,
        mixture: TaskMixture,
        pad_ids: torch.Tensor,
        token_budget: int,
        rows_per_batch: int,
        batches: int,
        dropout: ConditionDropout | None = None,
        seed: int = 0,
        world: int = 1,
        rank: int = 0,
    ):
        if not 0 <= rank < world:
            raise ValueError(f"rank must be in [0, world={world}), got {rank}")
        self.world, self.rank = int(world), int(rank)
        self.mixture, self.pad_ids, self.budget = mixture, pad_ids, int(token_budget)
        self.rows, self.batches, self.dropout = int(rows_per_batch), int(batches), dropout
        self.rng = random.Random(seed)
        self.consumed = 0  # batches of the current epoch already yielded
        self.truncated = 0
        self._pending = None  # a drawn sample that did not fit the previous batch
        self._resume = None  # (mixture, rng) state from just before the pending sample was drawn

    def __len__(self) -> int:
        return self.batches

    def __iter__(self):
        if self.consumed >= self.batches:
            self.consumed = 0
        while self.consumed < self.batches:
            batch = self._next_batch()
            self.consumed += 1
            yield batch

    def _draw(self):
        # TaskMixture.state_dict is a fresh snapshot (an immutable RNG state, new containers): no copy
        snapshot = (self.mixture.state_dict(), self.rng.getstate())
        sample = self.mixture.sample()
        if self.dropout is not None:
            sample = self.dropout(sample, self.rng)
        if len(sample) > self.budget:
            sample = truncate_sample(sample, self.budget)
            self.truncated += 1
        return sample, snapshot

    def _next_batch(self) -> PackedBatch:
        rows: list[list[int]] = [[] for _ in range(self.rows * self.world)]
        space = [self.budget] * len(rows)
        samples = []
        while True:
            if self._pending is not None:
                sample, snapshot = self._pending, self._resume
                self._pending = self._resume = None
            else:
                sample, snapshot = self._draw()
            fits = [i for i in range(len(rows)) if space[i] >= len(sample)]
            if not fits:
                self._pending, self._resume = sample, snapshot
                break
            best = min(fits, key=lambda i: space[i])
            rows[best].append(len(samples))
            samples.append(sample)
            space[best] -= len(sample)
            if all(s < 0.005 * self.budget + 1 for s in space):
                break
        # An empty row always has room, so every row holds a sample; keep this rank's rows.
        mine = rows[self.rank * self.rows : (self.rank + 1) * self.rows]
        picked = [i for row in mine for i in row]
        local = {i: j for j, i in enumerate(picked)}
        plan = PackingPlan(
            rows=[[local[i] for i in row] for row in mine],
            truncated=[],
            rejected=[],
            budget=self.budget,
            lengths=[len(samples[i]) for i in picked],
        )
        return collate_packed([samples[i] for i in picked], plan, self.pad_ids)

    def state_dict(self) -> dict[str, Any]:
        if self._pending is not None:
            mixture_state, rng_state = self._resume
        else:
            mixture_state, rng_state = self.mixture.state_dict(), self.rng.getstate()
        return {
            "mixture": mixture_state,
            "rng": rng_state,
            "consumed": self.consumed,
            "pending": self._pending is not None,
            "truncated": self.truncated,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.mixture.load_state_dict(state["mixture"])
        rng = state["rng"]
        self.rng.setstate((rng[0], tuple(rng[1]), rng[2]))
        self.consumed = int(state["consumed"])
        self.truncated = int(state.get("truncated", 0))
        self._pending = self._resume = None
        if state["pending"]:
            self._pending, self._resume = self._draw()


class BagpiperDataModule(L.LightningDataModule):
    """Data of a Bagpiper run.

    Args:
        source: ``{"name": "synthetic", "train_size", "val_size", "seed", "duration"}`` (default) or
            ``{"name": "manifest", "train": path, "val": path, "texts": path, "sample_rate": 16000}``.
        tasks: task -> share by tokens (default pretraining 300 : 150 : 150).
        token_budget: positions per packed row.
        rows_per_batch: rows per batch and rank (the global batch is ``rows_per_batch x ranks``; every
            rank draws the same global batches and trains on its own rows of them).
        batches_per_epoch: training batches per epoch (the same on every rank).
        val_batches: validation batches (fixed).
        cfg_dropout: CFG condition dropout probability.
        predict: ``{"captions": [...], "audio": [paths], "requests": [...], "text_settings": {...},
            "audio_settings": {...}}`` (sampling overrides, e.g. ``{max_steps: 500, cfg_scale: 3}``).
        seed: base seed of the training stream (the same on every rank; the global batches do not
            depend on the number of ranks).
    """

    def __init__(
        self,
        source: dict[str, Any] | None = None,
        tasks: dict[str, float] | None = None,
        token_budget: int = 512,
        rows_per_batch: int = 4,
        batches_per_epoch: int = 100,
        val_batches: int = 4,
        cfg_dropout: float = 0.05,
        predict: dict[str, Any] | None = None,
        seed: int = 0,
    ):
        super().__init__()
        self.save_hyperparameters()
        source, tasks, predict = scalars([source, tasks, predict])
        self.source = (
            {**DEFAULT_SOURCE, **(source or {})}
            if (source or {}).get("name", "synthetic") == "synthetic"
            else dict(source)
        )
        self.tasks = dict(tasks or PRETRAIN_RATIOS)
        self.token_budget, self.rows_per_batch = token_budget, rows_per_batch
        self.batches_per_epoch, self.val_batches = batches_per_epoch, val_batches
        self.cfg_dropout, self.predict_spec, self.seed = cfg_dropout, dict(predict or {}), seed
        self._train = self._val = None
        self.val_records: list[Record] = []
        self.train_records: list[Record] = []  # set by setup("fit")

    def _model(self):
        if self.trainer is None or self.trainer.lightning_module is None:
            raise RuntimeError("BagpiperDataModule needs the trainer's LightningModule (its model) in setup")
        return self.trainer.lightning_module.model

    def setup(self, stage: str | None = None) -> None:
        model = self._model()
        rank = self.trainer.global_rank if self.trainer is not None else 0
        world = self.trainer.world_size if self.trainer is not None else 1
        if stage in ("fit", "validate", "test", None) and self._val is None:
            val, val_texts = load_records(self.source, "val")
            self.val_records = encode_records(val, model.codec)
            mixture = TaskMixture(
                model.builder,
                self.val_records,
                val_texts,
                ratios=self.tasks,
                sft=load_sft_items(self.source.get("sft")),
                seed=self.seed + 10_000,
            )
            stream = PackedStream(
                mixture, model._stream_pads, self.token_budget, self.rows_per_batch, self.val_batches
            )
            self._val = FixedBatches(list(stream))  # held-out batches, identical every validation
        if stage in ("fit", None) and self._train is None:
            train, texts = load_records(self.source, "train")
            self.train_records = encode_records(train, model.codec)
            mixture = TaskMixture(
                model.builder,
                self.train_records,
                texts,
                ratios=self.tasks,
                sft=load_sft_items(self.source.get("sft")),
                seed=self.seed,
            )
            dropout = ConditionDropout(model.vocab, self.cfg_dropout) if self.cfg_dropout > 0 else None
            self._train = PackedStream(
                mixture,
                model._stream_pads,
                self.token_budget,
                self.rows_per_batch,
                self.batches_per_epoch,
                dropout,
                seed=self.seed,
                world=world,
                rank=rank,
            )

    def train_dataloader(self):
        return self._train

    def val_dataloader(self):
        return self._val

    def test_dataloader(self):
        return self._val

    def predict_dataloader(self):
        spec = self.predict_spec
        settings = {
            "text_settings": dict(spec.get("text_settings") or {}),
            "audio_settings": dict(spec.get("audio_settings") or {}),
        }
        items = [{"kind": "synthesize", "caption": c, **settings} for c in spec.get("captions", [])]
        items += [{"kind": "caption", "audio": str(p), **settings} for p in spec.get("audio", [])]
        items += [{"kind": "respond", "request": r, **settings} for r in spec.get("requests", [])]
        if not items:
            raise ValueError(
                "predict needs data.predict.captions, data.predict.audio or data.predict.requests"
            )
        return FixedBatches([[item] for item in items])

    def state_dict(self) -> dict[str, Any]:
        return {}
