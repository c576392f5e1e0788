"""GPU probe: the 0.6B training step's parts and variants side by side, and a profile (a development tool).

    python -m benchmarks.gpu_probe [attention] [loss] [step] [rows8] [gaps] [variants] [--out DIR]

Where ``python -m benchmarks gpu`` reports one figure per entry, this breaks the step down to choose the
next change (stop 20 used it to find the loss's padding and chunk size):

* ``attention``: one layer's packed attention (16,384 tokens of 20-120-token samples, 16 query heads
  over 8 key/value heads of 128, bf16), forward + backward, with the varlen kernel given repeated,
  grouped, or grouped contiguous key/value heads, and ``flex_attention`` with a block-causal mask;
  the largest difference of each from the repeated heads' outputs and gradients.
* ``loss``: ``multistream_loss`` alone (16,384 positions, 8 streams, 160,125 ids, bf16), forward +
  backward, with the float32 passes and with the row kernel at chunks 1024 to 16384: seconds, peak
  memory, and the relative difference of the loss and gradients; then a profile of chunk 4096
  (``DIR/profile_loss.txt``).
* ``step``: the compiled training step of ``benchmarks.gpu``'s model and rows for combinations of loss
  path, key/value heads and loss chunk (seconds, MFU), then a profile of the fastest
  (``DIR/profile.txt``).
* ``rows8``: the compiled step at 8 rows with the compiled layers' activation memory budget at 1.0,
  0.7 and 0.5 (seconds, MFU, peak memory, or the out-of-memory).
* ``gaps``: where the compiled 4-row step leaves the GPU idle. Every host sync of one step, by the
  Python line that asked for it (``torch.cuda.set_sync_debug_mode``); the GPU's idle time between
  kernels in a profile of two steps; and, from a profile with Python stacks, each idle gap attributed
  to the innermost project function that launched the kernel ending it (``DIR/gaps.json``).
* ``variants``: the compiled step at 4 rows with the varlen kernel and with ``flex_attention``, then
  at 8 rows with flex and varlen under activation memory budgets (seconds, MFU, peak memory).

Every figure goes to ``DIR/probe.json`` as soon as it is measured (a run cut short keeps what it has).
A part that fails is recorded as ``<part>.error`` and the next part runs. Without CUDA it runs tiny
shapes on the CPU (a check of the code path; the attention part needs CUDA).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import torch

PARTS = ("attention", "loss", "step", "rows8", "gaps", "variants")


class Probe:
    def __init__(self, out: Path, device: str):
        self.out, self.device, self.results = out, device, {}
        out.mkdir(parents=True, exist_ok=True)

    def log(self, key: str, value: Any) -> None:
        self.results[key] = value
        print(f"[probe] {key}: {value}", flush=True)
        (self.out / "probe.json").write_text(json.dumps(self.results, indent=1, default=str))

    def sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()

    def time(self, fn, repeats: int = 5, warmup: int = 2) -> float:
        """Median seconds of ``fn`` (synchronised)."""
        for _ in range(warmup):
            fn()
        self.sync()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            self.sync()
            times.append(time.perf_counter() - start)
        return sorted(times)[len(times) // 2]

    def profile(self, fn, path: str, rows: int = 40) -> None:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device == "cuda" else [])
        with warnings.catch_warnings():  # torch's note that a profiler cycle drops earlier events
            warnings.filterwarnings("ignore", message=".*Profiler clears events")
            with profile(activities=activities) as prof:
                fn()
                self.sync()
        key = "self_cuda_time_total" if self.device == "cuda" else "self_cpu_time_total"
        table = prof.key_averages().table(sort_by=key, row_limit=rows, max_name_column_width=90)
        (self.out / path).write_text(table)


def _max_diff(got, want) -> float:
    return max(float((a.float() - b.float()).abs().max()) for a, b in zip(got, want))


def _lengths(total: int, gen: torch.Generator) -> list[int]:
    out, left = [], total
    while left > 0:
        out.append(min(left, int(torch.randint(20, 121, (1,), generator=gen))))
        left -= out[-1]
    return out


def attention(probe: Probe) -> None:
    from torch.nn.attention.varlen import varlen_attn

    dev = probe.device
    n, hq, hkv, d = (16384, 16, 8, 128) if dev == "cuda" else (256, 4, 2, 16)
    gen = torch.Generator().manual_seed(0)
    lens = _lengths(n, gen)
    cu = torch.tensor([0, *lens], device=dev).cumsum(0).to(torch.int32)
    longest = max(lens)
    q0, k0, v0 = (torch.randn(1, h, n, d, device=dev, dtype=torch.bfloat16) for h in (hq, hkv, hkv))
    proj = torch.randn(n, hq, d, device=dev, dtype=torch.bfloat16)  # a fixed random projection as the loss

    def varlen(variant: str):
        q, k, v = (t.detach().requires_grad_() for t in (q0, k0, v0))
        kk, vv = (t.repeat_interleave(hq // hkv, 1) for t in (k, v)) if variant == "repeat" else (k, v)
        args = [t[0].transpose(0, 1) for t in (q, kk, vv)]
        if variant == "gqa_contiguous":
            args = [t.contiguous() for t in args]
        out = varlen_attn(*args, cu, cu, longest, longest, window_size=(-1, 0))
        (out * proj).sum().backward()
        return out.detach(), q.grad, k.grad, v.grad

    reference = varlen("repeat")
    for variant in ("gqa", "gqa_contiguous"):
        probe.log(f"attention.{variant}.max_abs_diff", _max_diff(varlen(variant), reference))
    for variant in ("repeat", "gqa", "gqa_contiguous"):
        probe.log(f"attention.{variant}.fwd_bwd_s", probe.time(lambda v=variant: varlen(v)))
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    segment = torch.repeat_interleave(torch.arange(len(lens), device=dev), torch.tensor(lens, device=dev))

    def mask_mod(b, h, qi, ki):
        return (segment[qi] == segment[ki]) & (ki <= qi)

    block_mask = create_block_mask(mask_mod, 1, 1, n, n, device=dev)
    compiled = torch.compile(flex_attention)

    def flex():
        q, k, v = (t.detach().requires_grad_() for t in (q0, k0, v0))
        out = compiled(q, k, v, block_mask=block_mask, enable_gqa=True).transpose(1, 2)[0]
        (out * proj).sum().backward()
        return out.detach(), q.grad, k.grad, v.grad

    probe.log("attention.flex.max_abs_diff", _max_diff(flex(), reference))
    probe.log("attention.flex.fwd_bwd_s", probe.time(flex))
    probe.log(
        "attention.flex.block_mask_s", probe.time(lambda: create_block_mask(mask_mod, 1, 1, n, n, device=dev))
    )


def loss(probe: Probe) -> None:
    from bagpiper_lib.model import loss as loss_module
    from bagpiper_lib.model.loss import StreamHead, StreamTargets, multistream_loss

    dev = probe.device
    p, h, text, codec, k = (16384, 1024, 151925, 8200, 8) if dev == "cuda" else (300, 32, 500, 80, 8)
    vocab = text + codec
    gen = torch.Generator().manual_seed(0)
    hidden0 = (torch.randn(p, h, generator=gen) * 0.5).to(dev, torch.bfloat16)
    weight = torch.nn.Parameter((torch.randn(vocab, h, generator=gen) * 0.02).to(dev, torch.bfloat16))
    shift = torch.nn.Parameter((torch.randn(k - 1, h, generator=gen) * 0.02).to(dev, torch.bfloat16))
    audio = torch.rand(p, generator=gen) < 0.5
    tokens = torch.empty(p, k, dtype=torch.long)
    tokens[:, 0] = torch.where(
        audio,
        text + torch.randint(min(1024, codec), (p,), generator=gen),
        torch.randint(text, (p,), generator=gen),
    )
    for s in range(1, k):
        tokens[:, s] = text + torch.randint(codec, (p,), generator=gen)
    mask = torch.zeros(p, k, dtype=torch.bool)
    mask[:, 0] = True
    mask[audio, 1:] = True
    tokens, mask = tokens.to(dev), mask.to(dev)
    heads = [StreamHead(weight, 0, vocab, 0)] + [
        StreamHead(weight, text, vocab, text, shift=shift, shift_row=s - 1) for s in range(1, k)
    ]

    def step(chunk: int):
        hidden = hidden0.detach().requires_grad_()
        weight.grad = shift.grad = None
        out = multistream_loss(
            StreamTargets(hidden, tokens, mask),
            heads,
            codec_offset=text,
            codec_weight=1 / k,
            chunk_size=chunk,
        )
        out.loss.backward()
        return out.loss.detach(), hidden.grad, weight.grad, shift.grad

    saved = loss_module.ROW_KERNEL
    reference = None
    try:
        for mode, chunk in (
            ("never", 1024),
            ("always", 1024),
            ("always", 4096),
            ("always", 8192),
            ("always", 16384),
        ):
            loss_module.ROW_KERNEL = mode
            name = f"loss.{'row_kernel' if mode == 'always' else 'float32_passes'}.chunk{chunk}"
            got = step(chunk)
            if reference is None:
                reference = got
                probe.log("loss.value", float(got[0]))
            else:
                probe.log(f"{name}.relative_diff", [
                    float((a.float() - b.float()).abs().max() / (b.float().abs().max() + 1e-30))
                    for a, b in zip(got, reference)
                ])  # fmt: skip
            if dev == "cuda":
                torch.cuda.reset_peak_memory_stats()
            probe.log(f"{name}.s", probe.time(lambda c=chunk: step(c), repeats=3, warmup=1))
            if dev == "cuda":
                probe.log(f"{name}.peak_gib", torch.cuda.max_memory_allocated() / 2**30)
        loss_module.ROW_KERNEL = "always"
        probe.profile(lambda: step(4096), "profile_loss.txt", rows=30)
    finally:
        loss_module.ROW_KERNEL = saved


def step(probe: Probe) -> None:
    from bagpiper_lib.backbones import packing
    from bagpiper_lib.model import loss as loss_module
    from benchmarks import gpu

    dev = probe.device
    cfg = dict(gpu.SIZES["full" if dev == "cuda" else "smoke"])
    model, batch, _, train_step = gpu.training_setup(cfg, dev)
    flops = gpu.model_flops(model, batch)
    peak = gpu.peak_flops(torch.cuda.get_device_name()) if dev == "cuda" else None
    combos = [  # name, loss path, grouped key/value heads to the varlen kernel, loss chunk
        ("float32_passes.repeat.c1024", "never", False, 1024),
        ("float32_passes.grouped.c1024", "never", True, 1024),
        ("row_kernel.grouped.c1024", "auto", True, 1024),
        ("row_kernel.grouped.c4096", "auto", True, 4096),
        ("row_kernel.grouped.c8192", "auto", True, 8192),
    ]
    if dev != "cuda":
        combos = [("row_kernel.grouped.c1024", "always", True, 1024)]
    saved = loss_module.ROW_KERNEL, packing.VARLEN_GQA, model.loss_chunk_size
    try:
        model.backbone.compile_layers(**({} if dev == "cuda" else {"backend": "aot_eager"}))
        start = time.perf_counter()
        train_step()
        probe.sync()
        probe.log("step.compile_s", time.perf_counter() - start)
        best = None
        for name, mode, grouped, chunk in combos:
            loss_module.ROW_KERNEL, packing.VARLEN_GQA, model.loss_chunk_size = mode, grouped, chunk
            seconds = probe.time(train_step)
            probe.log(f"step.{name}.s", seconds)
            if peak:
                probe.log(f"step.{name}.mfu", flops / seconds / peak)
            if best is None or seconds < best[1]:
                best = (name, seconds, mode, grouped, chunk)
        probe.log("step.fastest", best[0])
        _, _, loss_module.ROW_KERNEL, packing.VARLEN_GQA, model.loss_chunk_size = best

        def two_steps():
            train_step()
            train_step()

        probe.profile(two_steps, "profile.txt")
    finally:
        loss_module.ROW_KERNEL, packing.VARLEN_GQA, model.loss_chunk_size = saved


def rows8(probe: Probe) -> None:
    """The compiled step at 8 rows of 4096 (twice ``gpu.mfu``'s batch: the host's share of the step
    halves) with ``compile_layers(activation_memory_budget=...)`` at 1.0 (torch's default), 0.7 and 0.5:
    below 1 the partitioner recomputes the cheapest saved activations in backward. The 4-row step
    peaked at 48 GB on an 80 GB H100, so 8 rows need the budget or do not fit; an out-of-memory is
    recorded per budget."""
    _time_variants(probe, {8: [("sdpa", None), ("sdpa", 0.7), ("sdpa", 0.5)]},
                   lambda rows, attn, budget: f"rows8.budget{budget or 1.0}", cpu_rows=2, profile=False)  # fmt: skip


def _sync_sites(train_step) -> dict[str, int]:
    """``{"file:line": count}`` of the host syncs of one ``train_step`` (CUDA's sync debug mode warns at
    each synchronising call; the warning carries the Python line that made it)."""
    counts: dict[str, int] = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            train_step()
        finally:
            torch.cuda.set_sync_debug_mode(0)
            torch.cuda.synchronize()
    for warning in caught:
        if "synchroniz" not in str(warning.message).lower():
            continue
        key = f"{Path(warning.filename).name}:{warning.lineno}"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


_GPU_CATS = ("kernel", "gpu_memcpy", "gpu_memset")


def idle_gaps(events: list[dict[str, Any]], threshold_us: float = 5.0) -> dict[str, Any]:
    """GPU idle time in a chrome trace's events: busy span, idle total and the gaps over
    ``threshold_us``, each with the correlation id of the kernel that ends it."""
    gpu = sorted((e for e in events if e.get("cat") in _GPU_CATS and "dur" in e), key=lambda e: e["ts"])
    if not gpu:
        return {"busy_us": 0.0, "span_us": 0.0, "idle_us": 0.0, "gaps": []}
    gaps, end, busy = [], gpu[0]["ts"] + gpu[0]["dur"], gpu[0]["dur"]
    for e in gpu[1:]:
        if e["ts"] > end:
            if e["ts"] - end >= threshold_us:
                gaps.append((e["ts"] - end, end, e.get("args", {}).get("correlation")))
            busy += e["dur"]
        else:
            busy += max(0.0, e["ts"] + e["dur"] - end)
        end = max(end, e["ts"] + e["dur"])
    span = end - gpu[0]["ts"]
    return {"busy_us": busy, "span_us": span, "idle_us": span - busy, "gaps": gaps}


def attribute_gaps(events: list[dict[str, Any]], gaps, top: int = 30) -> dict[str, Any]:
    """Each gap's time to the innermost project (``bagpiper_lib``/``benchmarks``) Python frame around
    the host call that launched the kernel ending it (else the innermost operator)."""
    import bisect

    launches = {
        e["args"]["correlation"]: e["ts"]
        for e in events
        if e.get("cat") in ("cuda_runtime", "cuda_driver") and "correlation" in e.get("args", {})
    }
    frames = sorted(
        (e for e in events if e.get("cat") in ("python_function", "cpu_op") and "dur" in e),
        key=lambda e: e["ts"],
    )
    starts = [e["ts"] for e in frames]

    def where(ts: float) -> str:
        inner_project, inner_op = None, None
        for e in frames[: bisect.bisect_right(starts, ts)][-4000:]:
            if e["ts"] + e["dur"] < ts:
                continue
            name = e.get("name", "")
            if e.get("cat") == "python_function" and ("bagpiper_lib" in name or "benchmarks" in name):
                if inner_project is None or e["ts"] >= inner_project[0]:
                    inner_project = (e["ts"], name)
            elif e.get("cat") == "cpu_op" and (inner_op is None or e["ts"] >= inner_op[0]):
                inner_op = (e["ts"], name)
        parts = [p[1] for p in (inner_project, inner_op) if p is not None]
        return " | ".join(parts) or "?"

    totals: dict[str, list[float]] = {}
    largest = []
    for gap, at, correlation in gaps:
        key = where(launches[correlation]) if correlation in launches else "(no launch found)"
        slot = totals.setdefault(key, [0.0, 0])
        slot[0] += gap
        slot[1] += 1
        largest.append((gap, at, key))
    ranked = sorted(totals.items(), key=lambda kv: -kv[1][0])[:top]
    return {
        "by_site": [{"site": k, "idle_us": round(v[0], 1), "gaps": v[1]} for k, v in ranked],
        "largest": [{"idle_us": round(g, 1), "site": k} for g, _, k in sorted(largest, reverse=True)[:top]],
    }


def _trace_events(fn, sync, with_stack: bool, path: Path) -> list[dict[str, Any]]:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Profiler clears events")
        with profile(activities=activities, with_stack=with_stack) as prof:
            fn()
            sync()
    prof.export_chrome_trace(str(path))
    events = json.loads(path.read_text())["traceEvents"]
    path.unlink()
    return events


def gaps(probe: Probe) -> None:
    import tempfile

    from benchmarks import gpu

    dev = probe.device
    cfg = dict(gpu.SIZES["full" if dev == "cuda" else "smoke"])
    model, batch, _, train_step = gpu.training_setup(cfg, dev)
    model.backbone.compile_layers(**({} if dev == "cuda" else {"backend": "aot_eager"}))
    seconds = probe.time(train_step, repeats=3, warmup=2)
    probe.log("gaps.step_s", seconds)
    if dev == "cuda":
        probe.log("gaps.sync_sites", _sync_sites(train_step))

    def two_steps():
        train_step()
        train_step()

    tmp = Path(tempfile.mkdtemp())
    plain = idle_gaps(_trace_events(two_steps, probe.sync, False, tmp / "plain.json"))
    probe.log("gaps.two_steps", {k: round(v, 1) for k, v in plain.items() if k != "gaps"} | {
        "gaps_over_5us": len(plain["gaps"]), "idle_in_gaps_over_100us": round(sum(
            g for g, _, _ in plain["gaps"] if g >= 100), 1)})  # fmt: skip
    events = _trace_events(two_steps, probe.sync, True, tmp / "stack.json")
    stacked = idle_gaps(events)
    probe.log("gaps.two_steps_with_stack_idle_us", round(stacked["idle_us"], 1))
    report = attribute_gaps(events, stacked["gaps"])
    (probe.out / "gaps.json").write_text(json.dumps(report, indent=1))
    for row in report["by_site"][:12]:
        print(f"[probe] gap {row['idle_us']:>10.1f} us {row['gaps']:>5} x  {row['site'][:200]}", flush=True)


def variants(probe: Probe) -> None:
    """The compiled step with each attention kernel, at 4 rows, then at 8 under memory budgets."""

    plan = {4: [("sdpa", None), ("flex_attention", None)],
            8: [("flex_attention", 0.5), ("sdpa", 0.5), ("flex_attention", 0.7)]}  # fmt: skip
    if os.environ.get("BAGPIPER_PROBE_VARIANTS"):  # "rows:attn:budget,..." e.g. "8:flex_attention:0.5"
        plan = {}
        for item in os.environ["BAGPIPER_PROBE_VARIANTS"].split(","):
            rows, attn, budget = item.split(":")
            plan.setdefault(int(rows), []).append((attn, None if float(budget) >= 1 else float(budget)))
    _time_variants(probe, plan, lambda rows, attn, budget: f"variants.rows{rows}.{attn}.budget{budget or 1.0}",
                   cpu_rows=1, profile=True)  # fmt: skip


def _time_variants(probe: Probe, plan, name_of, cpu_rows: int, profile: bool) -> None:
    """The compiled step for each ``rows -> [(attention, activation budget or None)]`` of ``plan``
    (``cpu_rows`` rows on the CPU), each under ``name_of(rows, attn, budget)``: first (compiling) step,
    seconds, MFU, peak memory, or the out-of-memory or error; with ``profile``, the first variant's
    kernels by GPU time to ``profile_variant.txt``."""
    import gc

    import torch._dynamo

    from benchmarks import gpu

    dev = probe.device
    cfg = dict(gpu.SIZES["full" if dev == "cuda" else "smoke"])
    peak = gpu.peak_flops(torch.cuda.get_device_name()) if dev == "cuda" else None
    backend = {} if dev == "cuda" else {"backend": "aot_eager_decomp_partition"}  # inductor's partitioner
    profiled = not profile
    for rows, combos in plan.items():
        gc.collect()  # an earlier part's or row count's model
        if dev == "cuda":
            torch.cuda.empty_cache()
        model, batch, optimizer, train_step = gpu.training_setup(
            cfg, dev, rows=rows if dev == "cuda" else cpu_rows
        )
        flops = gpu.model_flops(model, batch)
        for attn, budget in combos:
            name = name_of(rows, attn, budget)
            torch._dynamo.reset()
            try:
                model.backbone.set_attn_implementation(attn)
                options = {} if budget is None else {"activation_memory_budget": budget}
                model.backbone.compile_layers(**options, **backend)
                if dev == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                start = time.perf_counter()
                train_step()
                probe.sync()
                probe.log(f"{name}.first_s", time.perf_counter() - start)
                seconds = probe.time(train_step, repeats=3, warmup=1)
                probe.log(f"{name}.s", seconds)
                if peak:
                    probe.log(f"{name}.mfu", flops / seconds / peak)
                if dev == "cuda":
                    probe.log(f"{name}.peak_gib", torch.cuda.max_memory_allocated() / 2**30)
                if not profiled:  # the first variant's kernels, by GPU time
                    probe.profile(train_step, "profile_variant.txt", rows=60)
                    profiled = True
            except torch.OutOfMemoryError as error:
                probe.log(f"{name}.out_of_memory", str(error)[:200])
            except Exception as error:  # noqa: BLE001 - record it, try the next variant
                probe.log(f"{name}.error", f"{type(error).__name__}: {error}"[:600])
            finally:
                model.backbone.compile_layers(False)
                model.backbone.set_attn_implementation("sdpa")
                optimizer.zero_grad(set_to_none=True)
                gc.collect()
                if dev == "cuda":
                    torch.cuda.empty_cache()
        del model, batch, optimizer, train_step


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu_probe", description=__doc__.splitlines()[0]
    )
    parser.add_argument("parts", nargs="*", metavar="PART", help=f"{', '.join(PARTS)} (default: all)")
    parser.add_argument(
        "--out", type=Path, default=Path("gpu_probe"), help="output folder (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    unknown = [part for part in args.parts if part not in PARTS]
    if unknown:
        parser.error(f"unknown part(s) {unknown}: the parts are {', '.join(PARTS)}")
    probe = Probe(args.out, "cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if probe.device == "cuda" else "cpu (code-path check)"
    probe.log("device", f"{name}, torch {torch.__version__}")
    failed = 0
    for part in args.parts or PARTS:
        start = time.perf_counter()
        try:
            globals()[part](probe)
        except Exception as error:  # noqa: BLE001 - record it and go on with the next part
            traceback.print_exc()
            probe.log(f"{part}.error", f"{type(error).__name__}: {error}"[:800])
            failed += 1
        probe.log(f"{part}.wall_s", time.perf_counter() - start)
    return failed


if __name__ == "__main__":
    sys.exit(main())
