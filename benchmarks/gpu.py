"""GPU: model FLOPs utilisation of a ~0.6B training step (bf16) and audio generation tokens/s.

Runs only where ``torch.cuda.is_available()``; elsewhere both entries are reported as skipped with the
reason. The model is ``BagpiperModel`` with a Qwen3-0.6B-shaped backbone (random init, bf16), the Qwen
tokenizer (151,669 text ids, 160k-id multimodal vocabulary), the tiny X-Codec vocabulary layout
(8 x 1024) and no audio encoder.

* ``gpu.mfu``: achieved model FLOPs/s of a training step (forward, chunked loss, backward, AdamW) on
  8 packed rows of 4096 positions of demo-like samples (32,768 tokens: the 80 GB card's batch with
  compiled layers; ``BAGPIPER_BENCH_GPU_ROWS`` sets it), vs the device's peak dense bf16 FLOPs/s
  (ratio = MFU), with compiled decoder layers and the faster of the fused varlen kernel and
  ``flex_attention`` (``details.step_s_by_attention``); ``details.smaller_batch`` has the 4-row step
  that the comparisons below use (eager layers do not fit 8 rows in 80 GB). Model FLOPs
  count ``6 x params x tokens`` for the body, ``6 x H x (V + (K - 1) x codec ids)`` per target position
  for the head as the loss computes it, and causal attention ``6 x layers x heads x head_dim x sum(len^2)``
  over packed samples; the loss's recomputation is not counted (it is hardware, not model, work).
* ``gpu.compiled_layers``: seconds of the same training step with every decoder layer through
  ``torch.compile`` (``Backbone.compile_layers``, inductor) vs eager layers; ``details.compile_s`` is the
  first (compiling) step (4 rows).
* ``gpu.loss_gemms``: seconds of the loss's three matmuls of one chunk (logits, hidden gradient,
  weight gradient) with the sizes padded to multiples of 64 vs the odd sizes the loss has (160,125 ids,
  1,021 rows); ``details.seconds`` has each product with only the vocabulary or only the rows padded
  (information for the next change to the loss; no target).
* ``gpu.packed_attention``: seconds of the same training step with torch's fused varlen flash-attention
  kernel (the default on CUDA) vs one causal SDPA call per packed sample (target: ratio <= 1); skipped
  with the reason where the per-sample baseline runs out of memory (8 rows of 4096 on an 80 GB H100).
* ``gpu.flex_attention``: seconds of the same (fastest) step with ``flex_attention`` and a block-causal
  mask instead of the varlen kernel (information: per layer it was 25 % faster on an H100 in a probe).
* ``gpu.generate``: audio tokens/s of ``generate`` (plan ``["audio"]``, guided, cfg_scale 3) vs real
  time (codec frame rate x K tokens/s).

``BAGPIPER_BENCH_GPU_DEVICE=cpu`` runs the same code on the CPU with a tiny backbone (a check of the
code path only; its numbers mean nothing).
"""

from __future__ import annotations

import gc
import math
import os
import time
from functools import partial
from typing import Any

import torch

from benchmarks.harness import Target, entry, median_time, skipped, synchronize, time_pair

NAME = "gpu"

# Qwen3-0.6B's architecture (random init here).
QWEN3_0_6B: dict[str, Any] = {
    "hidden_size": 1024,
    "intermediate_size": 3072,
    "num_hidden_layers": 28,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "vocab_size": 151936,
    "max_position_embeddings": 40960,
    "rms_norm_eps": 1e-6,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
    "tie_word_embeddings": True,
}

SIZES: dict[str, dict[str, Any]] = {
    "full": {
        "backbone": QWEN3_0_6B,
        "budget": 4096,
        "rows": 4,
        "mfu_rows": 8,
        "frames": 256,
        "gen_rows": 4,
        "repeats": 5,
        "gen_repeats": 3,
    },
    "quick": {
        "backbone": QWEN3_0_6B,
        "budget": 2048,
        "rows": 2,
        "mfu_rows": 2,
        "frames": 64,
        "gen_rows": 2,
        "repeats": 3,
    },
    "smoke": {
        "backbone": None,
        "budget": 512,
        "rows": 1,
        "mfu_rows": 1,
        "frames": 4,
        "gen_rows": 1,
        "repeats": 1,
    },
}

# Dense bf16 tensor-core peak FLOPs/s by device name fragment (first match wins; vendor datasheets).
PEAK_BF16 = (
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("GH200", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("A10", 125e12),
    ("RTX 4090", 165e12),
)


LOSS_CHUNK = int(os.environ.get("BAGPIPER_BENCH_LOSS_CHUNK", 8192))


def peak_flops(name: str) -> float | None:
    return next((peak for key, peak in PEAK_BF16 if key in name), None)


def _model(cfg: dict[str, Any], device: str):
    from bagpiper_lib.backbones.presets import TINY_QWEN3
    from bagpiper_lib.model import BagpiperModel

    torch.manual_seed(0)
    backbone_cfg = cfg["backbone"] or {**TINY_QWEN3, "max_position_embeddings": 4096}
    config = {
        "codec": {"name": "xcodec", "preset": "tiny"},
        "encoder": None,
        "adaptor": None,
        "backbone": {"name": "qwen3", "config": backbone_cfg, "dtype": "bfloat16"},
        "tokenizer": {"name": "qwen" if cfg["backbone"] else "bytes"},
        "pattern": {"name": "delay"},
        "vocabulary": {"num_special": 256 if cfg["backbone"] else 16},
        # 8192 target positions per loss chunk on a GPU: fewer, fuller logits matmuls (160k ids: 2.6 GB
        # of bf16 logits per chunk); the CPU default 1024 keeps a chunk in cache
        "loss_chunk_size": LOSS_CHUNK if device == "cuda" else 1024,
    }
    if device == "cuda":  # random init in place: bf16 normal_ of 0.6B weights takes a minute on a small CPU
        try:
            with torch.device(device):
                return BagpiperModel.from_config(config).to(device)
        except (RuntimeError, TypeError) as error:  # a component that builds on the CPU only
            print(f"[gpu] building on {device} failed ({error}); building on the CPU", flush=True)
            torch.manual_seed(0)
    return BagpiperModel.from_config(config).to(device)


def training_rows(model, budget: int, rows: int):
    """``rows`` full packed rows of ``budget`` positions of demo samples.

    The corpus is sized from the mean sample length of a first draw (about 50 positions with the Qwen
    tokenizer and no audio encoder), so that the packer fills every row; the fullest rows are taken (the
    H100 runs of 2026-11-26 took rows in plan order: 13,365 tokens in 16,384 slots).
    """
    from benchmarks.common import pack_rows
    from benchmarks.packing import demo_corpus

    pilot = demo_corpus(model, 64)
    mean = sum(len(s) for s in pilot) / len(pilot)
    corpus = demo_corpus(model, math.ceil(1.5 * rows * budget / mean))
    batch = pack_rows(corpus, budget, rows, model._stream_pads, fullest=True)
    if batch.num_rows != rows:
        raise RuntimeError(f"packed {batch.num_rows} rows of {budget}, wanted {rows}")
    return batch


def training_setup(cfg: dict[str, Any], device: str, rows: int | None = None):
    """``(model, batch, optimizer, train_step)``: the benchmark's model in train mode, ``rows`` (default
    ``cfg["rows"]``) packed rows on ``device``, the optimizer the recipe builds there (fused AdamW on
    CUDA: ``optimizer.fused`` null), and one training step (zero grad, forward, backward, step)."""
    model = _model(cfg, device).train()
    batch = training_rows(model, cfg["budget"], rows or cfg["rows"]).to(device)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=1e-5, fused=device == "cuda"
    )

    def train_step():
        optimizer.zero_grad(set_to_none=True)
        model(batch).loss.backward()
        optimizer.step()

    return model, batch, optimizer, train_step


def model_flops(model, batch) -> float:
    """Model FLOPs of one training step (see the module docstring)."""
    c = model.backbone.config
    tokens = int(batch.attention_mask.sum())
    body = sum(p.numel() for n, p in model.backbone.body.named_parameters() if "embed_tokens" not in n)
    targets = int(batch.loss_mask[:, 1:].any(-1).sum())
    v = model.vocab
    head = model.backbone.hidden_size * (v.size + (v.num_codebooks - 1) * (v.size - v.codec_offset))
    segments = batch.cu_seqlens.diff().double()  # samples and padding tails (computed all the same)
    head_dim = int(getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads)
    attention = (
        6 * int(c.num_hidden_layers) * int(c.num_attention_heads) * head_dim * float((segments**2).sum())
    )
    return 6.0 * body * tokens + 6.0 * head * targets + attention


def loss_gemms(device: str, repeats: int, hidden: int = 1024, vocab: int = 160125, rows: int = 1021):
    """Seconds of the loss's three matmuls per chunk, with odd and with padded sizes.

    The compiled 0.6B step's profile on an H100 put 41 % of the GPU time in the fused loss, most of it
    in legacy ``cutlass_75`` GEMMs at about 100 TFLOP/s; padding the logits rows' leading dimension did
    not change them. Here each of the three products (``x W^T`` logits, ``g W`` hidden gradient, ``g^T x``
    weight gradient; ``x [R, H]``, ``W [V, H]``, ``g [R, V]``, bf16) is timed with the Qwen vocabulary's
    odd ``V`` and a chunk's odd ``R``, with each padded to a multiple of 64, and with both, so that the
    shape that makes cuBLAS pick a slow kernel shows. Returns ``{variant: {product: seconds}}``.
    """
    padded_vocab, padded_rows = -(-vocab // 64) * 64, -(-rows // 64) * 64
    gen = torch.Generator(device=device).manual_seed(0)
    out: dict[str, dict[str, float]] = {}
    for name, v, r in (
        ("odd", vocab, rows),
        ("vocab_padded", padded_vocab, rows),
        ("rows_padded", vocab, padded_rows),
        ("both_padded", padded_vocab, padded_rows),
    ):
        x = torch.randn(r, hidden, device=device, dtype=torch.bfloat16, generator=gen)
        w = torch.randn(v, hidden, device=device, dtype=torch.bfloat16, generator=gen)
        g = torch.randn(r, v, device=device, dtype=torch.bfloat16, generator=gen)
        products = {  # bound now: each variant times its own tensors
            "logits": partial(torch.mm, x, w.t()),
            "grad_hidden": partial(torch.mm, g, w),
            "grad_weight": partial(torch.mm, g.t(), x),
        }
        out[name] = {key: median_time(fn, repeats, warmup=2)[0] for key, fn in products.items()}
    return out


def flex_attention_entry(model, train_step, step_s: float, repeats: int, device_name: str) -> dict[str, Any]:
    """The training step with ``flex_attention`` (a block-causal mask built from the packed rows' position
    ids) instead of the fused varlen kernel, in the layers as they are (compiled or eager); the backbone
    goes back to ``sdpa`` afterwards. Information for a change of default, no target; a failure is
    reported as skipped with its error."""
    backbone = model.backbone
    try:
        backbone.set_attn_implementation("flex_attention")
        start = time.perf_counter()
        train_step()  # compiles flex attention (and recompiles compiled layers)
        synchronize()
        first_s = time.perf_counter() - start
        flex_s, _ = median_time(train_step, repeats, warmup=1)
    except Exception as error:  # noqa: BLE001 - report it, keep the other entries
        return skipped(
            "gpu.flex_attention", f"{type(error).__name__}: {error}"[:500], unit="s per training step"
        )
    finally:
        backbone.set_attn_implementation("sdpa")
    return entry(
        "gpu.flex_attention",
        flex_s,
        step_s,
        unit="s per training step",
        baseline_name="the fused varlen kernel (gpu.mfu's step)",
        target=None,
        repeats=repeats,
        device=device_name,
        first_step_s=first_s,
        compiled_layers=backbone.layers_compiled,
    )


def _compile_options(device: str) -> dict[str, str]:
    """``compile_layers`` options: inductor on CUDA; the CPU code-path check compiles with ``aot_eager``
    (no C++ build)."""
    return {} if device == "cuda" else {"backend": "aot_eager"}


def mfu_step(cfg: dict[str, Any], device: str, repeats: int, compile_layers: bool):
    """``(model, batch, seconds, details)``: the fastest training step at ``cfg["mfu_rows"]`` rows among
    compiled decoder layers with the fused varlen kernel and with ``flex_attention`` (eager layers where
    compilation failed on the smaller batch; flex only on CUDA: its backward has no CPU kernel). The
    model is left in the fastest set-up; ``details`` has every variant's seconds, peak memory or error."""
    model, batch, optimizer, train_step = training_setup(cfg, device, cfg["mfu_rows"])
    backbone = model.backbone
    attentions = ("sdpa", "flex_attention") if device == "cuda" else ("sdpa",)
    seconds: dict[str, float] = {}
    memory: dict[str, int] = {}
    errors: dict[str, str] = {}
    for attn in attentions:
        try:
            backbone.set_attn_implementation(attn)
            if compile_layers:
                backbone.compile_layers(**_compile_options(device))
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            seconds[attn], _ = median_time(train_step, repeats, warmup=2)
            if device == "cuda":
                memory[attn] = torch.cuda.max_memory_allocated()
        except Exception as error:  # noqa: BLE001 - out of memory or a failed compile: the other may run
            errors[attn] = f"{type(error).__name__}: {error}"[:300]
        finally:
            backbone.compile_layers(False)
            optimizer.zero_grad(set_to_none=True)
            gc.collect()
            if device == "cuda":
                torch.cuda.empty_cache()
    if not seconds:
        raise RuntimeError(f"no training step ran at {cfg['mfu_rows']} rows: {errors}")
    best = min(seconds, key=seconds.get)
    backbone.set_attn_implementation(best)
    if compile_layers:
        backbone.compile_layers(**_compile_options(device))
    details = {
        "attn_implementation": best,
        "compiled_layers": compile_layers,
        "step_s_by_attention": seconds,
        "max_memory_allocated_by_attention": memory or None,
        "errors": errors or None,
    }
    return model, batch, seconds[best], details


def run(size: str = "full") -> list[dict[str, Any]]:
    forced = os.environ.get("BAGPIPER_BENCH_GPU_DEVICE")
    if not torch.cuda.is_available() and not forced:
        reason = "no CUDA device (torch.cuda.is_available() is False)"
        return [
            skipped("gpu.mfu", reason, unit="FLOPs/s"),
            skipped("gpu.compiled_layers", reason, unit="s per training step"),
            skipped("gpu.packed_attention", reason, unit="s per training step"),
            skipped("gpu.loss_gemms", reason, unit="s per chunk (3 matmuls)"),
            skipped("gpu.flex_attention", reason, unit="s per training step"),
            skipped("gpu.generate", reason, unit="audio tokens/s"),
        ]
    cfg = dict(SIZES[size])
    device = forced or "cuda"
    if device == "cpu":
        cfg = {**cfg, **{k: v for k, v in SIZES["smoke"].items() if k != "repeats"}}
    if os.environ.get("BAGPIPER_BENCH_GPU_ROWS"):  # packed rows of gpu.mfu's step (full: 8 x 4096 positions)
        cfg["mfu_rows"] = int(os.environ["BAGPIPER_BENCH_GPU_ROWS"])
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu (code-path check)"
    repeats = cfg["repeats"]

    # ------------------------------------------------------------------ training step MFU
    model, batch, optimizer, train_step = training_setup(cfg, device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    eager_s, _ = median_time(train_step, repeats, warmup=2)
    eager_memory = torch.cuda.max_memory_allocated() if device == "cuda" else None
    results = []

    # ------------------------------------------------------------------ packed attention kernels
    if device == "cuda":
        from bagpiper_lib.backbones import packing

        fused = packing._varlen_kernel(torch.empty(1, 1, 1, 128, device=device, dtype=torch.bfloat16), 0.0)
        if fused is None:
            results.append(skipped("gpu.packed_attention", "torch has no varlen_attn (< 2.9)", unit="s"))
        else:

            def loop_step():
                packing.USE_VARLEN_KERNEL = False
                try:
                    train_step()
                finally:
                    packing.USE_VARLEN_KERNEL = True

            try:
                fused_s, loop_s, _ = time_pair(train_step, loop_step, repeats)
            except torch.OutOfMemoryError as error:  # the per-sample baseline needs more memory than the step
                results.append(skipped("gpu.packed_attention", f"out of memory at {batch.num_rows} rows: {error}"[:300],
                                       unit="s per training step", target=Target("ratio", "<=", 1.0)))  # fmt: skip
            else:
                results.append(
                    entry(
                        "gpu.packed_attention",
                        fused_s,
                        loop_s,
                        unit="s per training step",
                        baseline_name="one causal SDPA call per packed sample",
                        target=Target("ratio", "<=", 1.0),
                        repeats=repeats,
                        device=name,
                        samples=int(batch.cu_seqlens.numel() - 1),
                    )
                )
            # the baseline's many small allocations fragment the cache; the compiled step starts clean
            optimizer.zero_grad(set_to_none=True)
            gc.collect()
            torch.cuda.empty_cache()

    # ------------------------------------------------------------------ compiled decoder layers
    step_s, compile_error, compile_s = eager_s, None, None
    try:
        model.backbone.compile_layers(**_compile_options(device))
        start = time.perf_counter()
        train_step()  # compiles (forward and backward)
        synchronize()
        compile_s = time.perf_counter() - start
        compiled_s, _ = median_time(train_step, repeats, warmup=1)
    except Exception as error:  # noqa: BLE001 - report the failure, keep the eager numbers
        compile_error = f"{type(error).__name__}: {error}"[:500]
        model.backbone.compile_layers(False)
        results.append(skipped("gpu.compiled_layers", compile_error, unit="s"))
    else:
        results.append(
            entry(
                "gpu.compiled_layers",
                compiled_s,
                eager_s,
                unit="s per training step",
                baseline_name="eager decoder layers",
                target=Target("ratio", "<=", 1.0),
                repeats=repeats,
                device=name,
                compile_s=compile_s,
            )
        )
        step_s = min(compiled_s, eager_s)

    if device == "cuda":
        results.append(flex_attention_entry(model, train_step, step_s, repeats, name))

    # ------------------------------------------------------------------ the loss's matmul shapes
    shapes = (
        loss_gemms(device, max(repeats, 5))
        if device == "cuda"
        else loss_gemms(device, 1, hidden=64, vocab=1001, rows=61)
    )
    odd, both = sum(shapes["odd"].values()), sum(shapes["both_padded"].values())
    results.append(
        entry(
            "gpu.loss_gemms",
            both,
            odd,
            unit="s per chunk (3 matmuls)",
            baseline_name="vocabulary 160,125 and 1,021 rows (odd, as the loss has them)",
            target=None,
            repeats=max(repeats, 5),
            device=name,
            seconds=shapes,
        )
    )

    # ------------------------------------------------------------------ MFU of the fastest step
    flops = model_flops(model, batch)
    peak = peak_flops(name) if device == "cuda" else None
    small = {  # this batch's figures (the comparisons above), for the record
        "rows": batch.num_rows,
        "step_s": step_s,
        "mfu": flops / step_s / peak if peak else None,
        "eager_step_s": eager_s,
        "eager_mfu": flops / eager_s / peak if peak else None,
        "compiled_layers": step_s != eager_s,
        "compile_error": compile_error,
        "max_memory_allocated": torch.cuda.max_memory_allocated() if device == "cuda" else None,
        "eager_max_memory_allocated": eager_memory,
    }
    model = batch = optimizer = train_step = None  # free the 4-row set-up (closures share these cells)
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    model, batch, step_s, details = mfu_step(cfg, device, repeats, compile_error is None)
    flops = model_flops(model, batch)
    details.update(
        device=name,
        dtype="bfloat16",
        params=sum(p.numel() for p in model.parameters()),
        tokens=int(batch.attention_mask.sum()),
        rows=batch.num_rows,
        row_length=batch.row_length,
        step_s=step_s,
        model_flops_per_step=flops,
        loss_chunk_size=model.loss_chunk_size,
        smaller_batch=small,
    )
    if peak is None:
        results.insert(0, skipped("gpu.mfu", f"peak bf16 FLOPs of {name!r} unknown", unit="FLOPs/s"))
        results[0]["value"] = flops / step_s
        results[0]["details"] = details
    else:
        results.insert(
            0,
            entry(
                "gpu.mfu",
                flops / step_s,
                peak,
                unit="FLOPs/s (bf16)",
                baseline_name=f"peak dense bf16 of {name}",
                target=Target("ratio", ">=", 0.40) if "H100" in name or "H200" in name else None,
                repeats=repeats,
                **details,
            ),
        )
    if model.backbone.layers_compiled:  # decoding runs eager (its prefill shapes would each compile)
        model.backbone.compile_layers(False)
    model.backbone.set_attn_implementation("sdpa")

    # ------------------------------------------------------------------ audio generation tokens/s
    from bagpiper_lib.sequence.messages import Message
    from benchmarks.common import caption

    model.eval()
    model.zero_grad(set_to_none=True)  # free the gradients before decoding
    gen = torch.Generator().manual_seed(0)
    prompts = [model.prompt([Message("user", "text", caption(gen, 120))]) for _ in range(cfg["gen_rows"])]
    frames = cfg["frames"]
    audio = {"max_steps": frames, "min_steps": frames, "cfg_scale": 3.0}

    def generate():
        return model.generate(prompts, ["audio"], text={"max_steps": 1}, audio=audio, seed=0)

    gen_s, _ = median_time(generate, cfg.get("gen_repeats", repeats))
    k = model.vocab.num_codebooks
    tokens_per_s = len(prompts) * frames * k / gen_s
    results.append(
        entry(
            "gpu.generate",
            tokens_per_s,
            model.codec.frame_rate * k,
            unit="audio tokens/s",
            baseline_name="real time (frame rate x K)",
            repeats=cfg.get("gen_repeats", repeats),
            device=name,
            rows=len(prompts),
            frames=frames,
            cfg_scale=3.0,
            seconds=gen_s,
        )
    )
    synchronize()
    return results
