"""benchmarks.gpu_probe on the CPU (tiny shapes: a check of the code path, not of the numbers)."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import gpu_probe


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback")
def test_probe_records_each_part_and_a_failing_part_does_not_stop_the_next(tmp_path):
    failed = gpu_probe.main(["attention", "loss", "--out", str(tmp_path)])
    got = json.loads((tmp_path / "probe.json").read_text())
    assert failed == 1 and "NotImplementedError" in got["attention.error"]  # no varlen kernel on a CPU
    for chunk in (1024, 4096, 8192, 16384):  # the row kernel's loss and gradients equal the float32 passes'
        assert max(got[f"loss.row_kernel.chunk{chunk}.relative_diff"]) < 1e-2
        assert got[f"loss.row_kernel.chunk{chunk}.s"] > 0
    assert (tmp_path / "profile_loss.txt").read_text().count("aten::") > 3


def test_unknown_part_is_refused_by_name(capsys):
    with pytest.raises(SystemExit):
        gpu_probe.main(["atention"])
    assert "unknown part(s) ['atention']: the parts are attention, loss, step" in capsys.readouterr().err


def test_idle_gaps_and_their_attribution_from_a_trace():
    """Two kernels 40 us apart: one gap of 40 us, charged to the project frame that launched the second."""
    events = [
        {"cat": "kernel", "ts": 100.0, "dur": 10.0, "args": {"correlation": 1}},
        {"cat": "kernel", "ts": 105.0, "dur": 10.0, "args": {"correlation": 2}},  # overlaps: no gap
        {"cat": "gpu_memset", "ts": 155.0, "dur": 5.0, "args": {"correlation": 3}},
        {"cat": "cuda_runtime", "ts": 150.0, "dur": 2.0, "args": {"correlation": 3}},
        {"cat": "python_function", "ts": 140.0, "dur": 20.0, "name": "bagpiper_lib/model/loss.py(10): plan"},
        {
            "cat": "python_function",
            "ts": 130.0,
            "dur": 40.0,
            "name": "bagpiper_lib/model/bagpiper.py(5): forward",
        },
        {"cat": "cpu_op", "ts": 149.0, "dur": 4.0, "name": "aten::fill_"},
    ]
    found = gpu_probe.idle_gaps(events)
    assert found["busy_us"] == 20.0 and found["span_us"] == 60.0 and found["idle_us"] == 40.0
    assert [(g, c) for g, _, c in found["gaps"]] == [(40.0, 3)]
    report = gpu_probe.attribute_gaps(events, found["gaps"])
    assert report["by_site"] == [
        {"site": "bagpiper_lib/model/loss.py(10): plan | aten::fill_", "idle_us": 40.0, "gaps": 1}
    ]


def test_gpu_benchmark_code_path_on_the_cpu(monkeypatch):
    """benchmarks.gpu on the CPU (tiny backbone): every entry is produced and gpu.mfu's figures agree
    with each other (FLOPs / seconds, the rows it was asked for, the variant it reports is the fastest)."""
    from benchmarks import gpu

    monkeypatch.setenv("BAGPIPER_BENCH_GPU_DEVICE", "cpu")
    monkeypatch.setenv("BAGPIPER_BENCH_GPU_ROWS", "2")
    results = {e["name"]: e for e in gpu.run("smoke")}
    assert set(results) == {"gpu.mfu", "gpu.compiled_layers", "gpu.loss_gemms", "gpu.generate"}
    mfu = results["gpu.mfu"]
    details = mfu["details"]
    assert details["rows"] == 2 and details["smaller_batch"]["rows"] == 1
    assert details["step_s"] == min(details["step_s_by_attention"].values())
    assert mfu["value"] == pytest.approx(details["model_flops_per_step"] / details["step_s"])
    assert results["gpu.generate"]["value"] > 0
