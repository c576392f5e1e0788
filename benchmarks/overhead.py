"""Library overhead: a training step through ``BagpiperModel`` vs the bare transformers model.

Both sides run the same step (zero grad, forward, loss, backward, AdamW step) on the same number of
tokens of the same work: a batch of text-only rows ``[B, T]`` whose every next token is a target.

* ours: the tiny ``BagpiperModel`` (its Qwen3 backbone, multimodal embedding summed over 8 streams,
  shared head over the 8,472-id vocabulary, chunked checkpointed multi-stream loss); streams 1-7 hold
  their codec pad (no targets there);
* bare: ``AutoModelForCausalLM`` built from the same Qwen3 config with ``vocab_size`` set to the same
  8,472 ids (so the head does the same matmul), ``labels=input_ids`` (transformers' own shifted loss).

Entry ``overhead.train_step``: seconds per step, ours vs bare (target <= 1.25).
"""

from __future__ import annotations

from typing import Any

import torch

from benchmarks.common import tiny_model
from benchmarks.harness import Target, entry, time_pair

NAME = "overhead"

SIZES: dict[str, dict[str, Any]] = {
    "full": {"batch": 8, "length": 512, "repeats": 7},
    "quick": {"batch": 4, "length": 256, "repeats": 5},
    "smoke": {"batch": 1, "length": 16, "repeats": 1},
}


def bare_model(model):
    """``AutoModelForCausalLM`` with the tiny backbone's config and the multimodal vocabulary size."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = model.backbone.config.to_dict()
    for key in ("architectures", "transformers_version", "dtype", "torch_dtype", "_name_or_path"):
        cfg.pop(key, None)
    model_type = cfg.pop("model_type")
    config = AutoConfig.for_model(model_type, **{**cfg, "vocab_size": model.vocab.size})
    config._attn_implementation = model.backbone.attn_implementation
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, attn_implementation=model.backbone.attn_implementation)


def text_batch(model, batch: int, length: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Rows of random text ids in stream 0 (codec pads elsewhere), every position a stream-0 target."""
    gen = torch.Generator().manual_seed(seed)
    v = model.vocab
    ids = torch.randint(v.text_offset, v.codec_offset, (batch, length), generator=gen)
    tokens = model._stream_pads[None, None].repeat(batch, length, 1)
    tokens[..., 0] = ids
    loss_mask = torch.zeros_like(tokens, dtype=torch.bool)
    loss_mask[..., 0] = True
    positions = torch.arange(length)[None].expand(batch, -1)
    return {"tokens": tokens, "loss_mask": loss_mask, "position_ids": positions, "input_ids": ids}


def run(size: str = "full") -> list[dict[str, Any]]:
    cfg = SIZES[size]
    b, t, repeats = cfg["batch"], cfg["length"], cfg["repeats"]
    model = tiny_model(max_positions=max(512, t)).train()
    bare = bare_model(model).train()
    batch = text_batch(model, b, t)
    ours_batch = {k: batch[k] for k in ("tokens", "loss_mask", "position_ids")}
    ours_opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    bare_opt = torch.optim.AdamW(bare.parameters(), lr=1e-4)

    def ours_step():
        ours_opt.zero_grad(set_to_none=True)
        model(ours_batch).loss.backward()
        ours_opt.step()

    def bare_step():
        bare_opt.zero_grad(set_to_none=True)
        bare(
            input_ids=batch["input_ids"],
            position_ids=batch["position_ids"],
            labels=batch["input_ids"],
            use_cache=False,
        ).loss.backward()
        bare_opt.step()

    ours_s, bare_s, times = time_pair(ours_step, bare_step, repeats)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return [
        entry(
            "overhead.train_step",
            ours_s,
            bare_s,
            unit="s per training step",
            baseline_name="bare AutoModelForCausalLM, same config and vocab size",
            target=Target("ratio", "<=", 1.25),
            repeats=repeats,
            batch=b,
            length=t,
            tokens=b * t,
            vocab=model.vocab.size,
            streams=model.vocab.num_codebooks,
            trainable_params=trainable,
            bare_params=sum(p.numel() for p in bare.parameters()),
            tokens_per_s=b * t / ours_s,
            bare_tokens_per_s=b * t / bare_s,
        )
    ]
