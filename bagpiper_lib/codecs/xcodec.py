"""X-Codec (semantic + acoustic RVQ codec) through ``transformers.XcodecModel``.

The paper's codec: X-Codec hubert-general, 16 kHz, hop 320 (50 frames/s), codebooks of 1024 entries;
``bandwidth`` selects how many residual codebooks are used (0.5 kbps per codebook at 50 Hz x 10 bits:
0.5 -> 1, 1 -> 2, 1.5 -> 3, 2 -> 4, 4 -> 8 codebooks; 4 kbps = 8 codebooks as in the paper).

Its semantic branch is HuBERT (group norm over time, global self-attention), so every frame depends on
the whole clip: ``context_frames = None`` and ragged batches are encoded grouped by length.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from bagpiper_lib.codecs.base import AudioCodec, resolve_bandwidth, seeded

__all__ = ["XCodec", "TINY_CONFIG"]

# Small enough for a CPU test (about 0.4 M parameters) but with the real hop (8*5*4*2 = 320 samples
# at 16 kHz) and the real HuBERT conv strides, so frame counts match the released checkpoints.
TINY_CONFIG: dict[str, Any] = {
    "acoustic_model_config": {
        "encoder_hidden_size": 4,
        "downsampling_ratios": [8, 5, 4, 2],
        "decoder_hidden_size": 32,
        "upsampling_ratios": [8, 5, 4, 2],
        "hidden_size": 16,
    },
    "semantic_model_config": {
        "hidden_size": 16,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 32,
        "conv_dim": [16, 16, 16, 16, 16, 16, 16],
        "num_conv_pos_embeddings": 16,
        "num_conv_pos_embedding_groups": 2,
    },
}


class XCodec(AudioCodec):
    """X-Codec via ``transformers.XcodecModel``.

    Args:
        pretrained: a local directory written by ``XcodecModel.save_pretrained`` (or by
            :meth:`save_pretrained`) or a hub id such as ``"hf-audio/xcodec-hubert-general"``
            (hub ids need network access or the local HF cache).
        config: ``XcodecConfig`` keyword arguments for a random-init model (ignored with ``pretrained``).
        bandwidth: kbps; one of the model's ``target_bandwidths``; default the largest (4.0 -> 8 codebooks).
        num_codebooks: instead of ``bandwidth``, the number of residual codebooks (1, 2, 3, 4 or 8 for
            the reference bandwidths 0.5 / 1 / 1.5 / 2 / 4 kbps).
        seed: RNG seed for random init, so a preset builds the same weights every time.
        local_files_only: passed to ``from_pretrained``; default ``True`` so nothing is downloaded
            unless asked for.
    """

    context_frames = None

    def __init__(
        self,
        pretrained: str | Path | None = None,
        config: dict[str, Any] | None = None,
        bandwidth: float | None = None,
        seed: int = 0,
        local_files_only: bool = True,
        num_codebooks: int | None = None,
    ):
        super().__init__()
        from transformers import XcodecConfig, XcodecModel

        if pretrained is not None:
            try:
                self.model = XcodecModel.from_pretrained(str(pretrained), local_files_only=local_files_only)
            except OSError as err:
                raise FileNotFoundError(
                    f"X-Codec pretrained={str(pretrained)!r} is neither a directory with config.json and "
                    f"model.safetensors nor a hub id available (local_files_only={local_files_only}): {err}"
                ) from err
        else:
            with seeded(seed):
                self.model = XcodecModel(XcodecConfig(**(config or {})))
                _randomize_codebooks(self.model)
        cfg = self.model.config
        self.bandwidth, self.num_codebooks = resolve_bandwidth(
            "X-Codec",
            [float(b) for b in cfg.target_bandwidths],
            self.model.quantizer.get_num_quantizers_for_bandwidth,
            bandwidth,
            num_codebooks,
        )
        self.sample_rate = int(cfg.sample_rate)
        self.hop_length = int(cfg.hop_length)
        self.codebook_size = int(cfg.codebook_size)
        self.freeze()

    def _encode(self, wav: torch.Tensor) -> torch.Tensor:
        return self.model.encode(wav[:, None], bandwidth=self.bandwidth, return_dict=False)

    def _decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.model.decode(codes, return_dict=False)[:, 0]

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``config.json`` + ``model.safetensors`` (the Hugging Face layout ``pretrained=`` reads)."""
        directory = Path(directory)
        self.model.save_pretrained(str(directory), safe_serialization=True)
        return directory


def _randomize_codebooks(model: torch.nn.Module) -> None:
    """Random-init codebooks: ``XcodecModel`` starts them at zero, which would map every frame to code 0."""
    for name, buffer in model.named_buffers():
        if name.endswith("codebook.embed"):
            buffer.copy_(torch.randn_like(buffer) / math.sqrt(buffer.shape[-1]))
        elif name.endswith("codebook.embed_avg"):
            buffer.copy_(model.get_buffer(name[: -len("_avg")]))
