"""EnCodec through Meta's reference ``encodec`` package (``pip install 'bagpiper-lib[encodec]'``).

Two reference architectures, selected by ``model``:

* ``"24khz"``: mono, causal, 75 frames/s (hop 320); bandwidth 1.5 / 3 / 6 / 12 / 24 kbps ->
  2 / 4 / 8 / 16 / 32 codebooks of 1024. Causal convolutions and a forward LSTM see only the past,
  and the clip is zero-padded to whole frames before encoding, so a padded batch matches encoding
  alone on every frame (``context_frames = 0``).
* ``"48khz"``: stereo, non-causal, 150 frames/s; bandwidth 3 / 6 / 12 / 24 kbps -> 2 / 4 / 8 / 16
  codebooks. Mono input is fed to both channels and the decoded channels are averaged. The
  reference encodes 1 s segments with 1 % overlap, whose frames do not tile a single 150 Hz stream;
  this adapter encodes the whole clip as one segment so codes form one regular ``[B, K, T]`` grid.
  The model normalises loudness per clip and its scale is not part of the codes, so decoded audio
  is rescaled to ``decode_rms`` (default 0.1 RMS). Clip-level statistics make ``context_frames``
  ``None`` (ragged batches are encoded grouped by length).

``pretrained`` accepts a directory written by :meth:`EnCodec.save_pretrained`, the original
checkpoint file (``encodec_24khz-d7cc33bc.th`` / ``encodec_48khz-7e698e3e.th``, read with
``torch.load(weights_only=True)``), or a directory holding that file (the reference ``repository``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from bagpiper_lib.codecs.base import (
    AudioCodec,
    import_optional,
    load_state,
    load_strict,
    resolve_bandwidth,
    save_state,
    seeded,
)

__all__ = ["EnCodec", "REFERENCE_MODELS", "TINY_CONFIG"]

# The reference package's settings for its two released models (``EncodecModel.encodec_model_*``).
REFERENCE_MODELS: dict[str, dict[str, Any]] = {
    "24khz": {
        "target_bandwidths": [1.5, 3.0, 6.0, 12.0, 24.0],
        "sample_rate": 24_000,
        "channels": 1,
        "causal": True,
        "norm": "weight_norm",
        "normalize": False,
    },
    "48khz": {
        "target_bandwidths": [3.0, 6.0, 12.0, 24.0],
        "sample_rate": 48_000,
        "channels": 2,
        "causal": False,
        "norm": "time_group_norm",
        "normalize": True,
    },
}

# SEANet arguments of a ~0.1 M parameter model with the real hop (8 * 5 * 4 * 2 = 320 samples).
TINY_CONFIG: dict[str, Any] = {"n_filters": 4, "dimension": 16, "lstm": 1}


class EnCodec(AudioCodec):
    """EnCodec via the reference ``encodec`` package.

    Args:
        pretrained: our saved directory, an original ``.th`` checkpoint, or a directory holding one.
        model: ``"24khz"`` or ``"48khz"`` (inferred from a ``.th`` file name when it names one).
        bandwidth: kbps, one of the model's target bandwidths; default the largest.
        num_codebooks: instead of ``bandwidth``, the number of residual codebooks (24 kHz: 2, 4, 8, 16
            or 32 for 1.5 / 3 / 6 / 12 / 24 kbps).
        config: SEANet keyword arguments (``n_filters``, ``dimension``, ``lstm``, ``ratios``, ...)
            for a random-init model; ignored when ``pretrained`` is given.
        decode_rms: loudness of decoded audio for models that normalise their input (48 kHz).
        seed: RNG seed of the random init.
    """

    def __init__(
        self,
        pretrained: str | Path | None = None,
        model: str = "24khz",
        bandwidth: float | None = None,
        config: dict[str, Any] | None = None,
        decode_rms: float = 0.1,
        seed: int = 0,
        num_codebooks: int | None = None,
    ):
        super().__init__()
        import_optional("encodec", "encodec")
        state, source = None, None
        if pretrained is not None:
            model, config, state, source = _read_pretrained(Path(pretrained), model)
        if model not in REFERENCE_MODELS:
            raise ValueError(f"model must be one of {sorted(REFERENCE_MODELS)}, got {model!r}")
        self.model_name = model
        self.config = dict(config or {})
        with seeded(seed):
            self.model = _build(model, self.config)
            if state is None:
                _randomize_codebooks(self.model)
        if state is not None:
            load_strict(self.model, state, source)
        rate = self.model.frame_rate
        self.bandwidth, self.num_codebooks = resolve_bandwidth(
            f"EnCodec {model}",
            [float(b) for b in self.model.target_bandwidths],
            lambda kbps: self.model.quantizer.get_num_quantizers_for_bandwidth(rate, kbps),
            bandwidth,
            num_codebooks,
        )
        self.model.set_target_bandwidth(self.bandwidth)
        self.decode_rms = float(decode_rms)
        self.sample_rate = int(self.model.sample_rate)
        self.hop_length = int(math.prod(self.model.encoder.ratios))
        self.codebook_size = int(self.model.quantizer.bins)
        self.context_frames = 0 if REFERENCE_MODELS[model]["causal"] else None
        self.freeze()

    def _encode(self, wav: torch.Tensor) -> torch.Tensor:
        x = wav[:, None].expand(-1, self.model.channels, -1)
        codes, _scale = self.model._encode_frame(x)
        return codes

    def _decode(self, codes: torch.Tensor) -> torch.Tensor:
        wav = self.model._decode_frame((codes, None)).mean(dim=1)
        if self.model.normalize:
            rms = wav.pow(2).mean(dim=-1, keepdim=True).sqrt()
            wav = wav * (self.decode_rms / (rms + 1e-8))
        return wav

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``config.json`` (``model`` and SEANet ``config``) and ``model.safetensors``."""
        return save_state(
            directory, {"codec": "encodec", "model": self.model_name, "config": self.config}, self.model
        )


def _build(model: str, config: dict[str, Any]) -> torch.nn.Module:
    """The reference ``EncodecModel`` for ``model`` with SEANet arguments ``config`` (random init)."""
    from encodec import modules, quantization
    from encodec.model import EncodecModel

    ref = REFERENCE_MODELS[model]
    seanet = {"channels": ref["channels"], "norm": ref["norm"], "causal": ref["causal"], **config}
    encoder = modules.SEANetEncoder(**seanet)
    decoder = modules.SEANetDecoder(**seanet)
    frame_rate = math.ceil(ref["sample_rate"] / encoder.hop_length)
    n_q = int(1000 * ref["target_bandwidths"][-1] // (frame_rate * 10))
    quantizer = quantization.ResidualVectorQuantizer(dimension=encoder.dimension, n_q=n_q, bins=1024)
    return EncodecModel(
        encoder,
        decoder,
        quantizer,
        list(ref["target_bandwidths"]),
        ref["sample_rate"],
        ref["channels"],
        normalize=ref["normalize"],
        segment=None,
        name=f"encodec_{model}",
    )


def _read_pretrained(path: Path, model: str) -> tuple[str, dict[str, Any], dict[str, torch.Tensor], Path]:
    """Resolve ``pretrained`` to ``(model, config, state_dict, source)``."""
    if path.is_dir() and (path / "config.json").is_file():
        config, state = load_state(path)
        return config.get("model", model), config.get("config", {}), state, path
    if path.is_dir():
        found = sorted(path.glob("encodec_*.th"))
        if not found:
            raise FileNotFoundError(
                f"pretrained directory {str(path)!r} holds neither config.json + model.safetensors "
                "(our save_pretrained) nor an original encodec_*.th checkpoint"
            )
        path = found[0]
    if not path.is_file():
        raise FileNotFoundError(f"pretrained EnCodec checkpoint {str(path)!r} does not exist")
    for name in REFERENCE_MODELS:
        if name in path.name:
            model = name
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"cannot read EnCodec checkpoint {str(path)!r}: {err}") from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"EnCodec checkpoint {str(path)!r} is not a state dict of tensors")
    return model, {}, state, path


def _randomize_codebooks(model: torch.nn.Module) -> None:
    """The reference starts codebooks at zero until k-means runs on a training batch; give them values."""
    for name, buffer in model.named_buffers():
        if name.endswith("_codebook.embed"):
            buffer.copy_(torch.randn_like(buffer))
        elif name.endswith("_codebook.embed_avg"):
            buffer.copy_(model.get_buffer(name[: -len("_avg")]))
        elif name.endswith("_codebook.inited"):
            buffer.fill_(1.0)
