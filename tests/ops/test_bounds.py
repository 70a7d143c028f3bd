"""Issue 12: every size is bounded before memory is touched, with a ValueError that names the
argument and the limit, on every backend and through the torch layer (public functions and
the operators called directly). Before the bounds, ``sampling_ratio = 2**63`` pooled to zeros
(numpy/numba), ``2**32 + 1`` hung the torch op, and ``output_size = 10**6`` asked for tens of
TiB (a MemoryError)."""

from __future__ import annotations

import numpy as np
import pytest

from refimpl.ops.validate import MAX_OUTPUT_SIZE, MAX_SAMPLING_RATIO

X = np.ones((1, 2, 5, 6), np.float32)
ROIS = np.array([[0, 1, 1, 3, 3], [0, 0, 0, 5, 4]], np.float32)

TOO_MANY_SAMPLES = [MAX_SAMPLING_RATIO + 1, 2**32 + 1, 2**63]
TOO_MANY_BINS = [MAX_OUTPUT_SIZE + 1, 10**6, (7, 10**6), (10**6, 7)]


def _sampled(backend):
    """The backend functions that take a sampling_ratio: (name, call(sampling_ratio))."""
    grad = np.ones((2, 2, 2, 2), np.float32)
    return [
        ("roi_align_forward avg", lambda r: backend.roi_align_forward(X, ROIS, 2, 1.0, r)),
        ("roi_align_forward max",
         lambda r: backend.roi_align_forward(X, ROIS, 2, 1.0, r, False, "max")),
        ("roi_warp_forward", lambda r: backend.roi_warp_forward(X, ROIS, 2, 1.0, r)),
        ("roi_align_backward", lambda r: backend.roi_align_backward(X, ROIS, grad, 2, 1.0, r)),
        ("roi_warp_backward", lambda r: backend.roi_warp_backward(X, ROIS, grad, 2, 1.0, r)),
    ]  # fmt: skip


@pytest.mark.parametrize("ratio", TOO_MANY_SAMPLES)
def test_sampling_ratio_is_bounded(backend, ratio):
    for name, call in _sampled(backend):
        with pytest.raises(
            ValueError, match=rf"sampling_ratio must be at most {MAX_SAMPLING_RATIO}"
        ):
            call(ratio)
            pytest.fail(f"{name} accepted sampling_ratio={ratio}")  # (not a ValueError)


@pytest.mark.parametrize("size", TOO_MANY_BINS, ids=str)
def test_output_size_is_bounded(backend, size):
    calls = [
        lambda: backend.roi_align_forward(X, ROIS, size),
        lambda: backend.roi_pool_forward(X, ROIS, size),
        lambda: backend.roi_warp_forward(X, ROIS, size),
        lambda: backend.prroi_pool_forward(X, ROIS, size),
    ]
    for call in calls:
        with pytest.raises(ValueError, match=rf"output_size must be at most {MAX_OUTPUT_SIZE}"):
            call()


def test_the_largest_allowed_values_run(backend):
    """The bounds reject nothing a detector uses: the limits themselves are valid input (on
    a one-bin, one-RoI case, so that even the python backend is quick)."""
    rois = ROIS[:1]
    y = backend.roi_align_forward(X, rois, (1, MAX_OUTPUT_SIZE), 1.0, 1)
    assert y.shape == (1, 2, 1, MAX_OUTPUT_SIZE)
    if backend.__name__.endswith("python"):
        return  # a million python-level samples: the compiled backends show the bound is usable
    y = backend.roi_align_forward(X, rois, 1, 1.0, MAX_SAMPLING_RATIO)
    # every sample of a box inside an all-ones map is 1, and a float32 sum of 2**20 ones is
    # exact (integers below 2**24): the mean is exactly 1
    np.testing.assert_array_equal(y, 1.0)


torch = pytest.importorskip("torch")


def _torch_calls():
    import refimpl.ops.torch as ops

    x, rois = torch.from_numpy(X), torch.from_numpy(ROIS)
    return x, rois, ops


@pytest.mark.parametrize("ratio", TOO_MANY_SAMPLES)
def test_torch_sampling_ratio_is_bounded(ratio):
    x, rois, ops = _torch_calls()
    calls = [
        lambda: ops.roi_align(x, rois, 2, 1.0, ratio),
        lambda: ops.roi_warp(x, rois, 2, 1.0, ratio),
        lambda: ops.RoIAlign(2, 1.0, ratio)(x, rois),
    ]
    if ratio < 2**63:  # the operators' int64 schema cannot carry 2**63 at all
        calls += [
            lambda: torch.ops.refimpl.roi_align(x, rois, 1.0, 2, 2, ratio, False),
            lambda: torch.ops.refimpl.roi_warp(x, rois, 1.0, 2, 2, ratio),
        ]
    for call in calls:
        with pytest.raises(
            ValueError, match=rf"sampling_ratio must be at most {MAX_SAMPLING_RATIO}"
        ):
            call()


@pytest.mark.parametrize("size", [MAX_OUTPUT_SIZE + 1, 10**6])
def test_torch_output_size_is_bounded(size):
    x, rois, ops = _torch_calls()
    calls = [
        lambda: ops.roi_align(x, rois, size),
        lambda: ops.roi_pool(x, rois, size),
        lambda: ops.roi_warp(x, rois, size),
        lambda: ops.prroi_pool(x, rois, size),
        lambda: torch.ops.refimpl.roi_align(x, rois, 1.0, size, size, 2, False),
        lambda: torch.ops.refimpl.roi_pool(x, rois, 1.0, 7, size),
        lambda: torch.ops.refimpl.prroi_pool(x, rois, 1.0, size, 7),
    ]
    for call in calls:
        with pytest.raises(ValueError, match=rf"output_size must be at most {MAX_OUTPUT_SIZE}"):
            call()
