"""Qwen3-Omni audio tower (the AuT encoder; the paper's default) via ``Qwen3OmniMoeAudioEncoder``.

Pipeline (defaults of the released model in brackets)::

    wav [B, N] at 16 kHz, lengths [B]
      -> LogMelSpectrogram(128)       feats [B, 128, T], frames [B] = lengths // 160   (100 frames/s)
      -> valid frames of every item, concatenated [128, sum(frames)], feature_lens = frames
      -> Qwen3OmniMoeAudioEncoder: chunks of 2 * n_window [100] frames, three stride-2 conv2d per chunk
         (a full chunk of 1 s gives 13 frames), sinusoid positions restarting in each chunk,
         self-attention inside windows of n_window_infer [800] mel frames, projection to output_dim
      -> feats [B, T', output_dim], lengths [B]

``lengths'[b] = output_lengths(frames[b])`` reproduces transformers' ``_get_feat_extract_output_lengths``:
13 frames per full chunk plus three ceil-halvings of the remaining frames (about 13 frames/s).

Items of a padded batch get exactly the features they get alone: the encoder pads the last chunk of
every item to the longest chunk in its call, and the convolutions of a chunk shorter than 100 frames
see that padding, so items shorter than one chunk are encoded in groups of equal frame count.

Real weights come out of a full Qwen3-Omni checkpoint directory (``config.json`` with
``thinker_config.audio_config``, sharded ``model-*.safetensors`` + ``model.safetensors.index.json``):
only the shards holding ``thinker.audio_tower.*`` tensors are opened and only those tensors are read,
so the 30B model is never materialised. :func:`load_tensors` is the reader (Whisper uses it too).
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from bagpiper_lib.encoders.base import AudioEncoder
from bagpiper_lib.encoders.mel import LogMelSpectrogram
from bagpiper_lib.utils import seeded

__all__ = [
    "Qwen3OmniEncoder",
    "TINY_CONFIG",
    "build_module",
    "load_exact",
    "load_tensors",
    "output_lengths",
    "parse_dtype",
    "read_config",
    "save_encoder",
    "seeded",
    "skip_init",
]

# 2 layers, d_model 32, 1 s chunks and 2 s attention windows (the real model: 32 layers, d_model 1280,
# 8 s windows, output_dim 2048); n_window must stay 50, see ``_check_config``.
TINY_CONFIG: dict[str, Any] = {
    "num_mel_bins": 128,
    "d_model": 32,
    "encoder_layers": 2,
    "encoder_attention_heads": 2,
    "encoder_ffn_dim": 64,
    "downsample_hidden_size": 8,
    "output_dim": 48,
    "n_window": 50,
    "n_window_infer": 200,
    "max_source_positions": 64,
}

# where the audio tower lives in a full checkpoint: the released layout, the transformers-5 module path,
# a thinker-only checkpoint (both layouts), and our own save_pretrained (no prefix)
FULL_PREFIXES = ("thinker.audio_tower.", "thinker.model.audio_tower.")
THINKER_PREFIXES = ("audio_tower.", "model.audio_tower.")
_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")


def output_lengths(frames: torch.Tensor, n_window: int = 50) -> torch.Tensor:
    """Encoder frames ``[B]`` for ``frames [B]`` mel frames.

    Equal to transformers' ``_get_feat_extract_output_lengths``: 13 per full chunk of ``2 * n_window``
    frames plus three ceil-halvings of the remaining ones.
    """
    chunk = 2 * n_window
    tail = (frames % chunk - 1) // 2 + 1
    return ((tail - 1) // 2 + 1 - 1) // 2 + 1 + (frames // chunk) * 13


def _halvings(n: int) -> int:
    for _ in range(3):
        n = (n - 1) // 2 + 1
    return n


def _check_config(config: Any) -> None:
    chunk = 2 * config.n_window
    if _halvings(chunk) != 13:
        raise ValueError(
            f"n_window={config.n_window} is not supported: transformers' Qwen3OmniMoeAudioEncoder assumes "
            f"13 encoder frames per chunk of 2 * n_window mel frames (n_window=50 gives 100 -> 13), "
            f"but 2 * n_window = {chunk} gives {_halvings(chunk)}"
        )
    if config.n_window_infer < chunk or config.n_window_infer % chunk:
        raise ValueError(
            f"n_window_infer={config.n_window_infer} must be a positive multiple of 2 * n_window = {chunk}"
        )
    if config.max_source_positions < 13:
        raise ValueError(f"max_source_positions={config.max_source_positions} must be at least 13")


# ---------------------------------------------------------------------------------- checkpoint reading
def _fetch(pretrained: str | Path, filename: str, local_files_only: bool, required: bool) -> Path | None:
    """``filename`` of a local directory or hub repo (from the HF cache unless downloads are allowed)."""
    path = Path(pretrained)
    if path.is_dir():
        if (path / filename).is_file():
            return path / filename
        if required:
            raise FileNotFoundError(f"pretrained directory {str(path)!r} lacks {filename}")
        return None
    if path.exists() or not _HUB_ID.fullmatch(str(pretrained)):
        raise FileNotFoundError(
            f"pretrained={str(pretrained)!r} is not a directory (nor a hub id of the form 'owner/name')"
        )
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(str(pretrained), filename, local_files_only=local_files_only))
    except Exception as err:  # missing entry, repo not cached (local_files_only) or network failure
        if required:
            raise FileNotFoundError(
                f"cannot get {filename} of pretrained={str(pretrained)!r} "
                f"(local_files_only={local_files_only}): {err}"
            ) from err
        return None


def read_config(pretrained: str | Path, local_files_only: bool = True) -> dict[str, Any]:
    """The ``config.json`` of a checkpoint directory or hub repo, as a dict."""
    path = _fetch(pretrained, "config.json", local_files_only, required=True)
    return json.loads(Path(path).read_text())


def load_tensors(
    pretrained: str | Path,
    prefixes: Sequence[str],
    anchor: str,
    local_files_only: bool = True,
    what: str = "encoder",
) -> dict[str, torch.Tensor]:
    """Read the tensors named ``<prefix>*`` from a safetensors checkpoint, with the prefix stripped.

    ``prefixes`` are tried in order; the first for which ``prefix + anchor`` (e.g.
    ``"thinker.audio_tower.conv2d1.weight"``) exists is used. Reads ``model.safetensors`` or the
    shards named in ``model.safetensors.index.json``; shards without a wanted tensor are never opened
    and no other tensor is read.
    """
    index = _fetch(pretrained, "model.safetensors.index.json", local_files_only, required=False)
    if index is not None:
        weight_map: dict[str, str] = json.loads(Path(index).read_text())["weight_map"]
    else:
        single = _fetch(pretrained, "model.safetensors", local_files_only, required=False)
        if single is None:
            raise FileNotFoundError(
                f"pretrained={str(pretrained)!r} has neither model.safetensors "
                f"nor model.safetensors.index.json"
            )
        with safe_open(str(single), framework="pt") as f:
            weight_map = dict.fromkeys(f.keys(), "model.safetensors")
    prefix = next((p for p in prefixes if p + anchor in weight_map), None)
    if prefix is None:
        expected = " or ".join(repr(p + anchor) for p in prefixes)
        raise ValueError(
            f"pretrained={str(pretrained)!r} holds no {what} tensors: expected a tensor named {expected}; "
            f"found {len(weight_map)} others, e.g. {sorted(weight_map)[:3]}"
        )
    by_file: dict[str, list[str]] = defaultdict(list)
    for key, file in weight_map.items():
        if key.startswith(prefix):
            by_file[file].append(key)
    state: dict[str, torch.Tensor] = {}
    for file, keys in by_file.items():
        path = _fetch(pretrained, file, local_files_only, required=True)
        with safe_open(str(path), framework="pt") as f:
            for key in keys:
                state[key[len(prefix) :]] = f.get_tensor(key)
    return state


def build_module(
    model_cls: Callable[[Any], nn.Module],
    cfg: Any,
    pretrained: str | Path | None,
    prefixes: Sequence[str],
    anchor: str,
    what: str,
    *,
    local_files_only: bool = True,
    seed: int = 0,
) -> nn.Module:
    """``model_cls(cfg)``, holding the weights of ``pretrained`` or randomly initialised under ``seed``.

    The checkpoint path shared by the encoders: with ``pretrained``, the tensors that
    :func:`load_tensors` finds under ``prefixes`` (``anchor`` picks the prefix, ``what`` names them in
    errors) go into a module built without random init, and must match it exactly (:func:`load_exact`);
    with ``pretrained=None``, the module is built inside :func:`~bagpiper_lib.utils.seeded`.
    """
    if pretrained is None:
        with seeded(seed):
            return model_cls(cfg)
    state = load_tensors(pretrained, prefixes, anchor, local_files_only, what)
    with skip_init():
        module = model_cls(cfg)
    load_exact(module, state, pretrained)
    return module


def load_exact(module: nn.Module, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """``load_state_dict`` that fails naming the missing and unexpected tensors of ``source``."""
    result = module.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"weights of pretrained={str(source)!r} do not match the {type(module).__name__} built from its "
            f"config: missing {result.missing_keys[:8]}, unexpected {result.unexpected_keys[:8]}"
        )


def parse_dtype(dtype: str | None) -> torch.dtype | None:
    """``"bfloat16"`` -> ``torch.bfloat16``; ``None`` stays ``None``; anything else fails by name."""
    if dtype is None:
        return None
    value = getattr(torch, str(dtype), None)
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise ValueError(f"dtype must name a floating-point torch dtype such as 'bfloat16', got {dtype!r}")
    return value


@contextmanager
def skip_init() -> Iterator[None]:
    """Build a transformers model without random init (its weights are loaded right after)."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # older transformers: initialise, which is only slower
        yield
        return
    with no_init_weights():
        yield


def save_encoder(directory: str | Path, config: dict[str, Any], module: nn.Module) -> Path:
    """Write ``config.json`` and ``model.safetensors`` holding ``module``'s state dict (no prefix)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True, default=str))
    return directory


# ---------------------------------------------------------------------------------- the encoder
class Qwen3OmniEncoder(AudioEncoder):
    """Qwen3-Omni audio tower: ``wav [B, N]`` at 16 kHz -> ``feats [B, T', output_dim]``, ``lengths [B]``.

    Args:
        pretrained: a full Qwen3-Omni checkpoint (local directory or hub id; only the audio tower is
            read), a thinker-only checkpoint, or a directory written by :meth:`save_pretrained`.
        config: ``Qwen3OmniMoeAudioEncoderConfig`` keyword arguments for a random-init tower (ignored
            with ``pretrained``).
        n_mels: mel bins of the front end; must equal the tower's ``num_mel_bins`` (default: that).
        max_seconds: longest accepted item; default 2400 s, the 40 minutes Qwen3-Omni is stated to
            handle (the tower itself has no limit: positions restart every second). ``None``: no limit.
        trainable: ``False`` (default) freezes the tower (eval mode, no gradients).
        seed: RNG seed of the random init.
        local_files_only: for hub ids, read only the local Hugging Face cache (default).
        dtype: parameter dtype, e.g. ``"bfloat16"``; default float32. The mel front end stays float32.
    """

    sample_rate = 16000

    def __init__(
        self,
        pretrained: str | Path | None = None,
        config: dict[str, Any] | None = None,
        n_mels: int | None = None,
        max_seconds: float | None = 2400.0,
        trainable: bool = False,
        seed: int = 0,
        local_files_only: bool = True,
        dtype: str | None = None,
    ):
        super().__init__()
        torch_dtype = parse_dtype(dtype)
        from transformers.models.qwen3_omni_moe.configuration_qwen3_omni_moe import (
            Qwen3OmniMoeAudioEncoderConfig,
        )
        from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import Qwen3OmniMoeAudioEncoder

        if pretrained is not None:
            raw = read_config(pretrained, local_files_only)
            if isinstance(raw.get("thinker_config"), dict):
                audio, prefixes = raw["thinker_config"].get("audio_config"), FULL_PREFIXES
            elif isinstance(raw.get("audio_config"), dict):
                audio, prefixes = raw["audio_config"], THINKER_PREFIXES
            else:
                audio, prefixes = raw, ("",)
            if not isinstance(audio, dict) or audio.get("model_type") != "qwen3_omni_moe_audio_encoder":
                raise ValueError(
                    f"config.json of pretrained={str(pretrained)!r} has no Qwen3-Omni audio tower config: "
                    f"expected thinker_config.audio_config (full checkpoint), audio_config (thinker) or "
                    f"model_type 'qwen3_omni_moe_audio_encoder' (save_pretrained)"
                )
            cfg = Qwen3OmniMoeAudioEncoderConfig.from_dict(audio)
        else:
            cfg, prefixes = Qwen3OmniMoeAudioEncoderConfig(**(config or {})), ()
        _check_config(cfg)
        self.model = build_module(
            Qwen3OmniMoeAudioEncoder,
            cfg,
            pretrained,
            prefixes,
            "conv2d1.weight",
            "audio tower",
            local_files_only=local_files_only,
            seed=seed,
        )
        if n_mels is not None and n_mels != cfg.num_mel_bins:
            raise ValueError(
                f"n_mels={n_mels} does not match the Qwen3-Omni audio tower, which expects "
                f"num_mel_bins={cfg.num_mel_bins} mel bins"
            )
        if max_seconds is not None and not max_seconds > 0:
            raise ValueError(f"max_seconds must be positive or None, got {max_seconds!r}")
        self.mel = LogMelSpectrogram(cfg.num_mel_bins, sample_rate=self.sample_rate)
        self.output_dim = int(cfg.output_dim)
        self.n_window = int(cfg.n_window)
        self.max_seconds = max_seconds
        if torch_dtype is not None:
            self.model.to(torch_dtype)
        self.set_trainable(trainable)

    def num_frames(self, num_samples: torch.Tensor) -> torch.Tensor:
        """Encoder frames ``[B]`` for ``num_samples [B]``: mel frames (``// hop``), then :meth:`output_lengths`."""
        return self.output_lengths(self.mel.num_frames(torch.as_tensor(num_samples)))

    def output_lengths(self, frames: torch.Tensor) -> torch.Tensor:
        """Encoder frames ``[B]`` for ``frames [B]`` valid mel frames (see :func:`output_lengths`)."""
        return output_lengths(frames, self.n_window)

    def _forward(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.max_seconds is not None and (lengths > self.max_seconds * self.sample_rate).any():
            raise ValueError(
                f"audio too long for this Qwen3-Omni encoder: lengths {lengths.tolist()} samples exceed "
                f"max_seconds={self.max_seconds:g} s ({int(self.max_seconds * self.sample_rate)} samples "
                f"at {self.sample_rate} Hz); split the audio or raise max_seconds"
            )
        feats, frames = self.mel(wav, lengths)  # [B, n_mels, T], [B]
        feats = feats.to(self.dtype)
        out_lengths = self.output_lengths(frames)
        chunk = 2 * self.n_window
        group = torch.where(frames >= chunk, torch.zeros_like(frames), frames)  # 0: at least one full chunk
        pieces: list[torch.Tensor | None] = [None] * wav.shape[0]
        for key in group.unique().tolist():
            rows = (group == key).nonzero().squeeze(1)
            hidden = self._encode(feats[rows], frames[rows])  # [sum(out_lengths[rows]), D]
            for row, piece in zip(rows.tolist(), hidden.split(out_lengths[rows].tolist())):
                pieces[row] = piece
        return nn.utils.rnn.pad_sequence(pieces, batch_first=True), out_lengths

    def _encode(self, feats: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """``feats [G, n_mels, T]`` with ``frames [G]`` -> encoder frames of all items, concatenated."""
        valid = torch.arange(feats.shape[-1], device=feats.device)[None] < frames[:, None]
        flat = feats.transpose(1, 2)[valid].T  # [n_mels, sum(frames)]
        hidden = self.model(flat, feature_lens=frames).last_hidden_state
        expected = int(self.output_lengths(frames).sum())
        if hidden.shape != (expected, self.output_dim):
            raise RuntimeError(
                f"Qwen3OmniMoeAudioEncoder returned {tuple(hidden.shape)} frames, "
                f"expected {(expected, self.output_dim)}"
            )
        return hidden

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write the tower's ``config.json`` and ``model.safetensors`` (no prefix) for ``pretrained=``."""
        return save_encoder(directory, self.model.config.to_dict(), self.model)

    def extra_repr(self) -> str:
        return f"output_dim={self.output_dim}, n_window={self.n_window}, max_seconds={self.max_seconds}"
