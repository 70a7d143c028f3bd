"""Finite-difference gradient checks of every backward, in float64, on every CPU backend.

The RoI operators are piecewise linear in x: central differences are exact away from the
kinks (a max changing its winner), so the boxes are random and off the pixel lattice and
the inputs have distinct, well separated values for the max modes.
"""

from __future__ import annotations

import numpy as np
import pytest

EPS = 1e-6

CASES = [
    # (forward, backward, keyword arguments)
    ("roi_align", {"sampling_ratio": 2, "aligned": False}),
    ("roi_align", {"sampling_ratio": -1, "aligned": True}),
    ("roi_align", {"sampling_ratio": 3, "aligned": True, "pool_mode": "max"}),
    ("roi_align", {"sampling_ratio": -1, "aligned": False, "pool_mode": "max"}),
    ("roi_pool", {}),
    ("roi_warp", {"sampling_ratio": 2, "pool_mode": "max"}),
    ("roi_warp", {"sampling_ratio": 1, "pool_mode": "avg"}),
]


def numerical_gradient(f, x, grad_output):
    """d/dx of sum(f(x) * grad_output) by central differences, one element at a time."""
    grad = np.zeros_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + EPS
        plus = np.sum(f(x) * grad_output)
        flat[i] = old - EPS
        minus = np.sum(f(x) * grad_output)
        flat[i] = old
        gflat[i] = (plus - minus) / (2 * EPS)
    return grad


@pytest.mark.parametrize(
    ("op", "kwargs"),
    CASES,
    ids=lambda v: v if isinstance(v, str) else "-".join(f"{k}={w}" for k, w in v.items()),
)
def test_backward_matches_finite_differences(backend, op, kwargs):
    rng = np.random.default_rng(7)
    n, c, h, w = 2, 2, 6, 7
    # distinct values, at least 0.1 apart: no max is within EPS of changing its winner
    x = rng.permutation(n * c * h * w).reshape(n, c, h, w).astype(np.float64) / 10
    xy = rng.uniform(-1.5, 5.0, size=(4, 2))
    wh = rng.uniform(0.7, 4.0, size=(4, 2))
    rois = np.concatenate([[[0], [1], [0], [1]], xy + 0.013, xy + wh + 0.013], axis=1)
    output_size = (2, 3)
    forward = getattr(backend, f"{op}_forward")
    backward = getattr(backend, f"{op}_backward")
    grad_output = rng.normal(size=(4, c, *output_size))
    analytic = backward(x, rois, grad_output, output_size, **kwargs)
    numeric = numerical_gradient(lambda v: forward(v, rois, output_size, **kwargs), x, grad_output)
    assert np.abs(analytic).sum() > 0, "a gradient check on an all-zero gradient checks nothing"
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-7)
