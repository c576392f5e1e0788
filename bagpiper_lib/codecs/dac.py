"""Descript Audio Codec through the reference ``descript-audio-codec`` package (``pip install 'bagpiper-lib[dac]'``).

Reference architectures (``model``), each with codebooks of 1024 entries:

======== =========== ======== ========== =========
model    sample rate hop      frame rate codebooks
======== =========== ======== ========== =========
16khz    16 000      320      50 Hz      12
24khz    24 000      320      75 Hz      32
44khz    44 100      512      86.13 Hz   9
======== =========== ======== ========== =========

``num_codebooks`` uses the first ``n`` residual codebooks (a lower bitrate). The encoder is a
non-causal convolution stack, so a padded batch matches encoding alone on all frames except the
last ``context_frames`` of each item (a conservative receptive-field bound, see
:func:`~bagpiper_lib.codecs.base.conv_context_frames`).

``pretrained`` accepts a directory written by :meth:`DAC.save_pretrained` or an original release file
(``weights_16khz.pth`` etc.: ``{"state_dict", "metadata": {"kwargs"}}``, read with
``torch.load(weights_only=True)``; never as a pickled package).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import torch

from bagpiper_lib.codecs.base import (
    AudioCodec,
    conv_context_frames,
    import_optional,
    load_state,
    load_strict,
    save_state,
    seeded,
)

__all__ = ["DAC", "REFERENCE_MODELS", "TINY_CONFIG"]

# Constructor arguments of ``dac.DAC`` for the released models.
REFERENCE_MODELS: dict[str, dict[str, Any]] = {
    "16khz": {
        "encoder_rates": [2, 4, 5, 8],
        "decoder_rates": [8, 5, 4, 2],
        "n_codebooks": 12,
        "sample_rate": 16_000,
    },
    "24khz": {
        "encoder_rates": [2, 4, 5, 8],
        "decoder_rates": [8, 5, 4, 2],
        "n_codebooks": 32,
        "sample_rate": 24_000,
    },
    "44khz": {
        "encoder_rates": [2, 4, 8, 8],
        "decoder_rates": [8, 8, 4, 2],
        "n_codebooks": 9,
        "sample_rate": 44_100,
    },
}

# A ~0.1 M parameter 16 kHz model with the real hop (320) and 4 codebooks.
TINY_CONFIG: dict[str, Any] = {"encoder_dim": 4, "decoder_dim": 16, "n_codebooks": 4}


class DAC(AudioCodec):
    """Descript Audio Codec via the reference ``dac`` package.

    Args:
        pretrained: our saved directory or an original ``weights_*.pth`` release file.
        model: ``"16khz"``, ``"24khz"`` or ``"44khz"`` (random init only).
        config: ``dac.DAC`` keyword arguments overriding the reference model's (random init only).
        num_codebooks: how many residual codebooks to use; default all the model has.
        seed: RNG seed of the random init.
    """

    def __init__(
        self,
        pretrained: str | Path | None = None,
        model: str = "44khz",
        config: dict[str, Any] | None = None,
        num_codebooks: int | None = None,
        seed: int = 0,
    ):
        super().__init__()
        dac = import_optional("dac", "dac")
        if pretrained is not None:
            kwargs, state, source = _read_pretrained(Path(pretrained))
        else:
            if model not in REFERENCE_MODELS:
                raise ValueError(f"model must be one of {sorted(REFERENCE_MODELS)}, got {model!r}")
            kwargs, state, source = {**REFERENCE_MODELS[model], **(config or {})}, None, None
        with seeded(seed):
            self.model = dac.DAC(**kwargs)
        if state is not None:
            load_strict(self.model, state, source)
        self.kwargs = kwargs
        available = int(self.model.n_codebooks)
        self.num_codebooks = available if num_codebooks is None else int(num_codebooks)
        if not 1 <= self.num_codebooks <= available:
            raise ValueError(
                f"num_codebooks must be in [1, {available}] for this DAC model, got {num_codebooks!r}"
            )
        self.sample_rate = int(self.model.sample_rate)
        self.hop_length = int(self.model.hop_length)
        self.codebook_size = int(self.model.codebook_size)
        self.context_frames = conv_context_frames(self.model.encoder, self.hop_length)
        self.freeze()

    def _encode(self, wav: torch.Tensor) -> torch.Tensor:
        z = self.model.encoder(wav[:, None])
        _, codes, *_ = self.model.quantizer(z, self.num_codebooks)
        return codes

    def _decode(self, codes: torch.Tensor) -> torch.Tensor:
        z, _, _ = self.model.quantizer.from_codes(codes)
        return self.model.decode(z)[:, 0]

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``config.json`` (the ``dac.DAC`` arguments) and ``model.safetensors``."""
        return save_state(directory, {"codec": "dac", "kwargs": self.kwargs}, self.model)


def _read_pretrained(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], Path]:
    """Resolve ``pretrained`` to ``(dac.DAC kwargs, state_dict, source)``."""
    if path.is_dir():
        config, state = load_state(path)
        return dict(config["kwargs"]), state, path
    if not path.is_file():
        raise FileNotFoundError(f"pretrained DAC checkpoint {str(path)!r} does not exist")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(
            f"cannot read DAC checkpoint {str(path)!r} as plain weights (torch.load weights_only=True): {err}"
        ) from err
    if not isinstance(blob, dict) or "state_dict" not in blob or "kwargs" not in blob.get("metadata", {}):
        raise ValueError(f"DAC checkpoint {str(path)!r} lacks 'state_dict' or 'metadata.kwargs'")
    from dac import DAC as Reference

    accepted = set(inspect.signature(Reference).parameters)
    kwargs = {k: v for k, v in blob["metadata"]["kwargs"].items() if k in accepted}
    return kwargs, blob["state_dict"], path
