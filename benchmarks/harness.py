"""Shared machinery of the benchmarks: side-by-side timing, result entries, machine record, output.

Every measurement is a pair, run in the same process, interleaved, and reported as a ratio::

    value     what our code achieves (seconds, bytes, tokens/s ...)
    baseline  the same quantity for the reference it is compared with
    ratio     value / baseline
    target    {"on": "ratio" | "value", "op": "<=" | ">=", "threshold": x} or None (informational)
    met       whether the target holds; None when there is no target or the entry was skipped

Timings are the median of ``repeats`` repetitions; candidate and baseline alternate inside each
repetition (and swap order every other one) so that drift in a shared machine's load hits both.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.metadata
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "SIZES",
    "Target",
    "entry",
    "skipped",
    "median_time",
    "time_pair",
    "machine_info",
    "synchronize",
    "tune_allocator",
    "format_table",
    "write_results",
]

SIZES = ("full", "quick", "smoke")  # problem sizes: the real one, --quick (minutes), smoke (tests)


@dataclass(frozen=True)
class Target:
    """``<on> <op> <threshold>``, e.g. ``Target("ratio", "<=", 1.5)``."""

    on: str
    op: str
    threshold: float

    def __post_init__(self) -> None:
        if self.on not in ("ratio", "value") or self.op not in ("<=", ">="):
            raise ValueError(f"bad target {self}")

    def holds(self, value: float, ratio: float) -> bool:
        x = ratio if self.on == "ratio" else value
        return x <= self.threshold if self.op == "<=" else x >= self.threshold

    def as_dict(self) -> dict[str, Any]:
        return {"on": self.on, "op": self.op, "threshold": self.threshold}

    def __str__(self) -> str:
        return f"{self.on} {self.op} {self.threshold:g}"


def entry(
    name: str,
    value: float,
    baseline: float,
    *,
    unit: str,
    baseline_name: str,
    target: Target | None = None,
    repeats: int | None = None,
    **details: Any,
) -> dict[str, Any]:
    """One result: ``value`` vs ``baseline`` (same unit), ratio ``value / baseline``, target check."""
    value, baseline = float(value), float(baseline)
    ratio = value / baseline if baseline else float("inf")
    return {
        "name": name,
        "value": value,
        "baseline": baseline,
        "ratio": ratio,
        "unit": unit,
        "baseline_name": baseline_name,
        "target": target.as_dict() if target else None,
        "met": target.holds(value, ratio) if target else None,
        "repeats": repeats,
        "details": details,
    }


def skipped(name: str, reason: str, *, unit: str = "", target: Target | None = None) -> dict[str, Any]:
    """An entry that could not run here (e.g. GPU-only), with the reason."""
    return {
        "name": name,
        "value": None,
        "baseline": None,
        "ratio": None,
        "unit": unit,
        "baseline_name": None,
        "target": target.as_dict() if target else None,
        "met": None,
        "repeats": 0,
        "skipped": reason,
        "details": {},
    }


def synchronize() -> None:
    """Wait for queued GPU work (no-op on CPU) so that wall-clock times are complete."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def tune_allocator() -> str:
    """Serve large CPU blocks from the reused heap instead of fresh ``mmap`` pages (glibc only).

    glibc hands blocks over its mmap threshold straight back to the kernel on free, so every call
    that allocates a few MB pays fresh page faults; in a shared VM that cost swings 5x between runs
    and swamps the operation being timed (on both sides of a comparison). Raising the mmap and trim
    thresholds keeps freed blocks for reuse, as a caching allocator (tcmalloc, jemalloc, CUDA's) does.
    Returns a description for the machine record. Must not be used where RSS is the measurement.
    """
    import ctypes
    import ctypes.util

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return "system default"
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        m_trim_threshold, m_mmap_threshold = -1, -3
        ok = libc.mallopt(m_mmap_threshold, 1 << 30) and libc.mallopt(m_trim_threshold, 1 << 30)
    except (OSError, AttributeError):
        ok = False
    return "glibc, mmap/trim thresholds 1 GiB (freed blocks reused)" if ok else "glibc default"


def _timed(fn: Callable[[], Any]) -> float:
    synchronize()
    start = time.perf_counter()
    fn()
    synchronize()
    return time.perf_counter() - start


def median_time(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> tuple[float, list[float]]:
    """Median wall-clock seconds of ``fn()`` over ``repeats`` runs after ``warmup`` untimed runs."""
    for _ in range(warmup):
        fn()
    gc.collect()
    times = [_timed(fn) for _ in range(repeats)]
    return statistics.median(times), times


def time_pair(
    candidate: Callable[[], Any], baseline: Callable[[], Any], repeats: int, warmup: int = 1
) -> tuple[float, float, dict[str, list[float]]]:
    """Median seconds of ``candidate`` and ``baseline``, interleaved (ABBA...) over ``repeats`` rounds."""
    for _ in range(warmup):
        candidate()
        baseline()
    gc.collect()
    times: dict[str, list[float]] = {"candidate": [], "baseline": []}
    for i in range(repeats):
        order = (("candidate", candidate), ("baseline", baseline))
        for key, fn in order if i % 2 == 0 else order[::-1]:
            times[key].append(_timed(fn))
    return statistics.median(times["candidate"]), statistics.median(times["baseline"]), times


def machine_info() -> dict[str, Any]:
    """Where the numbers come from: platform, CPUs, threads, library versions, device, load."""
    import torch

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": "cpu",
        "cuda": torch.cuda.is_available(),
    }
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):  # no import: seconds saved
        info["transformers"] = importlib.metadata.version("transformers")
    if torch.cuda.is_available():
        info["device"] = f"cuda:{torch.cuda.current_device()}"
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda_version"] = torch.version.cuda
    info["git"] = _git_revision()
    if hasattr(os, "getloadavg"):
        info["loadavg_1m"] = round(os.getloadavg()[0], 2)  # other users of a shared machine
    return info


def _git_revision() -> str | None:
    """The checkout's commit (``+dirty`` with uncommitted changes), or None outside a git checkout."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def _fmt(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        if x == 0 or 1e-3 <= abs(x) < 1e5:
            return f"{x:.4g}"
        return f"{x:.3e}"
    return str(x)


def format_table(results: dict[str, Any]) -> str:
    """A fixed-width summary table of every entry (for humans; the JSON is the record)."""
    rows = [("benchmark", "value", "baseline", "ratio", "target", "met", "unit")]
    for bench in results["benchmarks"].values():
        for e in bench["entries"]:
            target = e["target"]
            text = "-" if target is None else f"{target['on']} {target['op']} {target['threshold']:g}"
            met = "skipped" if e.get("skipped") else {True: "yes", False: "NO", None: "-"}[e["met"]]
            rows.append(
                (e["name"], _fmt(e["value"]), _fmt(e["baseline"]), _fmt(e["ratio"]), text, met, e["unit"])
            )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_results(results: dict[str, Any], path: Path, merge: bool = True) -> dict[str, Any]:
    """Write ``results`` to ``path``; with ``merge``, benchmarks of an earlier run on the same machine
    that this run did not repeat are kept (so single benchmarks can be rerun one at a time)."""
    out = results
    if merge and path.is_file():
        try:
            old = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            old = None
        if old and _same_machine(old.get("machine", {}), results["machine"]):
            out = {**results, "benchmarks": {**old.get("benchmarks", {}), **results["benchmarks"]}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2, sort_keys=False) + "\n")
    return out


def _same_machine(a: dict[str, Any], b: dict[str, Any]) -> bool:
    keys: Sequence[str] = ("platform", "cpu_count", "torch", "device", "gpu")
    return all(a.get(k) == b.get(k) for k in keys)
