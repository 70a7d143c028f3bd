"""Grading tests for exercise 05: RoIAlign backward and a finite-difference gradient checker.

The oracle is refimpl's definition (``BACKENDS["python"]``) and its shared geometry.
"""

from __future__ import annotations

import numpy as np

from refimpl.course.checks import (
    as_array,
    case,
    check_array,
    check_unchanged,
    describe,
    fail,
    points,
    random_features,
    random_rois,
)
from refimpl.ops import geometry
from refimpl.ops.python import roi_align_backward as ref_backward
from refimpl.ops.python import roi_align_forward as ref_forward

# what the CPU-time message suggests (the reference solution is far below the limit)
LIMIT_HINT = (
    "loop over RoIs, bins and samples, and scatter each sample's four weights for all "
    "channels at once (np.add.at)"
)

GIVENS = {"refimpl.ops.geometry": "*"}  # exercise 5 gives the sampling grid (align_box)


def ref_weight_map(y, x, height, width):
    """The [H, W] map of the weights with which bilinear interpolation at (y, x) reads pixels."""
    F = np.float64
    out = np.zeros((height, width))
    in_y, y0, y1, wy0, wy1 = geometry.bilinear_1d(F, F(y), height)
    in_x, x0, x1, wx0, wx1 = geometry.bilinear_1d(F, F(x), width)
    if in_y and in_x:
        for yy, wy in ((y0, wy0), (y1, wy1)):
            for xx, wx in ((x0, wx0), (x1, wx1)):
                out[yy, xx] += wy * wx
    return out


def corners_case(sub, y, x, height, width):
    what = f"bilinear_corners({y!r}, {x!r}, {height}, {width})"
    got = sub.bilinear_corners(y, x, height, width)
    if not isinstance(got, (tuple, list)) or len(got) != 3:
        fail(f"{what} must return three arrays (ys, xs, ws), got {type(got).__name__}")
    ys, xs, ws = (as_array(v, what).reshape(-1) for v in got)
    if not (ys.shape == xs.shape == ws.shape == (4,)):
        fail(
            f"{what}: ys, xs and ws must each hold 4 values, got {ys.shape}, {xs.shape}, {ws.shape}"
        )
    if ys.dtype.kind not in "iu" or xs.dtype.kind not in "iu":
        fail(f"{what}: ys and xs must be integer arrays, got {ys.dtype} and {xs.dtype}")
    if ys.min() < 0 or ys.max() >= height or xs.min() < 0 or xs.max() >= width:
        fail(f"{what}: pixel indices outside the {height}x{width} map: ys={ys}, xs={xs}")
    weights = np.zeros((height, width))
    np.add.at(weights, (ys, xs), ws)
    check_array(weights, ref_weight_map(y, x, height, width), f"{what}: the weight of each pixel")


def backward_case(
    sub, x, rois, grad, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False, mode="avg"
):
    tol = 1e-9 if x.dtype == np.float64 else 1e-5
    args = (output_size, spatial_scale, sampling_ratio, aligned, mode)
    expected = ref_backward(x, rois, grad, *args)
    got = sub.roi_align_backward(x.copy(), rois.copy(), grad.copy(), *args)
    inputs = describe(
        "roi_align_backward",
        x=x,
        rois=rois,
        grad_output=grad,
        output_size=output_size,
        spatial_scale=spatial_scale,
        sampling_ratio=sampling_ratio,
        aligned=aligned,
        pool_mode=mode,
    )
    hints = backward_hints(x, rois, grad, *args)
    check_array(got, expected, "grad_x", rtol=tol, atol=tol, inputs=inputs, hints=hints)


def backward_hints(x, rois, grad, output_size, spatial_scale, ratio, aligned, mode):
    """Likely causes, each with what that mistake computes."""
    F = np.float64
    moved = rois.astype(F)  # the box as the missing (or extra) offset samples it
    moved[:, 1:] += (0.5 if aligned else -0.5) / spatial_scale
    args = (output_size, spatial_scale, ratio, aligned, mode)
    hints = [
        (
            "the half-pixel offset: aligned=True samples at x * spatial_scale - 0.5 "
            "(pixel centres), aligned=False without that shift",
            lambda: ref_backward(x, moved.astype(x.dtype), grad, *args),
        )
    ]
    if mode == "avg":
        ph, pw = (output_size, output_size) if isinstance(output_size, int) else output_size

        def summed():  # each RoI's gradient times its sample count
            out = np.zeros(x.shape)
            for r in range(rois.shape[0]):
                box = map(F, rois[r, 1:])
                count = geometry.align_box(F, *box, F(spatial_scale), aligned, ph, pw, ratio)[6]
                out += count * ref_backward(x, rois[r : r + 1], grad[r : r + 1], *args)
            return out

        hints.append(("avg: divide each sample's gradient by the sample count", summed))
    return hints


def random_backward_case(rng, k, n, c, h, w, scale, out, **kwargs):
    """``(x, rois, grad_output)``; from a seed (an int), the call feedback prints."""
    if isinstance(rng, int):
        grad = (out, out) if isinstance(out, int) else tuple(out)
        return case(seed=rng, n=n, c=c, h=h, w=w, k=k, spatial_scale=scale, grad=grad, **kwargs)
    x = random_features(rng, n, c, h, w)
    rois = random_rois(rng, k, n, h, w, scale, **kwargs)
    ph, pw = (out, out) if isinstance(out, int) else out
    return x, rois, rng.normal(size=(k, c, ph, pw))


@points(2)
def test_bilinear_corners(sub):
    """bilinear_corners: pixels and weights inside and at the clamped borders"""
    rng = np.random.default_rng(50)
    cases = [(1.25, 2.5), (0.0, 0.0), (3.5, -0.5), (2.99, 4.2), (-0.7, 1.5), (3.0, 4.0)]
    ys, xs = rng.uniform(-1, 4, 20).tolist(), rng.uniform(-1, 5, 20).tolist()
    cases += list(zip(ys, xs, strict=True))
    for y, x in cases:
        corners_case(sub, y, x, 4, 5)


@points(1)
def test_bilinear_corners_outside(sub):
    """bilinear_corners: a sample more than a pixel off the map reads nothing"""
    for y, x in [(-1.5, 2.0), (1.0, -1.01), (4.2, 1.0), (2.0, 5.5), (-3.0, 9.0)]:
        corners_case(sub, y, x, 4, 5)


@points(2)
def test_backward_known_answer(sub):
    """backward avg: one bin of 2x2 samples spreads 1, 2, 1 / 2, 4, 2 / 1, 2, 1 sixteenths"""
    x = np.zeros((1, 1, 4, 4))
    got = sub.roi_align_backward(x, np.array([[0.0, 0, 0, 2, 2]]), np.ones((1, 1, 1, 1)), 1, 1.0, 2)
    expected = np.zeros((1, 1, 4, 4))
    expected[0, 0, :3, :3] = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]]) / 16
    check_array(got, expected, "roi_align_backward(zeros, box (0, 0, 2, 2), ones, 1, 1.0, 2)")


@points(3)
def test_backward_random(sub):
    """backward avg, not aligned, adaptive: random maps, boxes and gradients, scale 1/2"""
    for seed in (51, 151):
        x, rois, grad = random_backward_case(seed, 6, 2, 3, 8, 9, 0.5, (3, 2))
        backward_case(sub, x, rois, grad, (3, 2), 0.5)


@points(2)
def test_backward_random_aligned(sub):
    """backward avg, aligned, adaptive: random maps, boxes and gradients, scale 1/4"""
    for seed in (52, 152):
        x, rois, grad = random_backward_case(seed, 6, 2, 3, 8, 9, 0.25, (2, 3), min_size=1.5)
        backward_case(sub, x, rois, grad, (2, 3), 0.25, aligned=True)


@points(1)
def test_backward_sampling_ratio(sub):
    """backward avg: fixed sampling_ratio 1 and 2, aligned or not"""
    x, rois, grad = random_backward_case(53, 5, 1, 2, 7, 7, 0.5, 2, min_size=1.5)
    for ratio in (1, 2):
        for aligned in (False, True):
            backward_case(sub, x, rois, grad, 2, 0.5, ratio, aligned)


@points(2)
def test_backward_max(sub):
    """backward max: the winning sample's corners get the whole gradient"""
    x, rois, grad = random_backward_case(54, 6, 2, 3, 8, 8, 0.5, 3, min_size=1.5)
    for aligned in (False, True):
        backward_case(sub, x, rois, grad, 3, 0.5, -1, aligned, "max")
    backward_case(sub, x, rois, grad, 3, 0.5, 2, True, "max")


@points(1)
def test_backward_accumulates(sub):
    """backward: gradients of overlapping RoIs add up"""
    rng = np.random.default_rng(55)
    x = random_features(rng, 1, 2, 6, 6)
    rois = np.array([[0, 0.4, 0.7, 9.3, 8.8]] * 2 + [[0, 2.1, 1.3, 7.7, 6.2]])
    grad = rng.normal(size=(3, 2, 2, 2))
    for mode in ("avg", "max"):
        backward_case(sub, x, rois, grad, 2, 0.5, 2, True, mode)


@points(1)
def test_backward_off_the_map(sub):
    """backward: samples off the map and empty grids pass no gradient"""
    rng = np.random.default_rng(56)
    x = random_features(rng, 1, 2, 5, 5)
    rois = np.array(
        [[0, 3.0, 3.0, 9.0, 9.0], [0, -6.0, 1.0, 1.0, 3.0], [0, 7.0, 7.0, 9.0, 8.0],
         [0, 4.0, 3.0, 1.0, 1.0]]
    )  # fmt: skip
    grad = rng.normal(size=(4, 2, 3, 3))
    for aligned in (False, True):
        for mode in ("avg", "max"):
            backward_case(sub, x, rois, grad, 3, 1.0, -1, aligned, mode)


@points(1)
def test_backward_no_rois_and_float32(sub):
    """backward: no RoIs gives zeros; float32 in, float32 out"""
    rng = np.random.default_rng(57)
    x = random_features(rng, 2, 3, 4, 5)
    backward_case(sub, x, np.zeros((0, 5)), np.zeros((0, 3, 2, 2)), 2)
    x, rois, grad = random_backward_case(rng, 4, 2, 3, 6, 7, 0.5, 2, min_size=1.5)
    backward_case(
        sub, x.astype(np.float32), rois.astype(np.float32), grad.astype(np.float32), 2, 0.5
    )


@points(2)
def test_numerical_gradient(sub):
    """numerical_gradient: known gradients of elementwise and linear functions, any shape"""
    rng = np.random.default_rng(58)
    x = rng.normal(size=(2, 3))
    g = rng.normal(size=(2, 3))
    got = sub.numerical_gradient(lambda t: t**2, x.copy(), g)
    check_array(got, 2 * x * g, "numerical_gradient(t**2)", rtol=1e-4, atol=1e-4, check_dtype=False)
    a = rng.normal(size=(5, 24))
    x = rng.normal(size=(1, 2, 3, 4))
    g = rng.normal(size=(5,))
    got = sub.numerical_gradient(lambda t: a @ t.reshape(-1), x.copy(), g)
    expected = (g @ a).reshape(x.shape)
    check_array(got, expected, "numerical_gradient(a @ x)", rtol=1e-4, atol=1e-4, check_dtype=False)


@points(1)
def test_numerical_gradient_is_central(sub):
    """numerical_gradient: central differences (error O(eps^2), not O(eps))"""
    x = np.array([0.5, 1.0, -2.0, 3.0])
    g = np.ones(4)
    got = sub.numerical_gradient(lambda t: t**3, x.copy(), g, 1e-3)
    check_array(
        got, 3 * x**2, "numerical_gradient(t**3, eps=1e-3)", rtol=0, atol=1e-4, check_dtype=False
    )


@points(1)
def test_numerical_gradient_restores_x(sub):
    """numerical_gradient: x is exactly as it was afterwards"""
    rng = np.random.default_rng(59)
    x = rng.normal(size=(3, 4))
    x0 = x.copy()
    sub.numerical_gradient(lambda t: np.sin(t), x, np.ones((3, 4)))
    check_unchanged(x0, x, "x")


@points(2)
def test_gradient_check(sub):
    """gradient_check: tiny for refimpl's backward, large for wrong ones"""
    rng = np.random.default_rng(60)
    x = random_features(rng, 1, 2, 4, 5)
    rois = np.array([[0, 0.3, 0.6, 9.7, 7.9], [0, 4.1, 2.2, 8.3, 7.1]])
    grad = rng.normal(size=(2, 2, 2, 2))
    args = (2, 0.5, 2, True, "avg")

    def forward(t):
        return ref_forward(t, rois, *args)

    def right(t, gy):
        return ref_backward(t, rois, gy, *args)

    err = sub.gradient_check(forward, right, x.copy(), grad)
    if not float(err) < 1e-6:
        fail(f"gradient_check of refimpl's own backward gave {err!r}; expected < 1e-6")
    for name, wrong in [
        ("twice the gradient", lambda t, gy: 2 * right(t, gy)),
        ("the gradient of another box", lambda t, gy: ref_backward(t, rois[::-1], gy, *args)),
    ]:
        err = sub.gradient_check(forward, wrong, x.copy(), grad)
        if not float(err) > 0.1:
            fail(f"gradient_check of a wrong backward ({name}) gave {err!r}; expected > 0.1")


@points(1)
def test_inputs_unchanged(sub):
    """the backward leaves its inputs as they were"""
    x, rois, grad = random_backward_case(61, 4, 2, 2, 6, 6, 0.5, 2, spill=0.0, max_size=0.2)
    x0, rois0, grad0 = x.copy(), rois.copy(), grad.copy()
    sub.roi_align_backward(x, rois, grad, 2, 0.5, -1, True, "max")
    check_unchanged(x0, x, "x")
    check_unchanged(rois0, rois, "rois")
    check_unchanged(grad0, grad, "grad_output")
