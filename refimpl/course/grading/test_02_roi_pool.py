"""Grading tests for exercise 02: RoIPool forward and backward in NumPy.

The oracle is refimpl's definition (``BACKENDS["python"]``); the argmax and the bins come
from ``refimpl.ops.geometry``, the code every backend shares.
"""

from __future__ import annotations

import numbers

import numpy as np

from refimpl.course.checks import (
    as_array,
    case,
    check_array,
    check_equal,
    check_unchanged,
    describe,
    fail,
    points,
)
from refimpl.ops import geometry
from refimpl.ops.python import roi_pool_backward as ref_backward
from refimpl.ops.python import roi_pool_forward as ref_forward

# what the CPU-time message suggests (the reference solution is far below the limit)
LIMIT_HINT = (
    "loop over RoIs and bins and take each bin's max on a NumPy slice of x, not pixel by pixel"
)


def ref_argmax(x, rois, output_size, spatial_scale=1.0):
    """The flat index h * W + w of each bin's first maximum (-1 for an empty bin)."""
    ph_n, pw_n = (output_size, output_size) if isinstance(output_size, int) else output_size
    F = x.dtype.type
    _, c, height, width = x.shape
    out = np.full((rois.shape[0], c, ph_n, pw_n), -1, np.int64)
    for r, (b, x1, y1, x2, y2) in enumerate(rois):
        sy, sx, bh, bw = geometry.pool_box(F, x1, y1, x2, y2, F(spatial_scale), ph_n, pw_n)
        for i in range(ph_n):
            h0, h1 = geometry.pool_bin(F, i, bh, sy, height)
            for j in range(pw_n):
                w0, w1 = geometry.pool_bin(F, j, bw, sx, width)
                if h1 > h0 and w1 > w0:
                    window = x[int(b), :, h0:h1, w0:w1].reshape(c, -1)
                    best = window.argmax(axis=1)
                    out[r, :, i, j] = (h0 + best // (w1 - w0)) * width + w0 + best % (w1 - w0)
    return out


def variant_forward(x, rois, output_size, spatial_scale=1.0, *, rounding=None, plus=1):
    """RoIPool as a typical bug computes it: another rounding, or exclusive box ends."""
    rounding = rounding or geometry.c_round
    ph_n, pw_n = (output_size, output_size) if isinstance(output_size, int) else output_size
    F = x.dtype.type
    _, c, height, width = x.shape
    out = np.zeros((rois.shape[0], c, ph_n, pw_n), x.dtype)
    for r, (b, *box) in enumerate(rois):
        x1, y1, x2, y2 = (rounding(v * spatial_scale) for v in box)
        bh, bw = F(max(y2 - y1 + plus, 1)) / F(ph_n), F(max(x2 - x1 + plus, 1)) / F(pw_n)
        for i in range(ph_n):
            h0, h1 = geometry.pool_bin(F, i, bh, y1, height)
            for j in range(pw_n):
                w0, w1 = geometry.pool_bin(F, j, bw, x1, width)
                if h1 > h0 and w1 > w0:
                    out[r, :, i, j] = x[int(b), :, h0:h1, w0:w1].max(axis=(1, 2))
    return out


def forward_hints(x, rois, output_size, spatial_scale):
    """Likely causes, each with what that mistake computes."""
    args = (x, rois, output_size, spatial_scale)
    return [
        (
            "Python's round() (halves to even) where RoIPool rounds as C does (halves away "
            "from zero): use c_round",
            lambda: variant_forward(*args, rounding=lambda v: int(np.round(v))),
        ),
        (
            "exclusive box ends: RoIPool's box includes its last cell (x2 - x1 + 1 wide)",
            lambda: variant_forward(*args, plus=0),
        ),
    ]


def forward_case(sub, x, rois, output_size, spatial_scale=1.0, *, argmax=False, rtol=1e-9):
    inputs = describe(
        "roi_pool_forward_argmax", x=x, rois=rois, output_size=output_size,
        spatial_scale=spatial_scale,
    )  # fmt: skip
    got = sub.roi_pool_forward_argmax(x.copy(), rois.copy(), output_size, spatial_scale)
    if not isinstance(got, tuple) or len(got) != 2:
        fail(f"roi_pool_forward_argmax must return a pair (y, argmax), got {type(got).__name__}")
    y, arg = got
    expected = ref_forward(x, rois, output_size, spatial_scale)
    hints = forward_hints(x, rois, output_size, spatial_scale)
    check_array(y, expected, "y", rtol=rtol, atol=rtol, inputs=inputs, rois=rois, hints=hints)
    if argmax:
        expected = ref_argmax(x, rois, output_size, spatial_scale)
        check_array(arg, expected, "argmax", inputs=inputs, rois=rois)


def backward_case(sub, x, rois, grad, output_size, spatial_scale=1.0):
    inputs = describe(
        "roi_pool_backward", x=x, rois=rois, grad_output=grad, output_size=output_size,
        spatial_scale=spatial_scale,
    )  # fmt: skip
    got = sub.roi_pool_backward(x.copy(), rois.copy(), grad.copy(), output_size, spatial_scale)
    expected = ref_backward(x, rois, grad, output_size, spatial_scale)
    check_array(got, expected, "grad_x", inputs=inputs)


C_ROUND_CASES = [(0.4, 0), (0.5, 1), (1.5, 2), (2.5, 3), (-0.5, -1), (-1.5, -2), (-2.5, -3),
                 (3.49, 3), (-3.51, -4), (7.0, 7), (0.0, 0)]  # fmt: skip
# (start, roi_size, pooled, size): shared pixels, 7/3-sized bins, clipping, more bins than cells
BIN_CASES = [(0, 4, 2, 10), (1, 3, 2, 10), (0, 7, 3, 7), (-2, 4, 2, 10), (8, 4, 2, 10),
             (3, 2, 5, 10), (12, 3, 2, 10), (-9, 5, 3, 10), (0, 1, 1, 1)]  # fmt: skip


def arange_map():
    return np.arange(16.0).reshape(1, 1, 4, 4)  # each pixel's value is its flat index


@points(1)
def test_c_round(sub):
    """c_round: halves away from zero, an int"""
    for v, expected in C_ROUND_CASES:
        got = sub.c_round(v)
        check_equal(got, expected, f"c_round({v})")
        if not isinstance(got, numbers.Integral):
            fail(f"c_round({v}) returned a {type(got).__name__}; return an int")


@points(2)
def test_bin_ranges(sub):
    """bin_ranges: floor/ceil bins, shared pixels, clipping to the map"""
    F = np.float64
    for start, roi_size, pooled, size in BIN_CASES:
        bin_size = F(roi_size) / F(pooled)
        expected = [geometry.pool_bin(F, p, bin_size, start, size) for p in range(pooled)]
        got = sub.bin_ranges(start, roi_size, pooled, size)
        try:
            got = [(int(lo), int(hi)) for lo, hi in got]
        except (TypeError, ValueError):
            fail(f"bin_ranges must return a list of (lo, hi) pairs, got {got!r}")
        check_equal(got, expected, f"bin_ranges({start}, {roi_size}, {pooled}, {size})")


@points(2)
def test_forward_known_answer(sub):
    """forward: a 4x4 map, square and rectangular outputs, known answers"""
    x = arange_map()
    box = np.array([[0.0, 0, 0, 3, 3]])
    y, _ = sub.roi_pool_forward_argmax(x, box, 2)
    inputs = describe("roi_pool_forward_argmax", x=x, rois=box, output_size=2)
    check_array(y, np.array([[[[5.0, 7], [13, 15]]]]), "y", inputs=inputs)
    box = np.array([[0.0, 1, 0, 2, 3]])
    y, _ = sub.roi_pool_forward_argmax(x, box, (2, 1))
    inputs = describe("roi_pool_forward_argmax", x=x, rois=box, output_size=(2, 1))
    check_array(y, np.array([[[[6.0], [14]]]]), "y", inputs=inputs)
    forward_case(sub, x, np.array([[0.0, 0.2, 0.6, 2.7, 3.4], [0, 1.2, 1.1, 1.3, 3.2]]), (3, 2))


@points(2)
def test_forward_halfway_coordinates(sub):
    """forward: corners at exact halves (C rounding, not Python's round)"""
    x, box = arange_map(), np.array([[0.0, 1, 1, 5, 5]])
    y, _ = sub.roi_pool_forward_argmax(x, box, 2, 0.5)
    inputs = describe("roi_pool_forward_argmax", x=x, rois=box, output_size=2, spatial_scale=0.5)
    hints = forward_hints(x, box, 2, 0.5)
    check_array(y, np.array([[[[10.0, 11], [14, 15]]]]), "y", inputs=inputs, hints=hints)
    x, _ = case(seed=2, n=1, c=2, h=6, w=7, k=0)
    rois = np.array([[0, 1, 3, 5, 9], [0, -1, -3, 3, 7], [0, 5, 1, 13, 11], [0, 3, 5, 7, 9.0]])
    forward_case(sub, x, rois, 2, 0.5)


@points(3)
def test_forward_random(sub):
    """forward: random maps and boxes, 2 images, 3 channels, scale 1/2, 3x2 bins"""
    for seed in (20, 120, 220):
        x, rois = case(seed=seed, n=2, c=3, h=9, w=11, k=8, spatial_scale=0.5)
        forward_case(sub, x, rois, (3, 2), 0.5)


@points(2)
def test_forward_argmax(sub):
    """forward: the argmax is h * W + w of each bin's maximum"""
    x, rois = case(seed=21, n=2, c=3, h=7, w=8, k=6, spatial_scale=0.25)
    forward_case(sub, x, rois, (2, 3), 0.25, argmax=True)


@points(1)
def test_argmax_ties(sub):
    """forward: on ties the first maximum (row-major) wins"""
    x = np.zeros((1, 2, 6, 6))
    x[0, 1, 2:4, 1:5] = 1.0  # a plateau
    rois = np.array([[0, 0.0, 0.0, 5.0, 5.0], [0, 1.2, 1.6, 4.4, 4.2]])
    forward_case(sub, x, rois, 2, argmax=True)


@points(1)
def test_forward_off_the_map(sub):
    """forward: boxes partly or entirely off the map (clipped bins, empty bins give 0 / -1)"""
    x, _ = case(seed=22, n=1, c=2, h=5, w=6, k=0)
    rois = np.array(
        [[0, 7.2, 1.0, 9.6, 3.1], [0, -4.3, -2.2, 2.2, 2.4], [0, 3.3, 3.1, 8.8, 7.7],
         [0, -9.0, 1.0, -6.0, 2.0]]
    )  # fmt: skip
    forward_case(sub, x, rois, 3, argmax=True)


@points(1)
def test_forward_no_rois(sub):
    """forward: no RoIs gives an empty [0, C, PH, PW] output"""
    x, rois = case(seed=23, n=2, c=3, h=4, w=5, k=0)
    forward_case(sub, x, rois, (2, 3), argmax=True)


@points(1)
def test_forward_float32(sub):
    """forward: float32 in, float32 out"""
    x, _ = case(seed=24, n=1, c=3, h=6, w=6, k=0, dtype="float32")
    rois = np.array([[0, 0, 0, 5, 3], [0, 2, 1, 5, 4]], np.float32)
    forward_case(sub, x, rois, 2)


@points(2)
def test_backward_known_answer(sub):
    """backward: each bin's gradient lands on its argmax pixel"""
    x = arange_map()
    grad = np.array([[[[1.0, 2], [3, 4]]]])
    box = np.array([[0.0, 0, 0, 3, 3]])
    got = sub.roi_pool_backward(x, box, grad, 2)
    expected = np.zeros((1, 1, 4, 4))
    expected.reshape(-1)[[5, 7, 13, 15]] = [1, 2, 3, 4]
    inputs = describe("roi_pool_backward", x=x, rois=box, grad_output=grad, output_size=2)
    check_array(got, expected, "grad_x", inputs=inputs)


@points(2)
def test_backward_accumulates(sub):
    """backward: gradients add up where RoIs and bins share an argmax pixel"""
    x = arange_map()
    rois = np.array([[0.0, 0, 0, 3, 3], [0.0, 0, 0, 3, 3], [0.0, 1, 1, 3, 3]])
    backward_case(sub, x, rois, np.ones((3, 1, 2, 2)), 2)
    peak = np.zeros((1, 1, 4, 4))
    peak[0, 0, 1, 1] = 1.0  # the maximum of all four (overlapping) bins of box (0, 0, 2, 2)
    backward_case(sub, peak, np.array([[0.0, 0, 0, 2, 2]]), np.ones((1, 1, 2, 2)), 2)


@points(3)
def test_backward_random(sub):
    """backward: random maps, boxes and gradients, 2 images"""
    for seed in (25, 125, 225):
        x, rois, grad = case(seed=seed, n=2, c=3, h=8, w=9, k=8, spatial_scale=0.5, grad=(2, 3))
        backward_case(sub, x, rois, grad, (2, 3), 0.5)


@points(2)
def test_backward_matches_finite_differences(sub):
    """backward: the gradient of your own forward (central finite differences)"""
    x, _ = case(seed=28, n=1, c=2, h=6, w=7, k=0)
    rois = np.array([[0, 0.6, 0.7, 5.2, 4.9], [0, 0.6, 0.7, 5.2, 4.9], [0, 2.2, 1.4, 6.3, 5.1]])
    grad = np.random.default_rng(29).normal(size=(3, 2, 3, 2)).round(3)
    got = as_array(sub.roi_pool_backward(x.copy(), rois, grad, (3, 2)), "roi_pool_backward")
    eps = 1e-7  # far below the gaps between values: no argmax changes
    numeric = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        plus, minus = x.copy(), x.copy()
        plus[idx] += eps
        minus[idx] -= eps
        up = np.sum(grad * sub.roi_pool_forward_argmax(plus, rois, (3, 2))[0])
        down = np.sum(grad * sub.roi_pool_forward_argmax(minus, rois, (3, 2))[0])
        numeric[idx] = (up - down) / (2 * eps)
    check_array(
        got,
        numeric,
        "roi_pool_backward vs finite differences of roi_pool_forward_argmax",
        rtol=1e-5,
        atol=1e-5,
        inputs=describe("roi_pool_backward", x=x, rois=rois, grad_output=grad, output_size=(3, 2)),
    )


@points(1)
def test_backward_no_rois(sub):
    """backward: no RoIs gives a zero gradient of x's shape"""
    x, rois, grad = case(seed=26, n=2, c=3, h=4, w=5, k=0, grad=(2, 2))
    backward_case(sub, x, rois, grad, 2)


@points(1)
def test_inputs_unchanged(sub):
    """forward and backward leave their inputs as they were"""
    # boxes inside the map: nothing but the inputs is tested here
    x, rois, grad = case(seed=27, n=2, c=2, h=6, w=6, k=4, spill=0.0, max_size=0.2, grad=(2, 2))
    x0, rois0, grad0 = x.copy(), rois.copy(), grad.copy()
    sub.roi_pool_forward_argmax(x, rois, 2)
    sub.roi_pool_backward(x, rois, grad, 2)
    check_unchanged(x0, x, "x")
    check_unchanged(rois0, rois, "rois")
    check_unchanged(grad0, grad, "grad_output")
