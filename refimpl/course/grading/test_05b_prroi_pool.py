"""Grading tests for exercise 05b: Precise RoI Pooling (tent integrals, the bins of one axis,
the forward).

The oracle is refimpl's definition (``BACKENDS["python"]``) and its shared geometry
(``refimpl.ops.geometry``: ``tent_antiderivative``, ``tent_integral``, ``prroi_box``).
"""

from __future__ import annotations

import numpy as np

from refimpl.course.checks import (
    as_array,
    check_array,
    check_unchanged,
    converted,
    describe,
    fail,
    offset_hint,
    points,
    random_features,
    random_rois,
)
from refimpl.ops import geometry
from refimpl.ops.python import prroi_pool_forward as ref_forward

# what the CPU-time message suggests (the reference solution is far below the limit)
LIMIT_HINT = (
    "integrate each bin with the closed-form tent integrals (a few pixels per bin), for all "
    "channels at once"
)

F = np.float64


def scalar(got, what: str) -> float:
    """``got`` as a float, or a failure saying what it was instead."""
    arr = as_array(got, what)
    if arr.size != 1:
        fail(f"{what} must return one number, got an array of shape {arr.shape}")
    return float(arr.reshape(()))


def check_scalar(got: float, expected: float, what: str, tol: float = 1e-12) -> None:
    """``what`` is the call itself: the message says to make it again."""
    if not abs(got - expected) <= tol * max(1.0, abs(expected)):
        fail(f"{what}: expected {expected:.12g}, got {got:.12g}\n  to reproduce:\n    {what}")


def ref_axis_weights(start, bin_size, pooled, size):
    w = np.zeros((pooled, size))
    for p in range(pooled):
        lo, hi = F(start) + F(p) * F(bin_size), F(start) + F(p + 1) * F(bin_size)
        for i in range(size):
            w[p, i] = geometry.tent_integral(F, lo, hi, i)
    return w


def forward_case(sub, x, rois, output_size, spatial_scale=1.0, aligned=False):
    tol = 1e-9 if x.dtype == np.float64 else 1e-5
    expected = ref_forward(x, rois, output_size, spatial_scale, aligned)
    got = sub.prroi_pool_forward(x.copy(), rois.copy(), output_size, spatial_scale, aligned)
    inputs = describe(
        "prroi_pool_forward",
        x=x,
        rois=rois,
        output_size=output_size,
        spatial_scale=spatial_scale,
        aligned=aligned,
    )
    hints = forward_hints(x, rois, expected, output_size, spatial_scale, aligned)
    check_array(got, expected, "y", rtol=tol, atol=tol, inputs=inputs, rois=rois, hints=hints)


def forward_hints(x, rois, expected, output_size, spatial_scale, aligned):
    """Likely causes, each with what that mistake computes."""
    ph, pw = (output_size, output_size) if isinstance(output_size, int) else output_size
    bins = [geometry.prroi_box(F, *map(F, r[1:]), F(spatial_scale), aligned, ph, pw) for r in rois]

    def summed():  # the integral, not divided by the bin's area
        area = [bin_h * bin_w for _, _, bin_h, bin_w in bins]
        return expected * np.asarray(area).reshape(-1, 1, 1, 1)

    def stretched():  # boxes under a pixel stretched to one, as RoIAlign's
        moved = rois.astype(np.float64).copy()
        for k in (1, 2):
            size = np.maximum(moved[:, k + 2] - moved[:, k], 1.0 / spatial_scale)
            moved[:, k + 2] = moved[:, k] + size
        return ref_forward(x, moved.astype(rois.dtype), output_size, spatial_scale, aligned)

    args = (output_size, spatial_scale, aligned)
    return [
        offset_hint(lambda moved: ref_forward(x, moved, *args), rois, spatial_scale, aligned),
        ("the bin's integral not divided by the bin's area (its width times its height)",
         summed),
        ("boxes under a pixel stretched to one pixel (as RoIAlign's): PrRoIPool keeps their "
         "size", stretched),
    ]  # fmt: skip


def random_case(rng, k, n, c, h, w, scale, **kwargs):
    return random_features(rng, n, c, h, w), random_rois(rng, k, n, h, w, scale, **kwargs)


@points(2)
def test_tent_antiderivative(sub):
    """tent_antiderivative: the four pieces, continuous where they meet"""
    rng = np.random.default_rng(70)
    cases = [-5.0, -1.0, -0.75, -0.5, -0.25, 0.0, 0.25, 0.5, 0.9, 1.0, 1.5, 30.0]
    cases += rng.uniform(-1.5, 1.5, 30).tolist()
    for u in cases:
        got = scalar(sub.tent_antiderivative(u), f"tent_antiderivative({u!r})")
        check_scalar(got, geometry.tent_antiderivative(F, F(u)), f"tent_antiderivative({u!r})")


@points(2)
def test_tent_integral(sub):
    """tent_integral: whole, partial, disjoint and random intervals, several pixels"""
    rng = np.random.default_rng(71)
    cases = [(-1.0, 1.0, 0), (-5.0, 5.0, 3), (0.0, 0.5, 0), (0.5, 1.5, 1), (1.5, 2.5, 0)]
    cases += [(2.2, 2.2, 2), (-0.4, 0.3, 0), (3.9, 7.1, 5), (3.9, 7.1, 8)]
    for _ in range(30):
        a = rng.uniform(-2, 8)
        cases.append((a, a + rng.uniform(0, 3), int(rng.integers(0, 7))))
    for a, b, i in cases:
        what = f"tent_integral({a!r}, {b!r}, {i})"
        got = scalar(sub.tent_integral(a, b, i), what)
        check_scalar(got, geometry.tent_integral(F, F(a), F(b), i), what)


@points(2)
def test_axis_weights(sub):
    """axis_weights: the tent integral of every bin and pixel, bins partly off the map"""
    rng = np.random.default_rng(72)
    cases = [(0.0, 1.0, 2, 4), (-2.0, 10.0, 1, 5), (7.0, 1.0, 1, 5), (-0.7, 1.3, 3, 6)]
    cases += [
        (rng.uniform(-3, 6), rng.uniform(0.1, 3), int(rng.integers(1, 5)), 7) for _ in range(6)
    ]
    for start, bin_size, pooled, size in cases:
        what = f"axis_weights({start!r}, {bin_size!r}, {pooled}, {size})"
        got = sub.axis_weights(start, bin_size, pooled, size)
        check_array(
            got,
            ref_axis_weights(start, bin_size, pooled, size),
            what,
            check_dtype=False,
            inputs=f"to reproduce:\n    {what}",
        )


@points(2)
def test_forward_known_answers(sub):
    """forward: a one-pixel map (tents over [-1, 1]^2) and a linear map (bin centre values)"""
    x = np.full((1, 1, 1, 1), 2.0)
    for box, value in [((-1, -1, 1, 1), 0.5), ((0, -1, 1, 1), 0.5), ((0, 0, 0.5, 0.5), 1.125)]:
        rois = np.array([[0.0, *box]])
        check_array(
            sub.prroi_pool_forward(x.copy(), rois, 1),
            np.array([[[[value]]]]),
            f"prroi_pool_forward(one pixel of value 2, box {box}, 1)",
            inputs=describe("prroi_pool_forward", x=x, rois=rois, output_size=1),
        )
    yy, xx = np.mgrid[0:7, 0:8]
    linear = (0.5 * yy - 0.25 * xx + 1.0)[None, None]
    for aligned in (False, True):
        off = 0.5 if aligned else 0.0
        rois = np.array([[0, 1.3 + off, 0.7 + off, 6.1 + off, 5.9 + off]])
        cy = 0.7 + (np.arange(2) + 0.5) * 5.2 / 2
        cx = 1.3 + (np.arange(3) + 0.5) * 4.8 / 3
        expected = (0.5 * cy[:, None] - 0.25 * cx[None, :] + 1.0)[None, None]
        check_array(
            sub.prroi_pool_forward(linear.copy(), rois, (2, 3), 1.0, aligned),
            expected,
            f"prroi_pool_forward(linear map, box (1.3, 0.7, 6.1, 5.9), (2, 3), aligned={aligned})",
            inputs=describe(
                "prroi_pool_forward",
                x=linear,
                rois=rois,
                output_size=(2, 3),
                spatial_scale=1.0,
                aligned=aligned,
            ),
            hints=forward_hints(linear, rois, expected, (2, 3), 1.0, aligned),
        )


@points(3)
def test_forward_random(sub):
    """forward, not aligned: random maps and boxes, scale 1/2"""
    rng = np.random.default_rng(73)
    for _ in range(2):
        x, rois = random_case(rng, 6, 2, 3, 8, 9, 0.5)
        forward_case(sub, x, rois, (3, 2), 0.5)


@points(2)
def test_forward_random_aligned(sub):
    """forward, aligned: random maps and boxes, scale 1/4"""
    rng = np.random.default_rng(74)
    for _ in range(2):
        x, rois = random_case(rng, 6, 2, 3, 8, 9, 0.25)
        forward_case(sub, x, rois, (2, 3), 0.25, True)


@points(1)
def test_forward_small_boxes(sub):
    """forward: boxes smaller than a pixel are not stretched (unlike RoIAlign)"""
    rng = np.random.default_rng(75)
    x = random_features(rng, 1, 2, 6, 6)
    rois = np.array([[0, 2.2, 1.3, 2.6, 1.5], [0, 3.1, 3.3, 3.8, 4.2], [0, 0.4, 4.6, 0.5, 4.9]])
    for aligned in (False, True):
        forward_case(sub, x, rois, 2, 1.0, aligned)


@points(1)
def test_forward_off_the_map(sub):
    """forward: boxes partly or wholly off the map (the tents fall to 0 beyond one pixel)"""
    rng = np.random.default_rng(76)
    x = random_features(rng, 1, 2, 5, 5)
    rois = np.array(
        [[0, 3.0, 3.0, 9.0, 9.0], [0, -6.0, 1.0, 1.0, 3.0], [0, 7.0, 7.0, 9.0, 8.0],
         [0, -2.5, -2.5, 6.5, 6.5]]
    )  # fmt: skip
    for aligned in (False, True):
        forward_case(sub, x, rois, 3, 1.0, aligned)


@points(1)
def test_forward_zero_area(sub):
    """forward: zero-size and inverted boxes give 0"""
    rng = np.random.default_rng(77)
    x = random_features(rng, 1, 2, 5, 5)
    rois = np.array([[0, 1.0, 1.0, 1.0, 3.0], [0, 3.0, 3.0, 1.0, 1.0], [0, 2.0, 4.0, 3.5, 2.5]])
    for aligned in (False, True):
        forward_case(sub, x, rois, 2, 1.0, aligned)


@points(1)
def test_forward_no_rois_and_float32(sub):
    """forward: no RoIs gives an empty output; float32 in, float32 out"""
    rng = np.random.default_rng(78)
    x = random_features(rng, 2, 3, 4, 5)
    forward_case(sub, x, np.zeros((0, 5)), 2)
    x, rois = random_case(rng, 4, 2, 3, 6, 7, 0.5)
    forward_case(sub, converted(x, np.float32), converted(rois, np.float32), 2, 0.5)


@points(1)
def test_inputs_unchanged(sub):
    """the forward leaves its inputs as they were"""
    rng = np.random.default_rng(79)
    x, rois = random_case(rng, 4, 2, 2, 6, 6, 0.5)
    x0, rois0 = x.copy(), rois.copy()
    sub.prroi_pool_forward(x, rois, 2, 0.5, True)
    check_unchanged(x0, x, "x")
    check_unchanged(rois0, rois, "rois")
