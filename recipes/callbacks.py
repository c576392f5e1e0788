"""Callbacks of the recipes: prediction files (text, WAV, spectrogram PNG) and the demo's learning report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

__all__ = ["PredictionWriter", "LearningReport", "save_spectrogram"]


def save_spectrogram(wav: torch.Tensor, sample_rate: int, path: str | Path, title: str = "") -> Path:
    """A log-magnitude STFT of ``wav [N]`` as a PNG (matplotlib, Agg backend: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    wav = wav.detach().float().cpu().reshape(-1)
    n_fft = 512 if wav.numel() >= 512 else max(16, 1 << (max(wav.numel(), 2) - 1).bit_length() - 1)
    spec = torch.stft(wav, n_fft, hop_length=n_fft // 4, window=torch.hann_window(n_fft), return_complex=True)
    db = 20 * torch.log10(spec.abs().clamp(min=1e-5))
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.imshow(
        db.numpy(), origin="lower", aspect="auto", extent=[0, wav.numel() / sample_rate, 0, sample_rate / 2]
    )
    ax.set_xlabel("time (s)")
    ax.set_ylabel("frequency (Hz)")
    ax.set_title(title[:80])
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


class PredictionWriter(BasePredictionWriter):
    """Writes each prediction: ``<i>.json`` (text, caption, reasoning), and for audio ``<i>.wav`` + ``<i>.png``."""

    def __init__(self, out_dir: str = "predictions"):
        super().__init__(write_interval="batch")
        self.out_dir = Path(out_dir)

    def write_on_batch_end(
        self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0
    ):
        from bagpiper_lib.audio import save_audio

        self.out_dir.mkdir(parents=True, exist_ok=True)
        for j, item in enumerate(prediction):
            stem = self.out_dir / f"{batch_idx:05d}_{j}"
            meta = {k: v for k, v in item.items() if k not in ("wav",)}
            if "wav" in item and item["wav"].numel() > 0:
                save_audio(stem.with_suffix(".wav"), item["wav"], item["sample_rate"])
                save_spectrogram(
                    item["wav"], item["sample_rate"], stem.with_suffix(".png"), item.get("caption", "")
                )
                meta["wav"] = str(stem.with_suffix(".wav"))
            stem.with_suffix(".json").write_text(json.dumps(meta, indent=2))


class LearningReport(L.Callback):
    """At the end of ``fit``: validation loss at the start vs the end, and held-out caption accuracy per
    attribute beside its chance level (synthetic corpus). Printed, and written to ``<log_dir>/report.json``."""

    def __init__(self) -> None:
        self.first: dict[str, float] | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        """Validation loss of the untrained model, on the same held-out batches validation uses."""
        loss = pl_module.through_strategy("initial_val_loss")
        if loss is not None:
            self.first = {"val/loss": loss}

    def on_fit_end(self, trainer, pl_module) -> None:
        from bagpiper_lib.data import synthetic

        log_dir = Path(trainer.log_dir or ".")  # a collective call under DDP: every rank makes it
        if not trainer.is_global_zero:
            return

        last = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        report: dict[str, Any] = {
            "val_loss_first": (self.first or {}).get("val/loss"),
            "val_loss_last": last.get("val/loss"),
        }
        rows = []
        for key, value in sorted(last.items()):
            if key.startswith("val/acc_"):
                name = key[len("val/acc_") :]
                chance = synthetic.chance_level(name)
                report[f"acc_{name}"] = {"accuracy": value, "chance": chance}
                rows.append(f"  {name:<14} {value:6.1%}   (chance {chance:6.1%})")
        lines = [
            "",
            "Learning report",
            f"  validation loss: first {report['val_loss_first']} -> last {report['val_loss_last']}",
        ]
        if rows:
            lines += ["  held-out caption accuracy per attribute:", *rows]
        print("\n".join(lines))
        log_dir.mkdir(parents=True, exist_ok=True)
        (log_dir / "report.json").write_text(json.dumps(report, indent=2))
