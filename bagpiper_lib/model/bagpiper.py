"""``BagpiperModel``: codec + encoder + adaptor + backbone + sequence layer, assembled from plain specs.

Embedding: one table over the whole vocabulary, summed over the K streams (pad ids of streams 1..K-1
contribute zero); pretrained text rows are copied from the backbone's LM. Audio-input placeholder
positions are overwritten by ``adaptor(encoder(wav))``. Output: a shared head over the whole vocabulary
(text rows copied from the LM head) plus a zero-initialised per-stream embedding added to the final
hidden state for streams 1..K-1 (the reference design), or, as an ablation (``head="per_codebook"``),
one head per codebook for streams 1..K-1.

Specs are plain data, so a model is a YAML dict::

    model = BagpiperModel.from_config("tiny")
    model = BagpiperModel.from_config({"codec": {"name": "dac", "preset": "tiny"}, ...})
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bagpiper_lib import backbones, codecs, encoders, sequence, tokenizers
from bagpiper_lib.encoders import adaptors
from bagpiper_lib.model.generation import GenerationMixin
from bagpiper_lib.model.loss import (
    LossOutput,
    StreamHead,
    StreamTargets,
    _nonzero,
    multistream_loss,
    plan_loss,
)
from bagpiper_lib.model.pipelines import PipelineMixin
from bagpiper_lib.registry import normalize_spec
from bagpiper_lib.sequence.messages import SequenceBuilder
from bagpiper_lib.sequence.sample import AudioSpan
from bagpiper_lib.sequence.vocabulary import Vocabulary
from bagpiper_lib.utils import seeded

__all__ = ["BagpiperModel", "PRESETS", "DEFAULT_CONFIG", "LoadReport"]

COMPONENTS = ("codec", "encoder", "adaptor", "backbone", "tokenizer", "pattern")

# The paper's system: Qwen3-8B-Base + X-Codec (4 kbps, 8 x 1024) + Qwen3-Omni audio tower, reference
# vocabulary layout. Real weights come from local directories given as ``pretrained`` in the specs.
DEFAULT_CONFIG: dict[str, Any] = {
    "codec": {"name": "xcodec", "bandwidth": 4.0},
    "encoder": {"name": "qwen3_omni"},
    "adaptor": {"name": "mlp"},
    "backbone": {"name": "qwen3"},
    "tokenizer": {"name": "qwen"},
    "pattern": {"name": "delay"},
    "vocabulary": {"num_special": 256},
    "head": "shared",
    "codec_loss_weight": None,
    "own_codebook_only": False,
    "loss_chunk_size": 1024,
    # seed of the model's own random init (adaptor, multimodal embedding/head rows beyond the text
    # rows, stream embeddings): the same config builds the same weights (components carry their own)
    "seed": 0,
}

PRESETS: dict[str, dict[str, Any]] = {
    # Builds in seconds on a CPU: every component's tiny preset and the byte tokenizer.
    "tiny": {
        "codec": {"name": "xcodec", "preset": "tiny"},
        "encoder": {"name": "whisper", "preset": "tiny"},
        "adaptor": {"name": "mlp"},
        "backbone": {"name": "qwen3", "preset": "tiny"},
        "tokenizer": {"name": "bytes"},
        "pattern": {"name": "delay"},
        "vocabulary": {"num_special": 16},
    },
}

WEIGHTS = "model.safetensors"
CONFIG = "config.json"


class LoadReport(dict):
    """``{"missing": [...], "unexpected": [...], "mismatched": [...]}`` of a partial weight load."""

    @property
    def clean(self) -> bool:
        return not any(self.values())


def resolve_config(config: str | Mapping[str, Any]) -> dict[str, Any]:
    """A preset name or a dict -> a complete config (defaults filled in, deep-copied)."""
    if isinstance(config, str):
        if config not in PRESETS:
            raise ValueError(f"unknown model preset {config!r}; available: {sorted(PRESETS)}")
        config = PRESETS[config]
    if not isinstance(config, Mapping):
        raise TypeError(f"model config must be a preset name or a dict, got {type(config).__name__}")
    unknown = sorted(set(config) - set(DEFAULT_CONFIG))
    if unknown:
        raise ValueError(f"unknown model config keys {unknown}; known: {sorted(DEFAULT_CONFIG)}")
    out = copy.deepcopy(DEFAULT_CONFIG)
    out.update(copy.deepcopy(dict(config)))
    for key in COMPONENTS:
        if out[key] is not None:
            out[key] = normalize_spec(out[key])
    if out["head"] not in ("shared", "per_codebook"):
        raise ValueError(f"head must be 'shared' or 'per_codebook', got {out['head']!r}")
    return out


class BagpiperModel(PipelineMixin, GenerationMixin, nn.Module):
    """The assembled model. Build it with :meth:`from_config` / :meth:`from_pretrained`.

    Args:
        codec, backbone, tokenizer, pattern: built components (see ``ARCHITECTURE.md`` contracts).
        vocab: the global vocabulary (sized from tokenizer and codec).
        encoder, adaptor: audio input path; both ``None`` for a model without audio input.
        head: ``"shared"`` (reference) or ``"per_codebook"``.
        codec_loss_weight: weight of a codec token; default ``1 / K``.
        own_codebook_only: restrict stream k's shared-head logits to codebook k's block.
        loss_chunk_size: target positions per loss chunk.
        config: the plain-data config the components were built from (saved with the model).
    """

    def __init__(
        self,
        codec: codecs.AudioCodec,
        backbone: backbones.Backbone,
        tokenizer: tokenizers.TextTokenizer,
        pattern: sequence.CodebookPattern,
        vocab: Vocabulary,
        encoder: encoders.AudioEncoder | None = None,
        adaptor: nn.Module | None = None,
        *,
        head: str = "shared",
        codec_loss_weight: float | None = None,
        own_codebook_only: bool = False,
        loss_chunk_size: int = 1024,
        config: dict[str, Any] | None = None,
    ):
        super().__init__()
        if (encoder is None) != (adaptor is None):
            raise ValueError("encoder and adaptor go together: give both for audio input, or neither")
        if vocab.num_codebooks != codec.num_codebooks or vocab.codebook_size != codec.codebook_size:
            raise ValueError(
                f"vocabulary has {vocab.num_codebooks} x {vocab.codebook_size} codec ids but the codec produces "
                f"{codec.num_codebooks} x {codec.codebook_size}"
            )
        if (
            adaptor is not None
            and getattr(adaptor, "output_dim", backbone.hidden_size) != backbone.hidden_size
        ):
            raise ValueError(
                f"adaptor output_dim {adaptor.output_dim} does not match the backbone hidden size {backbone.hidden_size}"
            )
        self.codec, self.backbone, self.encoder, self.adaptor = codec, backbone, encoder, adaptor
        self.tokenizer, self.pattern, self.vocab = tokenizer, pattern, vocab
        self.head_type = head
        self.codec_loss_weight = (
            1.0 / vocab.num_codebooks if codec_loss_weight is None else float(codec_loss_weight)
        )
        self.own_codebook_only = bool(own_codebook_only)
        self.loss_chunk_size = int(loss_chunk_size)
        self.config = copy.deepcopy(config) if config is not None else None
        self.builder = SequenceBuilder(vocab, tokenizer, pattern, self.audio_in_length if encoder else None)

        hidden = backbone.hidden_size
        text = backbone.text_embeddings()
        if text.shape[0] < vocab.text_vocab_size:
            raise ValueError(
                f"the backbone's vocabulary has {text.shape[0]} rows but the tokenizer emits {vocab.text_vocab_size} "
                "ids: the tokenizer does not belong to this backbone"
            )
        dtype = text.dtype
        self.embed = nn.Embedding(vocab.size, hidden, dtype=dtype)
        self.head = nn.Linear(hidden, vocab.size, bias=False, dtype=dtype)
        std = float(text.float().std())
        with torch.no_grad():
            self.embed.weight.normal_(0.0, std)
            self.head.weight.normal_(0.0, std)
            rows = slice(vocab.text_offset, vocab.codec_offset)
            self.embed.weight[rows] = text[: vocab.text_vocab_size]
            lm_head = backbone.lm_head_weight()
            if lm_head is not None:
                self.head.weight[rows] = lm_head[: vocab.text_vocab_size]
        # The backbone's own tables take no part in forward (the body runs on our embeddings): free
        # them (two [V, H] tables, ~2.5 GB in bf16 at 8B); save_pretrained writes them back from ours.
        backbone.release_token_tables(vocab.text_vocab_size)
        k = vocab.num_codebooks
        self.stream_embed = nn.Parameter(torch.zeros(max(k - 1, 0), hidden, dtype=dtype))
        self.codebook_heads = (
            nn.ModuleList(nn.Linear(hidden, vocab.block_size, bias=False, dtype=dtype) for _ in range(k - 1))
            if head == "per_codebook"
            else None
        )
        self.register_buffer("_stream_pads", vocab.codec_pad_ids(), persistent=False)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, config: str | Mapping[str, Any] = "tiny") -> BagpiperModel:
        """Build every component from its spec (a preset name or a config dict; see ``DEFAULT_CONFIG``)."""
        cfg = resolve_config(config)
        codec = codecs.build(cfg["codec"])
        tokenizer = tokenizers.build(cfg["tokenizer"])
        backbone = backbones.build(cfg["backbone"])
        pattern_spec = dict(cfg["pattern"])
        if pattern_spec.setdefault("num_codebooks", codec.num_codebooks) != codec.num_codebooks:
            raise ValueError(
                f"pattern num_codebooks={pattern_spec['num_codebooks']} but the codec has {codec.num_codebooks}"
            )
        pattern = sequence.patterns.build(pattern_spec)
        vocab = Vocabulary.for_components(tokenizer, codec, **cfg["vocabulary"])
        encoder = adaptor = None
        if cfg["encoder"] is not None:
            encoder = encoders.build(cfg["encoder"])
            spec = dict(cfg["adaptor"] or {"name": "mlp"})
            for key, value in (("input_dim", encoder.output_dim), ("output_dim", backbone.hidden_size)):
                if spec.setdefault(key, value) != value:
                    raise ValueError(f"adaptor {key}={spec[key]} does not match the model's {value}")
            with seeded(int(cfg["seed"])):
                adaptor = adaptors.build(spec)
        with seeded(int(cfg["seed"]) + 1):
            return cls(
                codec,
                backbone,
                tokenizer,
                pattern,
                vocab,
                encoder,
                adaptor,
                head=cfg["head"],
                codec_loss_weight=cfg["codec_loss_weight"],
                own_codebook_only=cfg["own_codebook_only"],
                loss_chunk_size=cfg["loss_chunk_size"],
                config=cfg,
            )

    # ------------------------------------------------------------------ embedding
    def embed_tokens(self, tokens: torch.Tensor, *, check_ids: bool = True) -> torch.Tensor:
        """``tokens [B, T, K]`` -> ``[B, T, H]``: sum of stream embeddings, stream k>0 pads as zero.

        ``check_ids=False`` skips the id range check (one host sync) for a caller that made it already."""
        batch, length, k = tokens.shape
        if k != self.vocab.num_codebooks:
            raise ValueError(f"tokens have {k} streams, the model has K={self.vocab.num_codebooks}")
        if check_ids and tokens.numel():
            self._raise_for_ids(tokens, *torch.stack(self._id_flags(tokens)).tolist())
        flat = tokens.reshape(-1, k)
        weights = (flat != self._stream_pads[None]).to(self.embed.weight.dtype)
        weights[:, 0] = 1.0
        out = F.embedding_bag(flat, self.embed.weight, mode="sum", per_sample_weights=weights.reshape(-1, k))
        return out.reshape(batch, length, -1)

    def audio_in_length(self, num_samples: int, sample_rate: int) -> int:
        """Placeholder positions for ``num_samples`` of audio at ``sample_rate``: encoder then adaptor."""
        if self.encoder is None:
            raise ValueError("this model has no audio encoder; it cannot take audio input")
        n = -(-int(num_samples) * self.encoder.sample_rate // int(sample_rate))
        frames = self.encoder.num_frames(torch.tensor([n]))
        return int(self.adaptor.output_lengths(frames)[0])

    def encode_audio(self, spans: list[tuple[int, AudioSpan]]) -> list[torch.Tensor]:
        """Adaptor outputs ``[length, H]`` for each (row, span), checked against the span lengths."""
        out: list[torch.Tensor | None] = [None] * len(spans)
        if spans and self.encoder is None:
            raise ValueError("the batch has audio input but this model has no audio encoder")
        groups: dict[Any, list[int]] = {}
        for i, (_, span) in enumerate(spans):
            if span.audio is None:
                raise ValueError(f"audio-in span {i} has no audio (dropped); drop its placeholders too")
            key = "features" if span.audio.dim() == 2 else int(span.sample_rate or self.encoder.sample_rate)
            groups.setdefault(key, []).append(i)
        device = self.embed.weight.device
        for key, idx in groups.items():
            items = [spans[i][1].audio.to(device) for i in idx]
            lengths = torch.tensor([x.shape[0] for x in items], device=device)
            padded = nn.utils.rnn.pad_sequence(items, batch_first=True)
            if key == "features":
                feats, flens = padded, lengths
            else:
                feats, flens = self.encoder(padded, lengths, sample_rate=key)
            proj, plens = self.adaptor(feats.to(self.embed.weight.dtype), flens)
            for j, i in enumerate(idx):
                want = spans[i][1].length
                if int(plens[j]) != want:
                    raise ValueError(
                        f"audio-in span {i} has {want} placeholder positions but encoder + adaptor produced "
                        f"{int(plens[j])} frames (feature lengths do not match the sequence)"
                    )
                out[i] = proj[j, :want]
        return out  # type: ignore[return-value]

    def _id_flags(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        """Device flags: some id below 0, some id at or above the vocabulary size."""
        low, high = torch.aminmax(tokens)
        return [low < 0, high >= self.vocab.size]

    def _raise_for_ids(self, tokens: torch.Tensor, too_low: bool, too_high: bool) -> None:
        if too_low or too_high:
            raise ValueError(
                f"token ids must lie in [0, {self.vocab.size}), got [{int(tokens.min())}, {int(tokens.max())}]"
            )

    def input_embeddings(
        self, tokens: torch.Tensor, audio_in: list[tuple[int, AudioSpan]] = (), *, check_ids: bool = True
    ) -> torch.Tensor:
        """Token embeddings with audio-input placeholders replaced by encoder features (``check_ids``:
        see :meth:`embed_tokens`)."""
        embeds = self.embed_tokens(tokens, check_ids=check_ids)
        if audio_in:
            embeds = embeds.clone()
            for (row, span), feats in zip(audio_in, self.encode_audio(list(audio_in))):
                embeds[row, span.start : span.start + span.length] = feats.to(embeds.dtype)
        return embeds

    # ------------------------------------------------------------------ heads and loss
    def stream_head(self, k: int) -> StreamHead:
        """The output projection of stream ``k``.

        Stream 0: the shared head over the whole vocabulary. Stream k>0: the codec ids (all blocks, or
        block k only with ``own_codebook_only``) of the shared head with stream embedding k added, or
        codebook k's own head with the per-codebook ablation.
        """
        if k == 0:
            return StreamHead(self.head.weight, 0, self.vocab.size, 0)
        if self.codebook_heads is not None:
            weight = self.codebook_heads[k - 1].weight
            return StreamHead(weight, 0, weight.shape[0], self.vocab.block_start(k))
        lo, hi = (
            self.vocab.codebook_range(k)
            if self.own_codebook_only
            else (self.vocab.codec_offset, self.vocab.size)
        )
        return StreamHead(self.head.weight, lo, hi, lo, shift=self.stream_embed, shift_row=k - 1)

    def stream_logits(self, hidden: torch.Tensor, k: int) -> tuple[torch.Tensor, int]:
        """float32 logits of stream ``k`` for ``hidden [..., H]`` and the first id they cover
        (see :meth:`stream_head`)."""
        head = self.stream_head(k)
        return head.logits(hidden), head.offset

    def forward(self, batch: Any) -> LossOutput:
        """Loss of a batch (a ``PackedBatch`` or a mapping with ``tokens [B, T, K]``, ``loss_mask [B, T, K]``,
        ``position_ids [B, T]``, optional ``attention_mask [B, T]`` and ``audio_in [(row, AudioSpan)]``)."""
        get = (
            batch.get
            if isinstance(batch, Mapping)
            else lambda key, default=None: getattr(batch, key, default)
        )
        tokens, loss_mask, position_ids = get("tokens"), get("loss_mask"), get("position_ids")
        if tokens is None or loss_mask is None or position_ids is None:
            raise ValueError("batch needs tokens [B, T, K], loss_mask [B, T, K] and position_ids [B, T]")
        if loss_mask.shape != tokens.shape or position_ids.shape != tokens.shape[:2]:
            raise ValueError(
                f"batch shapes disagree: tokens {tuple(tokens.shape)}, loss_mask {tuple(loss_mask.shape)}, "
                f"position_ids {tuple(position_ids.shape)}"
            )
        # Everything the host must know about the batch is read before the backbone runs, in two syncs
        # (this one and the loss plan's), so that the GPU has the whole forward queued when the host
        # next waits: ids in range, whether padding needs a mask, how many positions have a target.
        if tokens.dim() != 3 or tokens.shape[-1] != self.vocab.num_codebooks:
            raise ValueError(
                f"tokens must be [B, T, K={self.vocab.num_codebooks}] (one column per stream), got {tuple(tokens.shape)}"
            )
        attention_mask = get("attention_mask")
        mask = loss_mask[:, 1:].bool()
        select = mask.reshape(-1, mask.shape[-1]).any(-1)  # [B * (T - 1)] positions with a target
        flags = [select.sum()]
        if tokens.numel():
            flags += self._id_flags(tokens)
        if attention_mask is not None:
            flags.append(_padding_needs_mask(position_ids, attention_mask))
        values = torch.stack([f.long() for f in flags]).tolist()
        if tokens.numel():
            self._raise_for_ids(tokens, *values[1:3])
        index = _nonzero(select, values[0])
        heads = [self.stream_head(k) for k in range(self.vocab.num_codebooks)]
        target_tokens = tokens[:, 1:].reshape(-1, tokens.shape[-1]).index_select(0, index)
        target_mask = mask.reshape(-1, mask.shape[-1]).index_select(0, index)
        plan = plan_loss(target_tokens, target_mask, heads, self.loss_chunk_size)
        embeds = self.input_embeddings(tokens, get("audio_in") or [], check_ids=False)
        kwargs = {"attention_mask": attention_mask} if attention_mask is not None and values[-1] else {}
        hidden = self.backbone(embeds, position_ids, **kwargs)
        # position (b, t) of hidden [B, T, H] predicts t + 1: flat row b * T + t = index + b
        predicting = hidden.reshape(-1, hidden.shape[-1]).index_select(0, index + index // mask.shape[1])
        return multistream_loss(
            StreamTargets(predicting, target_tokens, target_mask),
            heads,
            codec_offset=self.vocab.codec_offset,
            codec_weight=self.codec_loss_weight,
            chunk_size=self.loss_chunk_size,
            plan=plan,
        )

    # ------------------------------------------------------------------ save / load
    def own_state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors that belong to the model itself (embedding, heads, adaptor), not to a component."""
        skip = ("codec.", "backbone.", "encoder.")
        return {k: v for k, v in self.state_dict().items() if not k.startswith(skip)}

    def text_token_rows(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The text rows ``[text_vocab_size, H]`` of the embedding table and of the shared head, in the
        tokenizer's id order: what the backbone's own token tables hold for a standalone export."""
        rows = slice(self.vocab.text_offset, self.vocab.codec_offset)
        return self.embed.weight.detach()[rows], self.head.weight.detach()[rows]

    def save_pretrained(self, directory: str | Path) -> Path:
        """``config.json`` + ``model.safetensors`` + one sub-directory per component (each reloadable alone).

        ``backbone/`` is a whole transformers checkpoint whose token tables hold this model's text rows
        (trained ones included), so it also loads as a plain causal LM.
        """
        from safetensors.torch import save_file

        if self.config is None:
            raise ValueError("save_pretrained needs the config the model was built from (use from_config)")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        cfg = copy.deepcopy(self.config)
        for name, component in (
            ("codec", self.codec),
            ("encoder", self.encoder),
            ("backbone", self.backbone),
            ("tokenizer", self.tokenizer),
        ):
            if component is None:
                continue
            if component is self.backbone:
                component.save_pretrained(directory / name, token_tables=self.text_token_rows())
            else:
                component.save_pretrained(directory / name)
            spec = {k: v for k, v in cfg[name].items() if k not in ("preset", "config", "seed")}
            cfg[name] = {**spec, "pretrained": name}
        state = {k: v.detach().contiguous().cpu() for k, v in self.own_state_dict().items()}
        save_file(state, str(directory / WEIGHTS))
        (directory / CONFIG).write_text(
            json.dumps({"bagpiper_lib": 1, "model": cfg}, indent=2, sort_keys=True)
        )
        return directory

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, overrides: Mapping[str, Any] | None = None, strict: bool = True
    ) -> BagpiperModel:
        """Load a directory written by :meth:`save_pretrained`.

        ``overrides`` replaces config entries (e.g. ``{"codec": {"name": "dac", "preset": "tiny"}}`` for a
        new codec with the same backbone). Tensors that do not fit are reported in
        ``model.load_report``; with ``strict`` (default) any mismatch raises instead.
        """
        from safetensors.torch import load_file

        directory = Path(directory)
        if not (directory / CONFIG).is_file() or not (directory / WEIGHTS).is_file():
            raise FileNotFoundError(
                f"{str(directory)!r} is not a saved BagpiperModel (needs {CONFIG} and {WEIGHTS})"
            )
        cfg = json.loads((directory / CONFIG).read_text())["model"]
        for name in ("codec", "encoder", "backbone", "tokenizer"):
            spec = cfg.get(name)
            if (
                spec
                and isinstance(spec.get("pretrained"), str)
                and not Path(spec["pretrained"]).is_absolute()
            ):
                spec["pretrained"] = str(directory / spec["pretrained"])
        cfg.update(copy.deepcopy(dict(overrides or {})))
        model = cls.from_config(cfg)
        report = model.load_own_state(load_file(str(directory / WEIGHTS)))
        if strict and not report.clean:
            raise ValueError(f"weights in {str(directory)!r} do not fit the model: {dict(report)}")
        model.load_report = report
        return model

    def load_own_state(self, state: Mapping[str, torch.Tensor]) -> LoadReport:
        """Load what fits of ``state`` into :meth:`own_state_dict` tensors; report the rest."""
        own = self.own_state_dict()
        report = LoadReport(
            missing=sorted(k for k in own if k not in state),
            unexpected=sorted(k for k in state if k not in own),
            mismatched=sorted(
                f"{k}: saved {tuple(state[k].shape)} vs model {tuple(v.shape)}"
                for k, v in own.items()
                if k in state and state[k].shape != v.shape
            ),
        )
        fitting = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
        self.load_state_dict(fitting, strict=False)
        return report


def _padding_needs_mask(position_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """A device flag: some padding run does not start a new position segment, so the backbone needs the
    padding mask (packed rows whose padding restarts its positions need none)."""
    pad = ~attention_mask.bool()
    starts = torch.ones_like(pad)
    starts[:, 1:] = position_ids[:, 1:] != position_ids[:, :-1] + 1
    first_pad = pad & torch.cat([torch.ones_like(pad[:, :1]), ~pad[:, :-1]], dim=1)
    return (first_pad & ~starts).any()
