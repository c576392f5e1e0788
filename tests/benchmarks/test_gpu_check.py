"""benchmarks/gpu_check.sh refuses to run without a CUDA device, with a message that says why."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.sh"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_gpu_check_refuses_without_a_cuda_device(tmp_path):
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}  # this interpreter is `python`
    done = subprocess.run(
        ["bash", str(SCRIPT), str(tmp_path / "out")], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 2
    assert "no CUDA device visible to torch: nothing to check" in done.stderr
    assert not (tmp_path / "out" / "tests.log").exists()  # no step ran
