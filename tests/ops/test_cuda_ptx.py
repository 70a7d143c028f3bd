"""Every numba-cuda kernel compiles for a real GPU (sm_90 PTX through NVVM), checked without
one by scripts/cuda_ptx_check.py: the simulator tests (tests/cuda) run the kernels as
Python and cannot see a kernel that numba-cuda's compiler would reject. Skipped where no
CUDA toolkit (NVVM, libdevice) is installed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(600)
def test_every_kernel_compiles_to_ptx():
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "cuda_ptx_check.py"), "--cc", "9.0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=580,
    )
    if proc.returncode == 77:
        pytest.skip(f"no CUDA toolkit to compile with: {proc.stderr.strip()[-200:]}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "sm_90: all kernels compiled" in proc.stdout
    row = r"^ok\s+(\w+\.\w+) (float32|float64) (nchw|channels_last)\s+\d+ chars of PTX, (\d+)"
    rows = re.findall(row, proc.stdout, re.M)
    assert len(rows) == 32  # 10 kernels x 2 dtypes, 6 of them in 2 layouts
    for name, _, _, atomics in rows:
        # The backwards scatter with atomic adds; nothing else may.
        assert (int(atomics) > 0) == name.endswith(("backward", "backward_argmax")), name
