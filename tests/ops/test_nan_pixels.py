"""Issue 12: what a NaN feature pixel does, defined as torchvision does and equal on every
backend (the numpy backend spread a NaN to every bin of a RoI; the max modes kept a NaN that
came first; python/numba RoIPool disagreed with numpy):

- the max modes (RoIPool, RoIAlign/RoIWarp ``pool_mode="max"``) keep torchvision's RoIPool
  running maximum: it starts at -FLT_MAX and takes a value only when strictly greater, so a
  NaN never wins; a bin of only NaN gives -FLT_MAX, argmax -1 and no gradient;
- the averages (RoIAlign, RoIWarp ``"avg"``, PrRoIPool) are NaN in exactly the bins that read
  the NaN pixel, at any weight (0 * NaN is NaN: torchvision's interpolation reads all four
  corners of a sample). (torchvision also reads pixel 0, at weight 0, for samples off the
  map; we read nothing there: an off-map bin is 0 whatever pixel 0 holds.)
"""

from __future__ import annotations

import numpy as np
import pytest

from refimpl.ops import BACKENDS
from refimpl.ops.geometry import MAX_FLOOR

FLT_MAX = np.finfo(np.float32).max
X = (np.arange(36, dtype=np.float32) / 10).reshape(1, 1, 6, 6)
X[0, 0, 2, 3] = X[0, 0, 5, 5] = np.nan
ROIS = np.array(
    [[0, 0, 0, 5, 5], [0, 3.2, 1.1, 4.9, 4.0], [0, 5, 5, 5, 5], [0, 1.2, 0.3, 4.4, 3.9]],
    np.float32,
)
# torchvision 0.29.1's roi_pool(X, ROIS, 3, 1.0), and the input gradient of its sum
TV_ROI_POOL = np.array([
    [[0.7, 0.9, 1.1], [1.9, 2.1, 2.3], [3.1, 3.3, 3.4]],
    [[0.9, 1.6, 1.7], [2.1, 2.2, 2.3], [2.7, 2.8, 2.9]],
    [[-FLT_MAX] * 3] * 3,  # only the NaN pixel (5, 5) in every bin
    [[0.8, 0.9, 1.0], [2.0, 2.1, 2.2], [2.6, 2.7, 2.8]],
], np.float32)[:, None]  # fmt: skip
TV_ROI_POOL_GRAD = np.array([
    [0, 0, 0, 0, 0, 0], [0, 1, 1, 3, 1, 1], [0, 0, 0, 0, 1, 1],
    [0, 1, 1, 3, 2, 2], [0, 0, 1, 2, 2, 1], [0, 1, 0, 1, 1, 0],
], np.float32)[None, None]  # fmt: skip
# where torchvision's roi_align(X, ROIS, 3, 1.0, 2, False) is NaN
TV_ROI_ALIGN_NAN = np.array([
    [[0, 1, 1], [0, 1, 1], [0, 0, 1]], [[1, 1, 0], [1, 1, 0], [0, 0, 0]],
    [[1, 1, 1], [1, 1, 1], [1, 1, 1]], [[1, 1, 1], [1, 1, 1], [0, 0, 0]],
], bool)[:, None]  # fmt: skip


def test_roi_pool_as_torchvision(backend):
    y, argmax = backend.roi_pool_forward_with_argmax(X, ROIS, 3, 1.0)
    np.testing.assert_array_equal(y, TV_ROI_POOL)
    assert (argmax[2] == -1).all() and (argmax[[0, 1, 3]] >= 0).all()
    grad = backend.roi_pool_backward(X, ROIS, np.ones_like(y), 3, 1.0)
    np.testing.assert_array_equal(grad, TV_ROI_POOL_GRAD)
    grad = backend.roi_pool_backward_from_argmax(X, ROIS, np.ones_like(y), argmax, 3, 1.0)
    np.testing.assert_array_equal(grad, TV_ROI_POOL_GRAD)


def test_roi_align_avg_as_torchvision(backend):
    with np.errstate(invalid="ignore"):
        y = backend.roi_align_forward(X, ROIS, 3, 1.0, 2, False)
    np.testing.assert_array_equal(np.isnan(y), TV_ROI_ALIGN_NAN)


def test_against_torchvision_directly():
    torch = pytest.importorskip("torch")
    tv = pytest.importorskip("torchvision.ops")
    x, rois = torch.from_numpy(X), torch.from_numpy(ROIS)
    np.testing.assert_array_equal(tv.roi_pool(x, rois, 3, 1.0).numpy(), TV_ROI_POOL)
    assert np.array_equal(np.isnan(tv.roi_align(x, rois, 3, 1.0, 2).numpy()), TV_ROI_ALIGN_NAN)
    for name in ("python", "numpy", "numba"):
        with np.errstate(invalid="ignore"):
            ours = BACKENDS[name].roi_align_forward(X, ROIS, (2, 3), 0.5, -1, True)
        theirs = tv.roi_align(x, rois, (2, 3), 0.5, -1, True).numpy()
        # float32 sums of a few bilinear terms in another order: a few ulps of values ~3
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5, equal_nan=True)


@pytest.mark.parametrize("op", ["roi_align", "roi_warp"])
def test_max_modes_never_take_a_nan(backend, op):
    """A NaN first sample used to win (the running max started from it); now a bin's max is
    its largest non-NaN sample, and a bin of only NaN is -FLT_MAX with no gradient."""
    x = np.full((1, 1, 4, 4), np.nan, np.float32)
    x[0, 0, 2:, :] = [[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]]
    rois = np.array([[0, 0, 0, 3, 3], [0, 0, 0, 3, 1]], np.float32)  # half NaN, all NaN
    args = (2, 1.0, 2, False, "max") if op == "roi_align" else (2, 1.0, 2, "max")
    fwd, bwd = getattr(backend, f"{op}_forward"), getattr(backend, f"{op}_backward")
    with np.errstate(invalid="ignore"):
        y = fwd(x, rois, *args)
        grad = bwd(x, rois, np.ones_like(y), *args)
    assert not np.isnan(y).any()
    assert (y[0, 0, 1] > 0).all() and (y[1] == np.float32(MAX_FLOOR)).all()
    assert not np.isnan(grad).any() and (grad[0, 0, :2] == 0).all()  # nothing to NaN pixels


@pytest.mark.parametrize("op", ["roi_align", "roi_warp", "roi_pool", "prroi_pool"])
@pytest.mark.parametrize("mode", ["avg", "max"])
def test_backends_agree_bitwise_on_nan(op, mode):
    """The three CPU backends: the same NaN pattern and values forward and backward (the
    fuzz suite draws such cases too; this one always runs them)."""
    if op in ("roi_pool", "prroi_pool") and mode == "max":
        pytest.skip("no pool_mode")
    x = X.astype(np.float64)
    grad = np.random.default_rng(0).standard_normal((4, 1, 3, 3))
    args = {"roi_align": (3, 1.0, 2, False, mode), "roi_warp": (3, 1.0, 2, mode),
            "roi_pool": (3, 1.0), "prroi_pool": (3, 1.0, False)}[op]  # fmt: skip
    results = {}
    for name in ("python", "numpy", "numba"):
        b = BACKENDS[name]
        with np.errstate(invalid="ignore"):
            results[name] = (
                getattr(b, f"{op}_forward")(x, ROIS.astype(np.float64), *args),
                getattr(b, f"{op}_backward")(x, ROIS.astype(np.float64), grad, *args),
            )
    for name in ("numpy", "numba"):
        fwd, bwd = results[name]
        want_fwd, want_bwd = results["python"]
        # 1e-9 in float64 (tests.conftest's): another summation order of a few terms ~3
        np.testing.assert_allclose(fwd, want_fwd, rtol=1e-9, atol=1e-9, equal_nan=True)
        for got, want in zip(bwd if isinstance(bwd, tuple) else (bwd,),
                             want_bwd if isinstance(want_bwd, tuple) else (want_bwd,),
                             strict=True):  # fmt: skip
            np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9, equal_nan=True)
