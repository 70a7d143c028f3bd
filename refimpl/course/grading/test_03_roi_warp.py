"""Grading tests for exercise 03: RoIWarp (quantize once, then bilinear sampling).

The oracle is refimpl's definition (``BACKENDS["python"]``); single bilinear samples come from
``refimpl.ops.geometry.bilinear_1d``, the rule every backend shares.
"""

from __future__ import annotations

import numpy as np

from refimpl.course.checks import (
    case,
    check_array,
    check_unchanged,
    describe,
    points,
    random_features,
    random_rois,
    ref_bilinear,
)
from refimpl.ops import geometry
from refimpl.ops.python import roi_warp_forward as ref_forward

# what the CPU-time message suggests (the reference solution is far below the limit)
LIMIT_HINT = (
    "loop over RoIs, bins and samples, and interpolate each sample for all channels at once"
)


def ref_quantize(rois, spatial_scale):
    F = rois.dtype.type
    out = rois.copy()
    for r in range(rois.shape[0]):
        out[r, 1:] = geometry.warp_box(F, *rois[r, 1:], F(spatial_scale))
    return out


def bilinear_cases(sub, features, points_yx):
    for y, x in points_yx:
        got = sub.bilinear_interpolate(features.copy(), y, x)
        what = f"bilinear_interpolate(features, y={y!r}, x={x!r})"
        check_array(
            got,
            ref_bilinear(features, y, x),
            what,
            check_dtype=False,
            inputs=describe(features=features),
        )


def forward_case(sub, x, rois, output_size, spatial_scale=1.0, sampling_ratio=-1, mode="max"):
    tol = 1e-9 if x.dtype == np.float64 else 1e-5
    expected = ref_forward(x, rois, output_size, spatial_scale, sampling_ratio, mode)
    got = sub.roi_warp_forward(
        x.copy(), rois.copy(), output_size, spatial_scale, sampling_ratio, mode
    )
    inputs = describe(
        "roi_warp_forward",
        x=x,
        rois=rois,
        output_size=output_size,
        spatial_scale=spatial_scale,
        sampling_ratio=sampling_ratio,
        pool_mode=mode,
    )
    hints = forward_hints(x, rois, expected, output_size, spatial_scale, sampling_ratio, mode)
    check_array(got, expected, "y", rtol=tol, atol=tol, inputs=inputs, rois=rois, hints=hints)


def forward_hints(x, rois, expected, output_size, spatial_scale, ratio, mode):
    """Likely causes, each with what that mistake computes."""
    F = np.float64
    half_even = rois.astype(F)  # corners already rounded half to even: c_round keeps them
    half_even[:, 1:] = np.round(half_even[:, 1:] * spatial_scale) / spatial_scale
    args = (output_size, spatial_scale, ratio, mode)
    hints = [
        (
            "Python's round() or np.round (halves to even) where RoIWarp rounds as C does "
            "(halves away from zero): use c_round",
            lambda: ref_forward(x, half_even.astype(x.dtype), *args),
        )
    ]
    if mode == "avg":
        ph, pw = (output_size, output_size) if isinstance(output_size, int) else output_size

        def summed():
            counts = []
            for r in rois:
                box = geometry.warp_box(F, *map(F, r[1:]), F(spatial_scale))
                counts.append(geometry.align_box(F, *box, F(1.0), False, ph, pw, ratio)[6])
            return expected * np.asarray(counts).reshape(-1, 1, 1, 1)

        hints.append(("avg: divide the sum of a bin's samples by their count", summed))
    return hints


@points(2)
def test_quantize_rois(sub):
    """quantize_rois: corners C-rounded on the feature map, batch index and dtype kept"""
    rois = np.array(
        [
            [0, 8.0, 24.0, 40.0, 56.0],
            [1, -8.0, -24.0, 7.9, 8.1],
            [2, 0.3, 31.99, 100.0, 8.0],
            [0, -40.0, 72.0, 88.0, -56.0],
        ]
    )
    for scale in (1 / 16, 0.5, 1.0):
        check_array(
            sub.quantize_rois(rois.copy(), scale),
            ref_quantize(rois, scale),
            f"quantize_rois(rois, {scale})",
            inputs=describe(rois=rois),
        )
    rois32 = rois.astype(np.float32)
    check_array(sub.quantize_rois(rois32, 0.25), ref_quantize(rois32, 0.25), "float32 rois")


@points(2)
def test_bilinear_known_answers(sub):
    """bilinear_interpolate: pixel values at pixel points, blends between, all channels"""
    v = np.arange(12.0).reshape(3, 4)
    bilinear_cases(sub, v, [(1.0, 2.0), (0.5, 0.25), (1.75, 2.5), (0.0, 0.0), (2.0, 3.0)])
    rng = np.random.default_rng(30)
    bilinear_cases(sub, rng.normal(size=(3, 5, 6)), [(1.3, 4.2), (3.9, 0.1)])


@points(2)
def test_bilinear_borders(sub):
    """bilinear_interpolate: the border repeats within one pixel, 0 beyond"""
    rng = np.random.default_rng(31)
    v = rng.normal(size=(2, 4, 5))
    bilinear_cases(
        sub,
        v,
        [(-0.5, 2.2), (1.5, -0.9), (-1.0, -1.0), (3.4, 1.1), (3.99, 4.5), (4.0, 5.0),
         (-1.01, 2.0), (2.0, 5.2), (4.3, -0.2), (0.7, -3.0)],
    )  # fmt: skip


@points(1)
def test_bilinear_random(sub):
    """bilinear_interpolate: random points on and around a random map"""
    rng = np.random.default_rng(32)
    v = rng.normal(size=(3, 6, 7))
    ys = rng.uniform(-1.5, 6.5, 30)
    xs = rng.uniform(-1.5, 7.5, 30)
    bilinear_cases(sub, v, list(zip(ys.tolist(), xs.tolist(), strict=True)))


@points(2)
def test_forward_known_answer(sub):
    """forward: a 4x4 ramp, one box, max and avg, known answers"""
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    one = np.array([[0.0, 0, 0, 3, 3]])
    check_array(sub.roi_warp_forward(x, one, 1, 1.0, 1), [[[[7.5]]]], "max of one sample")
    check_array(sub.roi_warp_forward(x, one, 1, 1.0, 2, "avg"), [[[[7.5]]]], "avg of 2x2")
    check_array(sub.roi_warp_forward(x, one, 1, 1.0, 2, "max"), [[[[11.25]]]], "max of 2x2")


@points(1)
def test_forward_halfway(sub):
    """forward: corners at exact halves are C-rounded before sampling"""
    x, _ = case(seed=33, n=1, c=2, h=6, w=7, k=0)
    rois = np.array([[0, 1, 3, 5, 9], [0, -1, -3, 3, 7], [0, 5, 1, 13, 11], [0, 3, 5, 7, 9.0]])
    forward_case(sub, x, rois, 2, 0.5, 2, "avg")


@points(3)
def test_forward_random_max(sub):
    """forward: random maps and boxes, max pooling, adaptive sampling, scale 1/4"""
    for seed in (34, 134):
        x, rois = case(seed=seed, n=2, c=3, h=8, w=9, k=6, spatial_scale=0.25)
        forward_case(sub, x, rois, (3, 2), 0.25)


@points(2)
def test_forward_random_avg(sub):
    """forward: random maps and boxes, average pooling, adaptive sampling, scale 1/2"""
    for seed in (35, 135):
        x, rois = case(seed=seed, n=2, c=3, h=8, w=9, k=6, spatial_scale=0.5)
        forward_case(sub, x, rois, (2, 3), 0.5, mode="avg")


@points(1)
def test_forward_sampling_ratio(sub):
    """forward: a fixed sampling_ratio (2 and 3), both modes"""
    x, rois = case(seed=36, n=2, c=2, h=7, w=7, k=5, spatial_scale=0.5)
    for ratio in (2, 3):
        for mode in ("max", "avg"):
            forward_case(sub, x, rois, 2, 0.5, ratio, mode)


@points(1)
def test_forward_outside_samples(sub):
    """forward max: a sample outside the map counts as 0 (negative maps, boxes off the map)"""
    rng = np.random.default_rng(37)
    x = -1.0 - random_features(rng, 1, 2, 5, 5) ** 2  # every value negative
    rois = np.array([[0, 3.0, 3.0, 9.0, 9.0], [0, -6.0, 1.0, 1.0, 3.0], [0, 7.0, 7.0, 9.0, 8.0]])
    forward_case(sub, x, rois, 3, 1.0, 2, "max")
    forward_case(sub, x, rois, 3, 1.0, 2, "avg")


@points(1)
def test_forward_small_boxes(sub):
    """forward: boxes smaller than a cell, or inverted, become 1x1 cells"""
    x, _ = case(seed=38, n=1, c=2, h=6, w=6, k=0)
    rois = np.array([[0, 2.2, 2.2, 2.4, 2.3], [0, 4.0, 3.0, 1.0, 1.0], [0, 3.0, 1.0, 3.0, 5.0]])
    forward_case(sub, x, rois, 2, 1.0, -1, "avg")
    forward_case(sub, x, rois, (1, 3), 1.0, -1, "max")


@points(1)
def test_forward_no_rois(sub):
    """forward: no RoIs gives an empty [0, C, PH, PW] output"""
    x, rois = case(seed=39, n=2, c=3, h=4, w=5, k=0)
    forward_case(sub, x, rois, (2, 3))


@points(1)
def test_forward_float32(sub):
    """forward: float32 in, float32 out"""
    x, rois = case(seed=40, n=2, c=3, h=6, w=7, k=4, spatial_scale=0.5, dtype="float32")
    forward_case(sub, x, rois, 2, 0.5, -1, "max")
    forward_case(sub, x, rois, 2, 0.5, 2, "avg")


@points(1)
def test_inputs_unchanged(sub):
    """quantize_rois and the forward leave their inputs as they were"""
    rng = np.random.default_rng(41)
    x = random_features(rng, 2, 2, 6, 6)
    # boxes inside the map: nothing but the inputs is tested here
    rois = random_rois(rng, 4, 2, 6, 6, 0.5, spill=0.0, max_size=0.2)
    x0, rois0 = x.copy(), rois.copy()
    sub.quantize_rois(rois, 0.5)
    sub.roi_warp_forward(x, rois, 2, 0.5)
    check_unchanged(x0, x, "x")
    check_unchanged(rois0, rois, "rois")
