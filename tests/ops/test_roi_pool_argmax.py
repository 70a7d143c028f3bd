"""RoIPool with a saved argmax, in every CPU backend: ``roi_pool_forward_with_argmax`` gives
the forward and the flat plane index of each bin's first maximum (-1 for an empty bin), and
``roi_pool_backward_from_argmax`` scatters through it. What the torch operator saves, as
torchvision's RoIPool does (tests/cuda/ covers the cuda backend)."""

from __future__ import annotations

import numpy as np
import pytest

from refimpl.ops import BACKENDS
from tests.conftest import assert_close

CPU_BACKENDS = ["python", "numpy", "numba"]
OUT, SCALE = (3, 2), 0.75


def _case(dtype, seed=11):
    """Small integer values (many ties), boxes overlapping, outside, empty and inverted."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 4, size=(2, 3, 9, 8)).astype(dtype)
    xy = rng.uniform(-4, 10, size=(24, 2))
    rois = np.concatenate([rng.integers(0, 2, (24, 1)), xy, xy + rng.uniform(-1, 7, (24, 2))], 1)
    grad = rng.normal(size=(24, 3, *OUT))
    return x, rois.astype(dtype), grad.astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_argmax_names_the_first_maximum(backend, dtype):
    be = BACKENDS[backend]
    x, rois, _ = _case(dtype)
    y, argmax = be.roi_pool_forward_with_argmax(x, rois, OUT, SCALE)
    assert argmax.dtype == np.int64 and argmax.shape == y.shape
    np.testing.assert_array_equal(y, BACKENDS["python"].roi_pool_forward(x, rois, OUT, SCALE))
    # Known answer from the argmax itself: it names a pixel holding the output value, and
    # -1 exactly where the output is an empty bin's 0.
    empty = argmax == -1
    assert empty.any() and not empty.all()
    k, c = np.nonzero(~empty)[:2]
    b = rois[k, 0].astype(int)
    h, w = np.divmod(argmax[~empty], x.shape[3])
    np.testing.assert_array_equal(x[b, c, h, w], y[~empty])
    np.testing.assert_array_equal(y[empty], 0)
    # The first maximum in row-major order, as the python definition's.
    _, argmax_ref = BACKENDS["python"].roi_pool_forward_with_argmax(x, rois, OUT, SCALE)
    np.testing.assert_array_equal(argmax, argmax_ref)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_backward_from_argmax_equals_the_recomputing_backward(backend, dtype):
    be = BACKENDS[backend]
    x, rois, grad = _case(dtype, seed=3)
    _, argmax = be.roi_pool_forward_with_argmax(x, rois, OUT, SCALE)
    assert_close(
        be.roi_pool_backward_from_argmax(x, rois, grad, argmax, OUT, SCALE),
        BACKENDS["python"].roi_pool_backward(x, rois, grad, OUT, SCALE),
    )


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_backward_from_argmax_validates_the_argmax(backend):
    be = BACKENDS[backend]
    x, rois, grad = _case(np.float64)
    _, argmax = be.roi_pool_forward_with_argmax(x, rois, OUT, SCALE)
    bad = argmax.copy()
    bad[0, 0, 0, 0] = 9 * 8  # one past the plane: a write outside grad_x
    with pytest.raises(ValueError, match=r"argmax must lie in \[-1, 72\)"):
        be.roi_pool_backward_from_argmax(x, rois, grad, bad, OUT, SCALE)
    bad[0, 0, 0, 0] = -2
    with pytest.raises(ValueError, match="argmax must lie in"):
        be.roi_pool_backward_from_argmax(x, rois, grad, bad, OUT, SCALE)
    with pytest.raises(TypeError, match="argmax must have dtype int64"):
        be.roi_pool_backward_from_argmax(x, rois, grad, argmax.astype(np.int32), OUT, SCALE)
    with pytest.raises(ValueError, match="argmax must be an array of shape"):
        be.roi_pool_backward_from_argmax(x, rois, grad, argmax[:2], OUT, SCALE)
    with pytest.raises(ValueError, match="argmax must be an array of shape"):
        be.roi_pool_backward_from_argmax(x, rois, grad, argmax.tolist(), OUT, SCALE)
