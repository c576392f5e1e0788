"""Loss memory: peak memory of the chunked loss vs materialised full-vocabulary logits.

``multistream_loss`` (chunked and fused: each chunk's logits become their own gradient in place and
are multiplied into the hidden/head gradients during forward) against the naive loss that
builds every logit at once, on the same inputs: ``P`` target positions, hidden size ``H``, a shared head
over a Qwen3-sized vocabulary (256 special + 151,936 text + 8 x 1025 codec ids = 160,392) and 8 streams
(stream 0 over the whole vocabulary, streams 1-7 over the codec ids, as ``BagpiperModel`` does). Half
of the positions are audio frames (targets in all 8 streams), half text (stream 0 only).

Peak memory is forward + backward, above what exists before (inputs and weights):

* CUDA: ``torch.cuda.max_memory_allocated`` in this process;
* CPU: one subprocess per variant, peak RSS (``VmHWM``, reset per repetition through
  ``/proc/self/clear_refs`` where the kernel allows, else ``ru_maxrss`` of one repetition) minus the
  RSS before the call. ``tracemalloc`` cannot see torch's allocations.

Entry ``loss_memory.peak``: chunked peak / naive peak (target <= 0.25), with the two losses and
gradient norms asserted equal. The geometry is ``P = 4096``, ``chunk_size = 1024`` (the library
default) in the full run; ``--quick`` keeps the chunk at a quarter of ``P`` at a smaller scale.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.harness import Target, entry

NAME = "loss_memory"

SPECIAL, TEXT, CODEBOOKS, CODEBOOK_SIZE = 256, 151_936, 8, 1024
BLOCK = CODEBOOK_SIZE + 1
CODEC_OFFSET = SPECIAL + TEXT
VOCAB = CODEC_OFFSET + CODEBOOKS * BLOCK  # 160,392

SIZES: dict[str, dict[str, Any]] = {
    "full": {"positions": 4096, "hidden": 256, "chunk": 1024, "repeats": 3},
    "quick": {"positions": 512, "hidden": 64, "chunk": 128, "repeats": 2},
    "smoke": {"positions": 64, "hidden": 16, "chunk": 16, "repeats": 1},
}


# ---------------------------------------------------------------------------------------- the problem
def make_problem(positions: int, hidden: int, device: str, seed: int = 0):
    """Hidden states, head weights and targets, identical for both variants."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(positions, hidden, generator=gen).to(device).requires_grad_(True)
    weight = (torch.randn(VOCAB, hidden, generator=gen) / hidden**0.5).to(device).requires_grad_(True)
    stream_embed = (torch.randn(CODEBOOKS - 1, hidden, generator=gen) * 0.02).to(device).requires_grad_(True)
    audio = torch.arange(positions) % 2 == 0  # every other position is an audio frame
    codes = torch.randint(0, CODEBOOK_SIZE, (positions, CODEBOOKS), generator=gen)
    tokens = CODEC_OFFSET + torch.arange(CODEBOOKS) * BLOCK + 1 + codes  # codebook k's block in stream k
    text = torch.randint(SPECIAL, CODEC_OFFSET, (positions,), generator=gen)
    tokens[:, 0] = torch.where(audio, tokens[:, 0], text)
    tokens[~audio, 1:] = CODEC_OFFSET + torch.arange(1, CODEBOOKS) * BLOCK  # codec pads, no loss
    mask = torch.zeros(positions, CODEBOOKS, dtype=torch.bool)
    mask[:, 0] = True
    mask[audio, 1:] = True
    return h, weight, stream_embed, tokens.to(device), mask.to(device)


def logits_fn_for(weight, stream_embed):
    """The shared head of ``BagpiperModel.stream_logits``: stream 0 over all ids, k > 0 over codec ids."""
    import torch.nn.functional as F

    def logits_fn(h, k):
        if k == 0:
            return F.linear(h, weight).float(), 0
        return F.linear(h + stream_embed[k - 1], weight[CODEC_OFFSET:]).float(), CODEC_OFFSET

    return logits_fn


def chunked_loss(h, weight, stream_embed, tokens, mask, chunk: int):
    from bagpiper_lib.model.loss import StreamHead, StreamTargets, multistream_loss

    heads = [StreamHead(weight, 0, VOCAB, 0)] + [
        StreamHead(weight, CODEC_OFFSET, VOCAB, CODEC_OFFSET, shift=stream_embed, shift_row=k - 1)
        for k in range(1, CODEBOOKS)
    ]
    return multistream_loss(
        StreamTargets(h, tokens, mask),
        heads,
        codec_offset=CODEC_OFFSET,
        codec_weight=1.0 / CODEBOOKS,
        chunk_size=chunk,
    ).loss


def naive_loss(h, weight, stream_embed, tokens, mask, chunk: int = 0):
    """Every stream's logits for every position at once, then weighted cross entropy."""
    import torch
    import torch.nn.functional as F

    logits_fn = logits_fn_for(weight, stream_embed)
    total = torch.zeros((), device=h.device)
    for k in range(CODEBOOKS):
        logits, lo = logits_fn(h, k)
        target = (tokens[:, k] - lo).clamp(min=0)
        ce = F.cross_entropy(logits, target, reduction="none")
        weight_k = torch.where(tokens[:, k] >= CODEC_OFFSET, 1.0 / CODEBOOKS, 1.0)
        total = total + (ce * weight_k * mask[:, k]).sum()
    return total / mask[:, 0].sum()


VARIANTS = {"chunked": chunked_loss, "naive": naive_loss}


# ---------------------------------------------------------------------------------------- measuring
def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (Linux >= 4.0); False where that is not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return _status_kb("VmHWM") is not None


def _trim_heap() -> None:
    """Give freed heap memory back to the OS so it does not hide in the next baseline."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0)


def measure(variant: str, positions: int, hidden: int, chunk: int, repeats: int, device: str) -> dict:
    """Peak bytes of ``repeats`` forward + backward runs of ``variant`` (this process must be fresh on CPU)."""
    import torch

    h, weight, stream_embed, tokens, mask = make_problem(positions, hidden, device)
    fn = VARIANTS[variant]
    # Warm-up on a few positions: lazily created state (autograd engine, thread pools, allocator
    # arenas) must not land in the first measured peak.
    few = min(positions, 16)
    fn(h[:few], weight, stream_embed, tokens[:few], mask[:few], min(chunk, 8)).backward()
    peaks, loss = [], None
    for rep in range(repeats):
        for p in (h, weight, stream_embed):
            p.grad = None
        gc.collect()
        if device == "cpu":
            _trim_heap()
            resettable = _reset_peak()
            if not resettable and rep > 0:
                break  # ru_maxrss cannot be reset: only the first repetition is a measurement
            before = _status_kb("VmRSS") or 0
        else:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        out = fn(h, weight, stream_embed, tokens, mask, chunk)
        out.backward()
        loss = float(out.detach())
        del out
        if device == "cpu":
            if resettable:
                peak_kb = _status_kb("VmHWM") - before
            else:  # ru_maxrss (kB on Linux) is valid when the setup peak stayed below this one
                peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
            peaks.append(peak_kb * 1024)
        else:
            torch.cuda.synchronize()
            peaks.append(torch.cuda.max_memory_allocated() - before)
    grads = [float(p.grad.double().norm()) for p in (h, weight, stream_embed)]
    return {
        "variant": variant,
        "peaks": peaks,
        "peak": statistics.median(peaks),
        "loss": loss,
        "grad_norms": grads,
    }


def _subprocess(variant: str, cfg: dict[str, Any]) -> dict:
    import torch

    root = Path(__file__).resolve().parents[1]
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.loss_memory",
        "--variant",
        variant,
        "--positions",
        str(cfg["positions"]),
        "--hidden",
        str(cfg["hidden"]),
        "--chunk",
        str(cfg["chunk"]),
        "--repeats",
        str(cfg["repeats"]),
        "--threads",
        str(torch.get_num_threads()),
    ]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])),
    }
    done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"loss_memory subprocess ({variant}) failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(size: str = "full") -> list[dict[str, Any]]:
    import torch

    cfg = SIZES[size]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        results = {
            v: measure(v, cfg["positions"], cfg["hidden"], cfg["chunk"], cfg["repeats"], device)
            for v in VARIANTS
        }
        method = "torch.cuda.max_memory_allocated"
    else:
        results = {v: _subprocess(v, cfg) for v in VARIANTS}
        method = "peak RSS of a subprocess per variant (VmHWM / ru_maxrss) minus RSS before"
    chunked, naive = results["chunked"], results["naive"]
    if abs(chunked["loss"] - naive["loss"]) > 1e-4 * max(1.0, abs(naive["loss"])):
        raise AssertionError(f"chunked loss {chunked['loss']} != naive loss {naive['loss']}")
    for a, b in zip(chunked["grad_norms"], naive["grad_norms"]):
        if abs(a - b) > 1e-3 * max(1e-6, abs(b)):
            raise AssertionError(f"gradient norms differ: {chunked['grad_norms']} vs {naive['grad_norms']}")
    logits_bytes = cfg["positions"] * (VOCAB + (CODEBOOKS - 1) * CODEBOOKS * BLOCK) * 4
    return [
        entry(
            "loss_memory.peak",
            chunked["peak"],
            naive["peak"],
            unit="bytes (peak, fwd+bwd)",
            baseline_name="materialised full-vocabulary logits",
            target=Target("ratio", "<=", 0.25),
            repeats=len(chunked["peaks"]),
            positions=cfg["positions"],
            hidden=cfg["hidden"],
            chunk_size=cfg["chunk"],
            vocab=VOCAB,
            streams=CODEBOOKS,
            device=device,
            method=method,
            loss=chunked["loss"],
            loss_naive=naive["loss"],
            all_logits_fp32_bytes=logits_bytes,
            peaks_chunked=chunked["peaks"],
            peaks_naive=naive["peaks"],
        )
    ]


def main(argv: list[str] | None = None) -> None:
    """Subprocess entry: measure one variant on CPU, print one JSON line."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--variant", choices=sorted(VARIANTS), required=True)
    parser.add_argument("--positions", type=int, required=True)
    parser.add_argument("--hidden", type=int, required=True)
    parser.add_argument("--chunk", type=int, required=True)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)
    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    result = measure(args.variant, args.positions, args.hidden, args.chunk, args.repeats, "cpu")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
