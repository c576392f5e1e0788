"""The LightningModule: a ``BagpiperModel`` built from plain-data component specs, plus the optimiser,
schedule, freezing policy of a training stage and cheap validation probes.

Every init argument is plain data, so the hparams are YAML, ``load_from_checkpoint`` rebuilds the model,
and an ablation is a one-line override (``--model.codec.name=dac``).
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch

from bagpiper_lib.audio import resample
from bagpiper_lib.model import BagpiperModel
from bagpiper_lib.model.bagpiper import DEFAULT_CONFIG

__all__ = ["BagpiperLitModule", "lr_lambda"]

DEFAULT_OPTIMIZER = {"lr": 1e-4, "betas": [0.9, 0.95], "weight_decay": 0.01, "eps": 1e-8, "fused": None}
DEFAULT_SCHEDULER = {"name": "cosine", "warmup_steps": 0, "total_steps": None, "min_lr_ratio": 0.0}
DEFAULT_FREEZE = {"encoder": True, "backbone": False, "embeddings": False}
DEFAULT_PROBE = {"num_clips": 8, "max_steps": 96, "examples": 4, "audio_examples": 1, "audio_max_steps": 64}


_NUMBER = re.compile(r"[-+]?(\d+\.?\d*([eE][-+]?\d+)?|\.\d+([eE][-+]?\d+)?|inf|nan)")


def scalars(value: Any) -> Any:
    """Dotted overrides into a free-form dict arrive as strings (``--model.encoder.config.d_model=128``
    gives ``"128"``, the parser cannot know the type): turn number, ``true`` / ``false`` and ``null``
    strings inside dicts and lists back into values, recursively. Other strings stay strings."""
    if isinstance(value, dict):
        return {k: scalars(v) for k, v in value.items()}
    if isinstance(value, list):
        return [scalars(v) for v in value]
    if not isinstance(value, str):
        return value
    text = value.strip()
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("null", "none", "~"):
        return None
    if re.fullmatch(r"[-+]?\d+", text):
        return int(text)
    if _NUMBER.fullmatch(lowered):
        return float(text)
    return value


def lr_lambda(name: str, warmup_steps: int, total_steps: int | None, min_lr_ratio: float = 0.0):
    """Multiplier of the peak LR at a step: linear warm-up, then ``constant`` or ``cosine`` decay."""
    if name not in ("constant", "cosine"):
        raise ValueError(f"scheduler name must be 'constant' or 'cosine', got {name!r}")
    if name == "cosine" and not total_steps:
        raise ValueError("a cosine schedule needs scheduler.total_steps (or trainer.max_steps)")

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        if name == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


class BagpiperLitModule(L.LightningModule):
    """Trains a ``BagpiperModel``.

    Args:
        codec, encoder, adaptor, backbone, tokenizer, pattern, vocabulary, head, codec_loss_weight,
        own_codebook_only, loss_chunk_size: the model config (see ``bagpiper_lib.model.DEFAULT_CONFIG``);
            ``encoder: null`` builds a model without audio input.
        init_from: weights to start from: a previous stage's Lightning ``.ckpt`` or a directory written by
            ``BagpiperModel.save_pretrained``. Tensors that do not fit are reported, not silently dropped.
        freeze: ``{"encoder": bool, "backbone": bool, "embeddings": bool}`` — frozen parts of this stage
            (warm-up: encoder and backbone body; pretrain and SFT: encoder).
        optimizer: AdamW arguments (``lr``, ``betas``, ``weight_decay``, ``eps``).
        scheduler: ``{"name": "constant" | "cosine", "warmup_steps", "total_steps", "min_lr_ratio"}``;
            ``total_steps`` defaults to ``trainer.max_steps``.
        gradient_checkpointing: recompute backbone layers in backward.
        standardize_clips: at the start of a fresh ``fit``, set the encoder's per-dimension
            normalisation from its features of the first this-many training clips
            (:meth:`~bagpiper_lib.encoders.mel.MelEncoder.standardize`, global mean-variance
            normalisation); 0 (default) = off. Needs an encoder with ``standardize`` (``mel``). Skipped
            with ``init_from`` (the previous stage's normalisation is kept); on resume the checkpoint's
            weights replace it, so a resumed run continues the same model.
        probe: validation probes on held-out clips (0 clips: off): ``num_clips`` captioned with at most
            ``max_steps`` tokens and scored per attribute; the first ``examples`` reference/generated
            caption pairs and ``audio_examples`` clips synthesised from reference captions (at most
            ``audio_max_steps`` frames) are written to ``<log_dir>/examples/step_<N>/``.
    """

    def __init__(
        self,
        codec: dict[str, Any] | None = None,
        encoder: dict[str, Any] | None = None,
        adaptor: dict[str, Any] | None = None,
        backbone: dict[str, Any] | None = None,
        tokenizer: dict[str, Any] | None = None,
        pattern: dict[str, Any] | None = None,
        vocabulary: dict[str, Any] | None = None,
        head: str = "shared",
        codec_loss_weight: float | None = None,
        own_codebook_only: bool = False,
        loss_chunk_size: int = 1024,
        init_from: str | None = None,
        freeze: dict[str, bool] | None = None,
        optimizer: dict[str, Any] | None = None,
        scheduler: dict[str, Any] | None = None,
        gradient_checkpointing: bool = False,
        probe: dict[str, Any] | None = None,
        standardize_clips: int = 0,
    ):
        super().__init__()
        self.save_hyperparameters()
        codec, encoder, adaptor, backbone, tokenizer, pattern, vocabulary = scalars(
            [codec, encoder, adaptor, backbone, tokenizer, pattern, vocabulary]
        )
        freeze, optimizer, scheduler, probe = scalars([freeze, optimizer, scheduler, probe])
        config = {
            "codec": codec or DEFAULT_CONFIG["codec"],
            "encoder": encoder,
            "adaptor": adaptor or DEFAULT_CONFIG["adaptor"],
            "backbone": backbone or DEFAULT_CONFIG["backbone"],
            "tokenizer": tokenizer or DEFAULT_CONFIG["tokenizer"],
            "pattern": pattern or DEFAULT_CONFIG["pattern"],
            "vocabulary": vocabulary or DEFAULT_CONFIG["vocabulary"],
            "head": head,
            "codec_loss_weight": codec_loss_weight,
            "own_codebook_only": own_codebook_only,
            "loss_chunk_size": loss_chunk_size,
        }
        self.model = BagpiperModel.from_config(config)
        self.freeze_spec = {**DEFAULT_FREEZE, **(freeze or {})}
        unknown = sorted(set(self.freeze_spec) - set(DEFAULT_FREEZE))
        if unknown:
            raise ValueError(f"unknown freeze keys {unknown}; known: {sorted(DEFAULT_FREEZE)}")
        self.optimizer_spec = {**DEFAULT_OPTIMIZER, **(optimizer or {})}
        self.scheduler_spec = {**DEFAULT_SCHEDULER, **(scheduler or {})}
        self.probe_spec = {**DEFAULT_PROBE, **(probe or {})}
        self.load_report = None
        if init_from:
            self.load_report = self._init_from(init_from)
        self._apply_freeze(encoder)
        if gradient_checkpointing:
            self.model.backbone.set_gradient_checkpointing(True)
        self._first_val_loss: float | None = None
        if (
            isinstance(standardize_clips, bool)
            or not isinstance(standardize_clips, int)
            or standardize_clips < 0
        ):
            raise ValueError(f"model.standardize_clips must be an integer >= 0, got {standardize_clips!r}")
        if standardize_clips and not hasattr(self.model.encoder, "standardize"):
            raise ValueError(
                f"model.standardize_clips={standardize_clips} needs an encoder with standardize() (e.g. "
                f"mel); this model's encoder is {type(self.model.encoder).__name__}"
            )
        self.standardize_clips = standardize_clips
        self.standardized: tuple[torch.Tensor, torch.Tensor] | None = None

    # ------------------------------------------------------------------ setup
    def setup(self, stage: str) -> None:
        """Before a fresh fit with ``standardize_clips``, normalise the encoder's features over the
        first training clips (the datamodule's ``train_records``; resampled to the encoder's rate)."""
        if stage != "fit" or not self.standardize_clips or self.hparams.init_from:
            return
        records = getattr(getattr(self.trainer, "datamodule", None), "train_records", None)
        if records is None:
            raise ValueError(
                "model.standardize_clips needs a datamodule with train_records (BagpiperDataModule)"
            )
        encoder = self.model.encoder
        chosen = [r for r in records if r.audio is not None][: self.standardize_clips]
        clips = [resample(r.audio.float(), r.sample_rate, encoder.sample_rate) for r in chosen]
        if not clips:
            raise ValueError(
                "model.standardize_clips: the training records hold no audio to take statistics from"
            )
        self.standardized = encoder.standardize(clips)

    def _init_from(self, path: str):
        path = Path(path)
        if path.is_dir():
            # the components (encoder, backbone, codec) live in sub-directories beside the model's own
            # tensors: rebuild the saved model whole and take every tensor from it
            state = BagpiperModel.from_pretrained(path, strict=False).state_dict()
        elif not path.is_file():
            raise FileNotFoundError(f"model.init_from={str(path)!r} does not exist")
        else:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
            state = {k[len("model.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
        own = self.model.state_dict()
        fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        mismatched = sorted(k for k, v in state.items() if k in own and own[k].shape != v.shape)
        if mismatched:
            raise ValueError(
                f"checkpoint {str(path)!r} does not fit this model (another vocabulary or component?): "
                f"{len(mismatched)} tensors differ in shape, e.g. {mismatched[:3]}"
            )
        self.model.load_state_dict(fitting, strict=False)
        return {"missing": sorted(set(own) - set(state)), "unexpected": sorted(set(state) - set(own))}

    def _apply_freeze(self, encoder_spec: dict | None) -> None:
        model, spec = self.model, self.freeze_spec
        if model.encoder is not None:
            model.encoder.set_trainable(not spec["encoder"])
            if not spec["encoder"] and encoder_spec and encoder_spec.get("pretrained"):
                warnings.warn(
                    "freeze.encoder is false: the pretrained audio encoder will be fine-tuned. Every Bagpiper "
                    "stage keeps it frozen; set freeze.encoder: true unless this is intended.",
                    stacklevel=2,
                )
        model.backbone.set_trainable(not spec["backbone"])
        for p in (model.embed.weight, model.head.weight, model.stream_embed):
            p.requires_grad_(not spec["embeddings"])

    # ------------------------------------------------------------------ steps
    def _log_output(self, stage: str, out, batch_size: int) -> None:
        on_step = stage == "train"
        values = {
            "loss": out.loss,
            "text_loss": out.text_loss,
            "audio_loss": out.audio_loss,
            "text_acc": out.text_accuracy,
            "audio_acc": out.audio_accuracy,
        }
        for name, value in values.items():
            if torch.isfinite(value):
                self.log(
                    f"{stage}/{name}",
                    value.detach() if name != "loss" else value,
                    on_step=on_step,
                    on_epoch=not on_step,
                    prog_bar=name == "loss",
                    batch_size=batch_size,
                    sync_dist=not on_step,
                )
        for k, value in enumerate(out.codebook_losses):
            if torch.isfinite(value):
                self.log(
                    f"{stage}/codebook_{k}_loss",
                    value,
                    on_step=on_step,
                    on_epoch=not on_step,
                    batch_size=batch_size,
                    sync_dist=not on_step,
                )

    def through_strategy(self, method: str, *args: Any) -> Any:
        """``self.<method>(*args)``, entered through the strategy's wrapper where it shards weights.

        FSDP and DeepSpeed gather a module's sharded weights only inside the wrapper's forward: the root
        FSDP unit holds the weights outside the decoder layers and encoder blocks (embeddings, heads,
        adaptor), and an inner unit called first would wrongly make itself a root. Forwards made outside
        Lightning's steps (the learning report's first validation loss, the probe's captions and audio)
        therefore go through the wrapper as the steps do, on every rank, with Lightning's forward
        redirection. Other strategies call the method directly. Pass no tensors: the wrapper would move
        and cast them.
        """
        trainer = self._trainer
        strategy = getattr(trainer, "strategy", None)
        wrapper = getattr(strategy, "model", None)
        if wrapper is None or wrapper is self or not _shards_weights(strategy):
            return getattr(self, method)(*args)
        with strategy.precision_plugin.forward_context():  # the autocast a step would run under
            return strategy._forward_redirection(wrapper, self, method, *args)

    def initial_val_loss(self) -> float | None:
        """Validation loss over the datamodule's validation batches, weighted by targets as Lightning
        averages ``val/loss``; None without validation data. Call through :meth:`through_strategy`."""
        dm = getattr(self._trainer, "datamodule", None)
        batches = dm.val_dataloader() if dm is not None else None
        if not batches:
            return None
        was_training = self.training
        self.eval()
        with torch.no_grad():
            outs = [self.model(b.to(self.device)) for b in batches]
        self.train(was_training)
        total = sum(o.num_targets for o in outs)
        return sum(float(o.loss) * o.num_targets for o in outs) / max(total, 1)

    def _world(self) -> int:
        return int(self.trainer.world_size) if self._trainer is not None else 1

    def _run(self, batch):
        """``model(batch)``; with several processes, every rank also runs the audio encoder and adaptor.

        A batch without audio input skips them, which breaks data parallelism: FSDP gathers each
        encoder block's shards when the block runs (a rank that skips it leaves the others waiting in
        a mismatched collective), and DDP without ``find_unused_parameters`` expects a gradient for
        every trainable parameter. Such a rank runs them on one second of silence, before the
        backbone as real audio would be (FSDP collectives must come in the same order on every rank),
        and adds 0 times the result to its loss, so every rank runs the same modules and reduces the
        same gradients. (A batch whose audio needs two encoder calls, e.g. two sample rates, would
        still differ; the recipe's loaders resample to one rate.)
        """
        encoder = self.model.encoder
        idle = None
        audio = batch.get("audio_in") if isinstance(batch, Mapping) else getattr(batch, "audio_in", None)
        if encoder is not None and self._world() > 1 and not audio:
            device = self.model.embed.weight.device
            samples = torch.tensor([int(encoder.sample_rate)], device=device)
            feats, frames = encoder(torch.zeros(1, int(samples), device=device), samples)
            idle = self.model.adaptor(feats.to(self.model.embed.weight.dtype), frames)[0]
        out = self.model(batch)
        if idle is not None:
            out.loss = out.loss + 0.0 * idle.float().sum()
        return out

    def training_step(self, batch, batch_idx: int):
        out = self._run(batch)
        loss, global_loss = self._global_loss(out)
        self._log_output("train", out, out.num_targets)
        if global_loss is not None:  # the loss of the whole global batch (the same on every rank)
            self.log("train/global_loss", global_loss, on_step=True, on_epoch=False)
        return loss

    def _global_loss(self, out):
        """The loss whose data-parallel mean gradient is that of one process over the global batch.

        ``out.loss`` is normalised by this rank's stream-0 targets; DDP / FSDP / DeepSpeed average the
        gradients of the ranks, which weighs every rank equally even when their rows hold different
        numbers of targets. Rescaling by ``n_rank * world / n_global`` (one scalar all-reduce) makes
        the averaged gradient equal to the single-process gradient of the whole global batch, so a
        run does not depend on how many processes share it. Returns ``(loss to optimise, loss of the
        global batch or None)``; one process: ``(out.loss, None)``.
        """
        world = self._world()
        if world <= 1 or not torch.distributed.is_available() or not torch.distributed.is_initialized():
            return out.loss, None
        count = float(out.num_targets)
        sums = torch.stack([out.loss.detach() * count, out.loss.new_tensor(count)])
        torch.distributed.all_reduce(sums)
        weighted, targets = sums.tolist()
        return out.loss * (count * world / max(targets, 1.0)), weighted / max(targets, 1.0)

    def validation_step(self, batch, batch_idx: int):
        out = self._run(batch)
        self._log_output("val", out, out.num_targets)
        return out.loss

    def test_step(self, batch, batch_idx: int):
        out = self._run(batch)
        self._log_output("test", out, out.num_targets)
        return out.loss

    def predict_step(self, batch, batch_idx: int):
        results = []
        for item in batch:
            text, audio = item.pop("text_settings", None) or {}, item.pop("audio_settings", None) or {}
            if item["kind"] == "synthesize":
                (wav,) = self.model.synthesize(item["caption"], seed=batch_idx, **audio)
                results.append({**item, "wav": wav, "sample_rate": self.model.codec.sample_rate})
            elif item["kind"] == "caption":
                from bagpiper_lib.audio import load_audio

                wav, sr = load_audio(item["audio"])
                (caption,) = self.model.caption(wav, sr, seed=batch_idx, **text)
                results.append({**item, "text": caption})
            else:
                (gen,) = self.model.respond(
                    item["request"], seed=batch_idx, text=text or None, audio=audio or None
                )
                results.append(
                    {
                        **item,
                        "text": gen.caption,
                        "reasoning": gen.reasoning,
                        "wav": gen.wav,
                        "sample_rate": self.model.codec.sample_rate,
                    }
                )
        return results

    def on_validation_epoch_end(self) -> None:
        metrics = self.trainer.callback_metrics
        if "val/loss" in metrics and self._first_val_loss is None:
            self._first_val_loss = float(metrics["val/loss"])
        self._probe()

    def _probe(self) -> None:
        """Caption a few held-out clips and score the captions' attributes (synthetic corpus only)."""
        records = self._probe_records()
        if not records or self.model.encoder is None or self.trainer.sanity_checking:
            return
        from bagpiper_lib.data import synthetic

        captions, wavs = self.through_strategy("_probe_generate")
        scores = synthetic.attribute_accuracy(captions, records)
        for name, value in scores.items():
            self.log(f"val/acc_{name}", float(value), sync_dist=True)
        log_dir = Path(self.trainer.log_dir or self.trainer.default_root_dir)  # collective under DDP
        if self.trainer.is_global_zero:
            self._write_examples(log_dir / "examples", records, captions, wavs)

    def _probe_records(self) -> list:
        """The held-out records with audio among the first ``probe.num_clips``."""
        n = int(self.probe_spec["num_clips"])
        dm = getattr(self.trainer, "datamodule", None)
        return [r for r in getattr(dm, "val_records", [])[:n] if r.audio is not None] if n > 0 else []

    def _probe_generate(self) -> tuple[list[str], list[torch.Tensor]]:
        """Greedy captions of the probe's clips, and audio synthesised from the first
        ``probe.audio_examples`` reference captions. Every rank runs it (see :meth:`through_strategy`)."""
        records = self._probe_records()
        spec = self.probe_spec
        captions = self.model.caption(
            [r.audio for r in records],
            records[0].sample_rate,
            seed=0,
            temperature=0.0,
            max_steps=int(spec["max_steps"]),
        )
        audio_n = int(spec["audio_examples"])
        wavs: list[torch.Tensor] = []
        if audio_n > 0 and self.model.codec is not None:
            prompts = [r.caption for r in records[:audio_n]]
            wavs = self.model.synthesize(prompts, seed=0, max_steps=int(spec["audio_max_steps"]))
        return captions, wavs

    def _write_examples(self, root: Path, records, captions: list[str], wavs: list[torch.Tensor]) -> None:
        """Generated examples of this validation round under ``root/step_<N>/``.

        ``captions.md``: the first ``probe.examples`` held-out clips, reference caption beside the
        generated one (also sent to TensorBoard as text when that logger is on); ``audio_<i>.wav`` +
        ``.png``: audio synthesised from the first ``probe.audio_examples`` reference captions
        (``probe.audio_max_steps`` frames at most), the generation side of the model.
        """
        from bagpiper_lib.audio import save_audio
        from recipes.callbacks import save_spectrogram

        spec = self.probe_spec
        out = root / f"step_{self.trainer.global_step:06d}"
        out.mkdir(parents=True, exist_ok=True)
        shown = list(zip(records, captions))[: int(spec["examples"])]
        lines = [f"# Validation examples at step {self.trainer.global_step}", ""]
        for record, caption in shown:
            lines += [f"## {record.id}", f"- reference: {record.caption}", f"- generated: {caption}", ""]
        text = "\n".join(lines)
        (out / "captions.md").write_text(text)
        experiment = getattr(self.logger, "experiment", None)
        if hasattr(experiment, "add_text"):
            experiment.add_text("val/examples", text, global_step=self.trainer.global_step)
        for i, (record, wav) in enumerate(zip(records, wavs)):
            if wav.numel() == 0:  # the model ended the audio at once: nothing to write
                continue
            save_audio(out / f"audio_{i}.wav", wav, self.model.codec.sample_rate)
            save_spectrogram(wav, self.model.codec.sample_rate, out / f"audio_{i}.png", record.caption)

    # ------------------------------------------------------------------ optimisation
    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        """Clip by global norm under every strategy.

        Under FSDP a rank holds only shards of each gradient, so ``torch.nn.utils.clip_grad_norm_``
        would clip by a per-rank norm (Lightning refuses it); the FSDP root's ``clip_grad_norm_``
        all-reduces the norm over ranks first. Other strategies use Lightning's own clipping.
        """
        if not gradient_clip_val:
            return
        from torch.distributed.fsdp import FullyShardedDataParallel

        root = self.trainer.strategy.model
        if isinstance(root, FullyShardedDataParallel) and gradient_clip_algorithm in (None, "norm"):
            root.clip_grad_norm_(float(gradient_clip_val))
            return
        inner = getattr(optimizer, "optimizer", optimizer)  # a LightningOptimizer wraps the torch one
        plugin = getattr(self.trainer.strategy, "precision_plugin", None)
        if getattr(inner, "_step_supports_amp_scaling", False) and getattr(plugin, "scaler", None) is None:
            # Lightning's mixed-precision plugin refuses to clip for an optimizer that unscales
            # gradients itself (the fused AdamW), for the sake of fp16's GradScaler. bf16 has no scaler
            # and nothing to unscale: the gradients are final here, so clip them as Lightning would.
            params = [p for group in inner.param_groups for p in group["params"] if p.grad is not None]
            if gradient_clip_algorithm == "value":
                torch.nn.utils.clip_grad_value_(params, float(gradient_clip_val))
            else:
                torch.nn.utils.clip_grad_norm_(params, float(gradient_clip_val))
            return
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            raise ValueError("every parameter is frozen: check the freeze settings of this stage")
        spec = dict(self.optimizer_spec)
        decay = float(spec.pop("weight_decay"))
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        fused = spec.get("fused")
        if fused is None:  # one fused kernel per step on GPUs (foreach: a quarter of a 0.6B step on an H100)
            # not under DeepSpeed (its own optimizer wrapper) nor fp16's GradScaler, which would leave the
            # unscaling to the fused step, after gradient clipping has seen scaled gradients
            fp16 = str(getattr(self._trainer, "precision", "")).startswith("16")
            fused = all(p.is_cuda for p in params) and not _is_deepspeed(self._trainer) and not fp16
        optimizer = torch.optim.AdamW(
            groups,
            lr=float(spec["lr"]),
            betas=tuple(spec["betas"]),
            eps=float(spec["eps"]),
            fused=bool(fused),
        )
        sched = dict(self.scheduler_spec)
        total = sched.get("total_steps") or (
            self.trainer.max_steps if self.trainer and self.trainer.max_steps > 0 else None
        )
        factor = lr_lambda(sched["name"], int(sched["warmup_steps"]), total, float(sched["min_lr_ratio"]))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def _shards_weights(strategy) -> bool:
    """True for the strategies whose wrapper gathers sharded weights in its forward (FSDP, DeepSpeed)."""
    from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy

    return isinstance(strategy, (FSDPStrategy, DeepSpeedStrategy))


def _is_deepspeed(trainer) -> bool:
    """DeepSpeed steps its own optimizer wrapper over flat partitions: leave the torch AdamW unfused there."""
    from lightning.pytorch.strategies import DeepSpeedStrategy

    return isinstance(getattr(trainer, "strategy", None), DeepSpeedStrategy)
