"""Smoke test of the benchmark suite: the cheapest benchmark at its smallest size, JSON schema only.

Timings never go in unit tests: nothing here checks a number against a target.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ENTRY_KEYS = {
    "name",
    "value",
    "baseline",
    "ratio",
    "unit",
    "baseline_name",
    "target",
    "met",
    "repeats",
    "details",
}
MACHINE_KEYS = {"platform", "cpu_count", "torch", "torch_threads", "device", "python"}


def check_entry(e: dict) -> None:
    assert set(e) >= ENTRY_KEYS, f"entry lacks {ENTRY_KEYS - set(e)}"
    assert isinstance(e["name"], str) and e["name"]
    assert isinstance(e["details"], dict)
    if e.get("skipped"):
        assert isinstance(e["skipped"], str) and e["met"] is None
        return
    for key in ("value", "baseline", "ratio"):
        assert isinstance(e[key], float) and math.isfinite(e[key]), (key, e[key])
    assert e["ratio"] == pytest.approx(e["value"] / e["baseline"])
    assert isinstance(e["repeats"], int) and e["repeats"] >= 1
    if e["target"] is None:
        assert e["met"] is None
    else:
        assert set(e["target"]) == {"on", "op", "threshold"}
        assert e["target"]["on"] in ("ratio", "value") and e["target"]["op"] in ("<=", ">=")
        assert isinstance(e["met"], bool)


def test_patterns_smoke_writes_and_prints_the_schema(tmp_path):
    out = tmp_path / "results.json"
    cmd = [sys.executable, "-m", "benchmarks", "patterns", "--quick", "--size", "smoke", "--out", str(out)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = json.loads(done.stdout)
    written = json.loads(out.read_text())
    assert printed["benchmarks"] == written["benchmarks"]
    assert written["schema"] == 1
    assert set(written["machine"]) >= MACHINE_KEYS
    bench = written["benchmarks"]["patterns"]
    assert bench["size"] == "smoke" and bench["error"] is None
    names = [e["name"] for e in bench["entries"]]
    assert names == [
        "patterns.delay",
        "patterns.delay_arbitrary",
        "patterns.delay_ragged",
        "patterns.first_call",
    ]
    for e in bench["entries"]:
        check_entry(e)
    assert "patterns.delay" in done.stderr  # the summary table


def test_entries_and_targets():
    from benchmarks.harness import Target, entry, format_table, skipped

    e = entry("x", 3.0, 2.0, unit="s", baseline_name="y", target=Target("ratio", "<=", 1.25), repeats=3)
    check_entry(e)
    assert e["ratio"] == 1.5 and e["met"] is False
    assert entry("x", 1.0, 2.0, unit="s", baseline_name="y", target=Target("value", ">=", 0.5))["met"] is True
    s = skipped("gpu.mfu", "no CUDA device")
    check_entry(s)
    table = format_table({"benchmarks": {"b": {"entries": [e, s]}}})
    assert "ratio <= 1.25" in table and "skipped" in table and "NO" in table
