"""What every tests/cuda module needs first: numba.cuda with a device to run on, the CUDA
simulator (``NUMBA_ENABLE_CUDASIM=1``, set before numba is imported: its own process) or a
GPU; otherwise the calling module is skipped."""

from __future__ import annotations

import pytest


def require_device():
    """``numba.cuda``, or skip the calling module (call it at import time)."""
    numba_cuda = pytest.importorskip("numba.cuda", reason="numba-cuda is not installed")
    if not numba_cuda.is_available():
        pytest.skip(
            "no CUDA device: run with NUMBA_ENABLE_CUDASIM=1 (in its own process) or on a GPU",
            allow_module_level=True,
        )
    return numba_cuda
