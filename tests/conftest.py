"""Shared test helpers: the CPU backends every op test runs on, and comparison helpers."""

from __future__ import annotations

import os

# torch's and numba's OpenMP pools spin while idle and starve each other on 2 cores
# (a training step: 4 s spinning, 0.2 s passive). Must be set before either loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pytest

from refimpl.ops import BACKENDS

# Every CPU backend must pass every op test; the "cuda" backend has its own process
# (tests/cuda, under the CUDA simulator or on a GPU).
CPU_BACKENDS = ("python", "numpy", "numba")
TOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-9}


@pytest.fixture(params=CPU_BACKENDS)
def backend(request):
    """The backend module under test (imported on first use)."""
    return BACKENDS[request.param]


def assert_close(actual, expected, dtype=None, err_msg=""):
    """Agreement at the course's tolerances: 1e-9 in float64, 1e-5 in float32."""
    dtype = np.dtype(dtype if dtype is not None else np.asarray(expected).dtype)
    tol = TOL.get(dtype, 1e-9)
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol, err_msg=err_msg)
