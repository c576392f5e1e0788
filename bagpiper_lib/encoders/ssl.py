"""Self-supervised speech encoders: HuBERT and WavLM through ``transformers`` (16 kHz raw waveform).

Frames: a 7-layer strided conv feature extractor (real checkpoints: kernels ``10,3,3,3,3,2,2``, strides
``5,2,2,2,2,2,2``) turns ``N`` samples into ``T' = floor((N - receptive_field) / hop_length) + 1``
frames: 400 samples (25 ms) of receptive field, a hop of 320 samples, 50 frames/s. Audio shorter than
one receptive field is rejected. The valid frame count of item ``b`` is the same formula on
``lengths[b]`` (``transformers``' ``_get_feat_extract_output_lengths``); features past it are zero.

Which hidden state is returned (``layer``):

* ``None`` (default): the model output ``last_hidden_state`` (after the final LayerNorm in pre-LN
  "stable layer norm" models such as hubert-large / wavlm-large).
* an int ``i``: ``hidden_states[i]`` exactly as ``transformers`` returns it with
  ``output_hidden_states=True``: 0 is the input of the first transformer layer, ``i`` the output of
  layer ``i``; negative ints count from the end (-1 = last layer, before the final LayerNorm of a
  pre-LN model, so ``-1`` and ``None`` differ there).
* ``"mean"``: the uniform average of all ``num_layers + 1`` hidden states. A learned layer weighting
  belongs in the trainable adaptor, not in a frozen encoder.

Padded batches give every item the features it gets alone on its valid frames (to float rounding):

* ``feat_extract_norm == "layer"`` configs (hubert-large, wavlm-large) normalise each frame on its
  own, so one batched call with the sample-level ``attention_mask`` matches.
* ``feat_extract_norm == "group"`` configs (hubert-base, wavlm-base(-plus)) GroupNorm each conv
  channel over the whole clip, so zero padding would change every frame, and ``transformers`` says not
  to pass a mask: items are encoded in groups of equal length, with no padding at all.

Input normalisation (``normalize``): zero mean, unit variance over each item's valid samples, as
``Wav2Vec2FeatureExtractor(do_normalize=True)`` does; checkpoints trained on normalised audio need it.
Default: the ``do_normalize`` of the checkpoint's ``preprocessor_config.json`` when there is one,
else ``feat_extract_norm == "layer"`` (the convention of the released checkpoints).

Training-time regularisers of SSL fine-tuning (SpecAugment time masking and LayerDrop) are switched off
in the loaded config, so a trainable encoder is deterministic apart from dropout and ``hidden_states``
always holds ``num_layers + 1`` entries. ``trainable=True`` trains every parameter that reaches the
selected output; the others (the SpecAugment mask embedding, layers after an int ``layer``) stay frozen.
All layers still run for an int ``layer``: the checkpoint is kept whole, so it saves and reloads as is.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import torch

from bagpiper_lib.encoders.base import AudioEncoder
from bagpiper_lib.utils import seeded

__all__ = ["SSLEncoder", "HubertEncoder", "WavLMEncoder", "TINY_CONFIG"]

# About 31 k parameters, but the real conv kernels and strides (hop 320, receptive field 400) so
# frame counts match the released checkpoints. Group norm, like hubert-base / wavlm-base-plus.
TINY_CONFIG: dict[str, Any] = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "conv_dim": [16, 16, 16, 16, 16, 16, 16],
    "num_conv_pos_embeddings": 16,
    "num_conv_pos_embedding_groups": 2,
}

SAMPLE_RATE = 16000
_NORM_EPS = 1e-7  # the epsilon of Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm


class SSLEncoder(AudioEncoder):
    """A ``transformers`` HuBERT-style SSL model as an :class:`AudioEncoder`.

    ``forward(wav [B, N], lengths [B]) -> feats [B, T', hidden_size], frames [B]`` at 16 kHz, with
    ``T' = num_frames(N)`` and ``frames = num_frames(lengths)`` (see the module docstring).

    Args:
        pretrained: a local directory written by :meth:`save_pretrained` (or the model class's own
            ``save_pretrained``) or a hub id such as ``"facebook/hubert-base-ls960"`` (hub ids need the
            local HF cache, or network access with ``local_files_only=False``).
        config: config keyword arguments for a random-init model (ignored with ``pretrained``).
        layer: ``None`` (model output), an int index into ``hidden_states`` or ``"mean"``.
        normalize: per-item zero-mean unit-variance input; ``None`` picks the checkpoint's default.
        seed: RNG seed for random init, so a preset builds the same weights every time.
        trainable: ``False`` (default) freezes the encoder: eval mode, no gradients.
        local_files_only: passed to ``from_pretrained``; ``True`` so nothing is downloaded unless asked.
    """

    model_type: str  # transformers' config.model_type
    model_class: str  # name of the transformers model class
    config_class: str  # name of the transformers config class

    def __init__(
        self,
        pretrained: str | Path | None = None,
        config: dict[str, Any] | None = None,
        layer: int | str | None = None,
        normalize: bool | None = None,
        seed: int = 0,
        trainable: bool = False,
        local_files_only: bool = True,
    ):
        super().__init__()
        import transformers

        model_cls = getattr(transformers, self.model_class)
        feature_config: dict[str, Any] = {}
        if pretrained is not None:
            self.model = self._load(model_cls, pretrained, local_files_only)
            feature_config = _read_feature_config(pretrained, local_files_only)
        else:
            config_cls = getattr(transformers, self.config_class)
            with seeded(seed):
                self.model = model_cls(config_cls(**(config or {})))
        cfg = self.model.config
        if getattr(cfg, "add_adapter", False):
            raise ValueError(
                f"{self.model_type} configs with add_adapter=True are not supported: their output has a "
                "different frame rate; downsample with the adaptor's `downsample` instead"
            )
        cfg.apply_spec_augment = False
        cfg.layerdrop = 0.0

        self.sample_rate = SAMPLE_RATE
        self.output_dim = int(cfg.hidden_size)
        self.num_layers = int(cfg.num_hidden_layers)
        self.layer = self._check_layer(layer)
        self.uses_attention_mask = cfg.feat_extract_norm == "layer"
        if normalize is None:
            normalize = feature_config.get("do_normalize", self.uses_attention_mask)
        self.normalize = bool(normalize)
        self.hop_length = math.prod(int(s) for s in cfg.conv_stride)
        self.receptive_field = self._receptive_field()
        self.set_trainable(trainable)

    # ------------------------------------------------------------------ construction helpers
    def _load(self, model_cls: Any, pretrained: str | Path, local_files_only: bool) -> torch.nn.Module:
        from transformers import PretrainedConfig

        source = str(pretrained)
        path = Path(source).expanduser()
        looks_local = path.is_absolute() or source.startswith((".", "~")) or source.count("/") > 1
        if looks_local and not path.is_dir():
            raise FileNotFoundError(
                f"pretrained={source!r}: no such directory; expected a directory written by "
                f"save_pretrained (config.json + model.safetensors) or a hub id like 'org/name'"
            )
        if path.is_dir():
            source = str(path)
            if not (path / "config.json").is_file():
                raise FileNotFoundError(
                    f"cannot load a {self.model_type} checkpoint from pretrained={source!r}: the directory "
                    "has no config.json; expected a directory written by save_pretrained"
                )
        try:
            config_dict, _ = PretrainedConfig.get_config_dict(source, local_files_only=local_files_only)
            found = config_dict.get("model_type")
            if found != self.model_type:
                raise ValueError(
                    f"pretrained={source!r} holds a {found!r} model, but this encoder loads {self.model_type!r}"
                )
            return model_cls.from_pretrained(source, local_files_only=local_files_only)
        except OSError as err:
            raise FileNotFoundError(
                f"cannot load a {self.model_type} checkpoint from pretrained={source!r} "
                f"(local_files_only={local_files_only}): {err}"
            ) from err

    def _check_layer(self, layer: int | str | None) -> int | str | None:
        n = self.num_layers
        if layer is None or layer == "mean":
            return layer
        if isinstance(layer, int) and not isinstance(layer, bool) and -(n + 1) <= layer <= n:
            return layer % (n + 1)
        raise ValueError(
            f"layer={layer!r} is not a hidden layer of this {n}-layer {self.model_type} model; expected "
            f"an int in [{-(n + 1)}, {n}] (0 = input of the first transformer layer, {n} = last layer), "
            "'mean' (average of all hidden states) or None (the model output)"
        )

    def _receptive_field(self) -> int:
        """Samples seen by one output frame: ``1 + sum_i (kernel_i - 1) * prod_{j<i} stride_j``."""
        field, stride = 1, 1
        for k, s in zip(self.model.config.conv_kernel, self.model.config.conv_stride):
            field += (int(k) - 1) * stride
            stride *= int(s)
        return field

    def set_trainable(self, trainable: bool) -> SSLEncoder:
        """As :meth:`AudioEncoder.set_trainable`, but parameters that cannot reach the output stay frozen.

        Those are SpecAugment's mask embedding (SpecAugment is off) and, for an int ``layer``, the
        transformer layers after it and a pre-LN model's final LayerNorm; with ``requires_grad`` they
        would never get a gradient, which DDP reports as unused parameters.
        """
        super().set_trainable(trainable)
        for param in self._unused_parameters():
            param.requires_grad_(False)
        return self

    def _unused_parameters(self) -> list[torch.nn.Parameter]:
        unused = [self.model.masked_spec_embed] if hasattr(self.model, "masked_spec_embed") else []
        if isinstance(self.layer, int):
            unused += [p for layer in self.model.encoder.layers[self.layer :] for p in layer.parameters()]
            if self.model.config.do_stable_layer_norm:
                unused += list(self.model.encoder.layer_norm.parameters())
        return unused

    # ------------------------------------------------------------------ frames
    @property
    def frame_rate(self) -> float:
        """Feature frames per second (50 for the released checkpoints)."""
        return self.sample_rate / self.hop_length

    def num_frames(self, num_samples: int | torch.Tensor) -> int | torch.Tensor:
        """Frames of the conv feature extractor for ``num_samples`` (int or ``[B]``); 0 if too short."""
        n = num_samples
        for k, s in zip(self.model.config.conv_kernel, self.model.config.conv_stride):
            n = (n - int(k)) // int(s) + 1
        if isinstance(n, torch.Tensor):
            return torch.where(num_samples >= self.receptive_field, n, torch.zeros_like(n))
        return n if num_samples >= self.receptive_field else 0

    # ------------------------------------------------------------------ forward
    def _forward(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``wav [B, N]`` (zero past ``lengths [B]``) -> ``feats [B, T', D]``, ``frames [B]``."""
        if (lengths < self.receptive_field).any():
            raise ValueError(
                f"audio too short for {self.model_type}: lengths {lengths.tolist()} samples at "
                f"{self.sample_rate} Hz, need at least {self.receptive_field} samples (one encoder frame, "
                f"{1000 * self.receptive_field / self.sample_rate:g} ms)"
            )
        n = wav.shape[-1]
        if self.normalize:
            wav = _zero_mean_unit_var(wav, lengths)
        if bool((lengths == n).all()):
            feats = self._encode(wav, None)
        elif self.uses_attention_mask:
            mask = torch.arange(n, device=wav.device)[None] < lengths[:, None]
            feats = self._encode(wav, mask.long())
        else:
            feats = self._encode_grouped(wav, lengths)
        frames = self.num_frames(lengths)
        valid = torch.arange(feats.shape[1], device=feats.device)[None] < frames[:, None]
        return feats.masked_fill(~valid[..., None], 0.0), frames

    def _encode_grouped(self, wav: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Encode rows of equal valid length together, unpadded; frames past an item's end stay 0."""
        total = self.num_frames(wav.shape[-1])
        feats = wav.new_zeros((wav.shape[0], total, self.output_dim))
        for length in lengths.unique().tolist():
            rows = (lengths == length).nonzero().squeeze(1)
            group = self._encode(wav[rows, :length], None)
            group = torch.nn.functional.pad(group, (0, 0, 0, total - group.shape[1]))
            feats = feats.index_put((rows,), group.to(feats.dtype))
        return feats

    def _encode(self, wav: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """One call of the transformers model: ``wav [B, N]`` -> the selected hidden state ``[B, T', D]``."""
        out = self.model(wav, attention_mask=attention_mask, output_hidden_states=self.layer is not None)
        if self.layer is None:
            return out.last_hidden_state
        if self.layer == "mean":
            return torch.stack(tuple(out.hidden_states)).mean(dim=0)
        return out.hidden_states[self.layer]

    # ------------------------------------------------------------------ saving
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``config.json`` + ``model.safetensors`` + ``preprocessor_config.json`` (Hugging Face layout).

        ``layer`` is a build argument, not part of the checkpoint: pass it again when reloading.
        """
        from transformers import Wav2Vec2FeatureExtractor

        directory = Path(directory)
        self.model.save_pretrained(str(directory))
        Wav2Vec2FeatureExtractor(
            feature_size=1,
            sampling_rate=self.sample_rate,
            padding_value=0.0,
            do_normalize=self.normalize,
            return_attention_mask=self.uses_attention_mask,
        ).save_pretrained(str(directory))
        return directory

    def extra_repr(self) -> str:
        return (
            f"model_type={self.model_type!r}, output_dim={self.output_dim}, num_layers={self.num_layers}, "
            f"layer={self.layer!r}, normalize={self.normalize}, frame_rate={self.frame_rate:g}"
        )


class HubertEncoder(SSLEncoder):
    """HuBERT (``transformers.HubertModel``), 16 kHz, 50 frames/s; see :class:`SSLEncoder` for arguments."""

    model_type = "hubert"
    model_class = "HubertModel"
    config_class = "HubertConfig"


class WavLMEncoder(SSLEncoder):
    """WavLM (``transformers.WavLMModel``), 16 kHz, 50 frames/s; see :class:`SSLEncoder` for arguments."""

    model_type = "wavlm"
    model_class = "WavLMModel"
    config_class = "WavLMConfig"

    def _encode(self, wav: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        # WavLM's attention hands torch a bool padding mask next to a float position bias; torch warns
        # about the mix on every call although the result is right.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Support for mismatched key_padding_mask")
            return super()._encode(wav, attention_mask)


def _zero_mean_unit_var(wav: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """``wav [B, N]`` normalised per item over its first ``lengths[b]`` samples; zero past them."""
    mask = torch.arange(wav.shape[-1], device=wav.device)[None] < lengths[:, None]
    x = wav.float()  # statistics in float32 even for a half-precision encoder
    count = lengths.float()[:, None]
    mean = (x * mask).sum(-1, keepdim=True) / count
    var = (((x - mean) * mask) ** 2).sum(-1, keepdim=True) / count
    return ((x - mean) / torch.sqrt(var + _NORM_EPS) * mask).to(wav.dtype)


def _read_feature_config(pretrained: str | Path, local_files_only: bool) -> dict[str, Any]:
    """The checkpoint's ``preprocessor_config.json`` as a dict, or ``{}`` when it has none."""
    from transformers import Wav2Vec2FeatureExtractor

    try:
        config, _ = Wav2Vec2FeatureExtractor.get_feature_extractor_dict(
            str(pretrained), local_files_only=local_files_only
        )
    except OSError:
        return {}
    return config
