"""The "numpy" backend (refimpl.ops.numpy) against the "python" backend (the definition).

The vectorized geometry performs the same float operations as refimpl.ops.geometry, so the
max modes (RoIPool, RoIAlign / RoIWarp "max") must agree *bitwise* with the loops, ties
included; the averages and the gradients sum in another order and agree to rounding. The
python backend is slow: the maps and RoI counts here are small on purpose.
"""

from __future__ import annotations

import numpy as np
import pytest

from refimpl.ops import geometry as g
from refimpl.ops import numpy as V
from refimpl.ops import python as P
from tests.conftest import assert_close

DTYPES = [np.float32, np.float64]


def _awkward_boxes(height: int, width: int, scale: float) -> list[tuple[float, ...]]:
    """Boxes (x1, y1, x2, y2) in image coordinates that exercise every special case."""
    w, h, px = width / scale, height / scale, 1 / scale  # map extent and one feature pixel
    return [
        (0, 0, w, h),  # the whole map
        (-0.3 * w, -0.2 * h, 0.4 * w, 0.5 * h),  # partly outside, top left
        (0.7 * w, 0.6 * h, 1.3 * w, 1.4 * h),  # partly outside, bottom right
        (-0.5 * px, 0.2 * h, 0.3 * w, h + 0.7 * px),  # within one pixel of the border
        (1.5 * w, 1.5 * h, 2 * w, 2 * h),  # wholly outside
        (-2 * w, -2 * h, -w, -h),  # wholly outside, negative
        (0.3 * w, 0.4 * h, 0.3 * w + 0.2 * px, 0.4 * h + 0.1 * px),  # tiny
        (0.5 * w, 0.5 * h, 0.5 * w, 0.5 * h),  # zero size
        (0.6 * w, 0.7 * h, 0.2 * w, 0.3 * h),  # inverted
        (0.1 * w, 0.2 * h, 0.9 * w, 0.2 * h),  # zero height
    ]


def _rois(rng, n_images: int, height: int, width: int, scale: float, n_random: int = 6):
    """The awkward boxes plus random ones (some partly outside), with random batch indices."""
    xy = rng.uniform([-2, -2], [width, height], size=(n_random, 2)) / scale
    wh = rng.uniform(0.2, 0.8 * max(height, width), size=(n_random, 2)) / scale
    boxes = np.concatenate([_awkward_boxes(height, width, scale), np.hstack([xy, xy + wh])])
    batch = rng.integers(0, n_images, size=(len(boxes), 1))
    return np.hstack([batch, boxes])


def _inputs(dtype, seed: int, scale: float = 0.5, n_random: int = 6):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 3, 7, 9)).astype(dtype)
    return rng, x, _rois(rng, 2, 7, 9, scale, n_random).astype(dtype)


def _check_forward(y_numpy, y_python, dtype, exact: bool):
    assert y_numpy.dtype == dtype and y_numpy.shape == y_python.shape
    if exact:
        np.testing.assert_array_equal(y_numpy, y_python)
    else:
        assert_close(y_numpy, y_python, dtype)


# --- agreement with the definition on random and awkward inputs -----------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pool_mode", ["avg", "max"])
@pytest.mark.parametrize("sampling_ratio", [-1, 0, 1, 2, 3])
@pytest.mark.parametrize(("op", "aligned"), [("align", False), ("align", True), ("warp", False)])
def test_align_and_warp_agree_with_python(op, aligned, sampling_ratio, pool_mode, dtype):
    rng, x, rois = _inputs(dtype, seed=2 + sampling_ratio + 10 * aligned)
    args = ((2, 3), 0.5, sampling_ratio)
    kw = {"pool_mode": pool_mode} | ({"aligned": aligned} if op == "align" else {})
    forward, backward = f"roi_{op}_forward", f"roi_{op}_backward"
    y = getattr(P, forward)(x, rois, *args, **kw)
    _check_forward(getattr(V, forward)(x, rois, *args, **kw), y, dtype, pool_mode == "max")
    grad_out = rng.standard_normal(y.shape).astype(dtype)
    grad_v = getattr(V, backward)(x, rois, grad_out, *args, **kw)
    assert grad_v.dtype == dtype
    assert_close(grad_v, getattr(P, backward)(x, rois, grad_out, *args, **kw), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("output_size", "scale"), [((2, 3), 0.5), (1, 1.0), (4, 0.75)])
def test_roi_pool_agrees_with_python(output_size, scale, dtype):
    rng, x, rois = _inputs(dtype, seed=3, scale=scale)
    y = P.roi_pool_forward(x, rois, output_size, scale)
    _check_forward(V.roi_pool_forward(x, rois, output_size, scale), y, dtype, exact=True)
    grad_out = rng.standard_normal(y.shape).astype(dtype)
    grad_v = V.roi_pool_backward(x, rois, grad_out, output_size, scale)
    assert grad_v.dtype == dtype
    assert_close(grad_v, P.roi_pool_backward(x, rois, grad_out, output_size, scale), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_ties_go_to_the_first_maximum(dtype):
    """Small integer values on pixel-aligned samples tie everywhere: the winner must be the
    first sample (iy, then ix) or pixel (row-major), as in the loops."""
    rng = np.random.default_rng(4)
    x = rng.integers(0, 3, size=(1, 2, 6, 7)).astype(dtype)
    x[0, 1] = 1.0  # one channel constant: every sample inside ties
    rois = np.array([[0, 0, 0, 6, 5], [0, 1, 1, 5, 4], [0, -2, -1, 4, 3], [0, 3, 2, 9, 8]], dtype)
    grad_out = rng.standard_normal((4, 2, 2, 3)).astype(dtype)
    for fwd, bwd, kw in [
        ("roi_pool_forward", "roi_pool_backward", {}),
        ("roi_align_forward", "roi_align_backward", {"pool_mode": "max", "sampling_ratio": 2}),
        ("roi_warp_forward", "roi_warp_backward", {"sampling_ratio": 1}),
    ]:
        y = getattr(V, fwd)(x, rois, (2, 3), **kw)
        np.testing.assert_array_equal(y, getattr(P, fwd)(x, rois, (2, 3), **kw), err_msg=fwd)
        assert_close(
            getattr(V, bwd)(x, rois, grad_out, (2, 3), **kw),
            getattr(P, bwd)(x, rois, grad_out, (2, 3), **kw),
            dtype,
            err_msg=bwd,
        )


def test_roi_pool_with_infinite_values():
    """-inf pixels are real values, not the padding that the vectorized gather reads as
    -inf: a bin of them pools to -FLT_MAX with no gradient (torchvision's running max starts
    there, geometry.MAX_FLOOR), exactly as the loops do; +inf wins its bins."""
    x = np.zeros((1, 1, 4, 5))
    x[0, 0, :, :3] = -np.inf
    x[0, 0, 2, 4] = np.inf
    rois = np.array([[0, 0, 0, 4, 3], [0, 0, 0, 1, 3], [0, 1, 1, 4, 2]], np.float64)
    grad_out = np.arange(1.0, 1.0 + 3 * 2 * 3).reshape(3, 1, 2, 3)
    y = V.roi_pool_forward(x, rois, (2, 3))
    np.testing.assert_array_equal(y, P.roi_pool_forward(x, rois, (2, 3)))
    assert (y == g.MAX_FLOOR).any() and np.isposinf(y).any()
    np.testing.assert_array_equal(
        V.roi_pool_backward(x, rois, grad_out, (2, 3)),
        P.roi_pool_backward(x, rois, grad_out, (2, 3)),
    )


@pytest.mark.parametrize("pool_mode", ["avg", "max"])
def test_float32_large_coordinates(pool_mode):
    """Coordinates in the thousands at spatial_scale 1/64: float32 rounding of the sample
    coordinates shows in the output, so it must happen exactly as in the loops."""
    rng = np.random.default_rng(5)
    height, width, scale = 40, 50, 1 / 64
    x = rng.standard_normal((1, 2, height, width)).astype(np.float32)
    xy = rng.uniform(0, 0.8, size=(6, 2)) * [width / scale, height / scale]
    wh = rng.uniform(20, 900, size=(6, 2))
    rois = np.hstack([np.zeros((6, 1)), xy, xy + wh]).astype(np.float32)
    grad_out = rng.standard_normal((6, 2, 3, 3)).astype(np.float32)
    for aligned in (False, True):
        args = (3, scale, 2, aligned, pool_mode)
        y = P.roi_align_forward(x, rois, *args)
        _check_forward(V.roi_align_forward(x, rois, *args), y, np.float32, pool_mode == "max")
        assert_close(
            V.roi_align_backward(x, rois, grad_out, *args),
            P.roi_align_backward(x, rois, grad_out, *args),
            np.float32,
        )


# --- the vectorized geometry is the scalar geometry, bit for bit ---------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_sample_coords_match_the_scalar_formula_exactly(dtype):
    rng = np.random.default_rng(6)
    F = dtype
    differs_from_float64 = False
    for _ in range(20):
        start = F(rng.uniform(-100, 3000) / 64)
        bin_size = F(rng.uniform(0.01, 50) / 7)
        pooled, grid = int(rng.integers(1, 8)), int(rng.integers(1, 5))
        ys = V._sample_coords(F, start, bin_size, pooled, grid)
        expected = [
            [g.sample_coord(F, start, bin_size, p, i, grid) for i in range(grid)]
            for p in range(pooled)
        ]
        assert ys.dtype == dtype  # no silent float64
        np.testing.assert_array_equal(ys, np.array(expected, dtype))
        p, i = np.mgrid[0:pooled, 0:grid]
        in_float64 = float(start) + p * float(bin_size) + (i + 0.5) * float(bin_size) / grid
        differs_from_float64 |= bool((ys != in_float64.astype(dtype)).any())
    # In float32 the operation order matters: computing in float64 and rounding differs.
    assert differs_from_float64 == (dtype == np.float32)


@pytest.mark.parametrize("dtype", DTYPES)
def test_bilinear_1d_matches_the_scalar_version_exactly(dtype):
    F = dtype
    size = 5
    edges = [-1.5, -1.0001, -1.0, -0.5, -0.0, 0.0, 0.25, 1.0, 3.5, 3.999, 4.0, 4.5, 5.0, 5.001, 9]
    rng = np.random.default_rng(7)
    v = np.concatenate([np.array(edges), rng.uniform(-2, 7, 40)]).astype(dtype)
    got = V._bilinear_1d(F, v.reshape(5, -1), size)
    for name, field in zip(V.Bilinear1d._fields, got, strict=True):
        assert field.shape == (5, v.size // 5), name
    expected = [g.bilinear_1d(F, value, size) for value in v]
    for j, name in enumerate(V.Bilinear1d._fields):
        want = np.array([e[j] for e in expected])
        np.testing.assert_array_equal(getattr(got, name).ravel(), want, err_msg=name)
    assert got.w_low.dtype == dtype and got.w_high.dtype == dtype


def test_first_index_is_argmax_of_a_mask():
    rng = np.random.default_rng(8)
    for n in (1, 3, 300):  # 300 positions need more than uint8 scores
        mask = rng.random((4, n, 5)) < 0.3
        mask[0, -1] = True  # only the last
        mask[1] = False  # none: the last index
        expected = np.where(mask.any(axis=1), mask.argmax(axis=1), n - 1)
        np.testing.assert_array_equal(V._first_index(mask, axis=1), expected)


def test_avg_is_two_matrix_products():
    """The separable form: out = A @ X @ B.T / count, A and B the per-axis weights."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal((1, 2, 8, 10))
    rois = np.array([[0, 1.3, 0.7, 7.9, 6.2]])
    a = V.check_roi_args(x, rois, (3, 4), 1.0, 2, True, "avg")
    rows, y0, cols, x0, count = V._avg_matrices(a, rois[0, 1:], True)
    assert count == 4
    # every bin row has 2 samples, each with weights summing to 1
    np.testing.assert_allclose(rows.sum(axis=1), 2.0)
    np.testing.assert_allclose(cols.sum(axis=1), 2.0)
    window = x[0, :, y0 : y0 + rows.shape[1], x0 : x0 + cols.shape[1]]
    expected = np.einsum("ph,chw,qw->cpq", rows, window, cols) / count
    np.testing.assert_allclose(V.roi_align_forward(x, rois, (3, 4), 1.0, 2, True)[0], expected)


# --- empty inputs --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("op", "kwargs"),
    [
        ("roi_align", {"pool_mode": "avg"}),
        ("roi_align", {"pool_mode": "max", "aligned": True}),
        ("roi_warp", {"pool_mode": "max"}),
        ("roi_warp", {"pool_mode": "avg"}),
        ("roi_pool", {}),
    ],
)
def test_no_rois(op, kwargs, dtype):
    x = np.ones((2, 3, 5, 6), dtype)
    rois = np.zeros((0, 5), dtype)
    y = getattr(V, f"{op}_forward")(x, rois, (2, 4), **kwargs)
    assert y.shape == (0, 3, 2, 4) and y.dtype == dtype
    grad = getattr(V, f"{op}_backward")(x, rois, np.zeros((0, 3, 2, 4), dtype), (2, 4), **kwargs)
    assert grad.shape == x.shape and grad.dtype == dtype and not grad.any()


def test_every_roi_outside_or_empty():
    x = np.ones((1, 2, 4, 4), np.float32)
    rois = np.array([[0, 10, 10, 12, 12], [0, 2, 2, 2, 2], [0, 3, 3, 1, 1]], np.float32)
    grad_out = np.ones((3, 2, 2, 2), np.float32)
    for mode in ("avg", "max"):
        y = V.roi_align_forward(x, rois, 2, aligned=True, pool_mode=mode)
        np.testing.assert_array_equal(
            y, P.roi_align_forward(x, rois, 2, aligned=True, pool_mode=mode)
        )
        assert not y[0].any() and not y[1].any()
        grad = V.roi_align_backward(x, rois, grad_out, 2, aligned=True, pool_mode=mode)
        assert not grad.any()


# --- box_iou and nms -----------------------------------------------------------------------


def _random_boxes(rng, n: int, dtype):
    xy = rng.uniform(0, 40, size=(n, 2))
    boxes = np.hstack([xy, xy + rng.uniform(0, 15, size=(n, 2))])
    boxes[: n // 5] = boxes[n // 5 : 2 * (n // 5)]  # duplicates
    boxes[-1, 2:] = boxes[-1, :2]  # zero area: IoU 0 / 0 = NaN with itself
    return boxes.astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_box_iou_agrees_with_python(dtype):
    rng = np.random.default_rng(10)
    a, b = _random_boxes(rng, 30, dtype), _random_boxes(rng, 12, np.float64)
    iou = V.box_iou(a, b)
    assert iou.dtype == dtype and iou.shape == (30, 12)
    np.testing.assert_array_equal(iou, P.box_iou(a, b))  # NaN where 0 / 0, as torchvision
    assert np.isnan(V.box_iou(a[-1:], a[-1:])).all()
    assert V.box_iou(a[:0], b).shape == (0, 12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.7, 1.0])
def test_nms_agrees_with_python(threshold, dtype):
    rng = np.random.default_rng(11)
    boxes = _random_boxes(rng, 60, dtype)
    scores = rng.integers(0, 6, size=60).astype(dtype) / 5  # many ties: lower index first
    keep = V.nms(boxes, scores, threshold)
    assert keep.dtype == np.int64
    np.testing.assert_array_equal(keep, P.nms(boxes, scores, threshold))


def test_nms_ties_and_empty_input():
    boxes = np.array([[0, 0, 10, 10]] * 3 + [[20, 20, 30, 30]], np.float64)
    scores = np.array([0.5, 0.9, 0.9, 0.1])
    np.testing.assert_array_equal(V.nms(boxes, scores, 0.5), [1, 3])
    keep = V.nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 0.5)
    assert keep.shape == (0,) and keep.dtype == np.int64


def test_nms_compares_the_float32_iou_with_a_double_threshold():
    """torchvision compares the float IoU with the threshold as a double: a float32 IoU of
    0.3 is 0.30000001 > 0.3, so the second box is suppressed (torchvision keeps [0])."""
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 3]], np.float32)
    scores = np.array([1.0, 0.5], np.float32)
    np.testing.assert_array_equal(V.nms(boxes, scores, 0.3), [0])
