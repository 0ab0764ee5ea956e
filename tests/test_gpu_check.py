"""benchmarks/gpu_check.sh and gpu_check.py stop with exit status 2 and a message saying why
when torch sees no CUDA device (they run the real check on a GPU machine: see their docstrings)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present: the check would really run")
def test_gpu_check_fails_clearly_without_cuda(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    shell = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), str(tmp_path / "results")],
                           env=env, capture_output=True, text=True, timeout=300)
    assert shell.returncode == 2, shell.stderr
    assert "no CUDA device" in shell.stderr and "NVIDIA GPU" in shell.stderr
    helper = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--results-dir",
                             str(tmp_path / "results")], env=env, capture_output=True, text=True, timeout=300)
    assert helper.returncode == 2 and "no CUDA device" in helper.stderr
    assert not (tmp_path / "results").exists()  # nothing half-written
