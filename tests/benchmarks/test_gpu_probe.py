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
