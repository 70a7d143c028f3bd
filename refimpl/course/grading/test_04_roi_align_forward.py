"""Grading tests for exercise 04: RoIAlign forward (bilinear, grid, aligned, adaptive, avg/max).

The oracle is refimpl's definition (``BACKENDS["python"]``) and its shared geometry
(``refimpl.ops.geometry``: ``align_box``, ``sample_coord``, ``bilinear_1d``).
"""

from __future__ import annotations

import math

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
    ref_bilinear,
)
from refimpl.ops import geometry
from refimpl.ops.python import roi_align_forward as ref_forward

# what the CPU-time message suggests (the reference solution is far below the limit)
LIMIT_HINT = (
    "loop over RoIs, bins and samples, and interpolate each sample for all channels at once"
)


def ref_sample_coords(start, roi_size, pooled, sampling_ratio):
    F = np.float64
    bin_size = F(roi_size) / F(pooled)
    if sampling_ratio > 0:
        grid = sampling_ratio
    else:
        grid = max(int(math.ceil(F(roi_size) / F(pooled))), 0)
    out = np.empty((pooled, grid))
    for p in range(pooled):
        for i in range(grid):
            out[p, i] = geometry.sample_coord(F, F(start), bin_size, p, i, grid)
    return out


def forward_case(
    sub, x, rois, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False, mode="avg"
):
    tol = 1e-9 if x.dtype == np.float64 else 1e-5
    args = (output_size, spatial_scale, sampling_ratio, aligned, mode)
    expected = ref_forward(x, rois, *args)
    got = sub.roi_align_forward(x.copy(), rois.copy(), *args)
    inputs = describe(
        "roi_align_forward",
        x=x,
        rois=rois,
        output_size=output_size,
        spatial_scale=spatial_scale,
        sampling_ratio=sampling_ratio,
        aligned=aligned,
        pool_mode=mode,
    )
    hints = forward_hints(x, rois, expected, *args)
    check_array(got, expected, "y", rtol=tol, atol=tol, inputs=inputs, rois=rois, hints=hints)


def forward_hints(x, rois, expected, output_size, spatial_scale, ratio, aligned, mode):
    """Likely causes, each with what that mistake computes."""
    moved = rois.astype(np.float64)  # the box as the missing (or extra) offset samples it
    moved[:, 1:] += (0.5 if aligned else -0.5) / spatial_scale
    args = (output_size, spatial_scale, ratio, aligned, mode)
    hints = [
        (
            "the half-pixel offset: aligned=True samples at x * spatial_scale - 0.5 "
            "(pixel centres), aligned=False without that shift",
            lambda: ref_forward(x, moved.astype(x.dtype), *args),
        )
    ]
    if mode == "avg":
        ph, pw = (output_size, output_size) if isinstance(output_size, int) else output_size
        F = np.float64

        def summed():
            counts = [
                geometry.align_box(F, *map(F, r[1:]), F(spatial_scale), aligned, ph, pw, ratio)[6]
                for r in rois
            ]
            return expected * np.asarray(counts).reshape(-1, 1, 1, 1)

        hints.append(("avg: divide the sum of a bin's samples by their count", summed))
    return hints


@points(2)
def test_bilinear(sub):
    """bilinear_interpolate: known values, borders, random points, all channels"""
    rng = np.random.default_rng(40)
    v = np.arange(12.0).reshape(3, 4)
    cases = [(1.0, 2.0), (0.5, 0.25), (-0.5, 3.5), (2.6, 3.9), (-1.2, 1.0), (3.01, 0.0)]
    ys, xs = rng.uniform(-1.5, 3.5, 20).tolist(), rng.uniform(-1.5, 4.5, 20).tolist()
    cases += list(zip(ys, xs, strict=True))
    for features in (v, rng.normal(size=(2, 3, 4))):
        for y, x in cases:
            check_array(
                sub.bilinear_interpolate(features.copy(), y, x),
                ref_bilinear(features, y, x),
                f"bilinear_interpolate(features, {y!r}, {x!r})",
                check_dtype=False,
                inputs=describe(features=features),
            )


@points(2)
def test_roi_box(sub):
    """roi_box: scale, the aligned half-pixel offset, 1x1 stretching only when not aligned"""
    F = np.float64
    boxes = [(8, 16, 40, 24), (2.3, 1.1, 2.6, 1.2), (3.0, 2.0, 1.0, 2.5), (-4.4, 7.7, 20.2, 9.9)]
    for box in boxes:
        for scale in (1.0, 0.25):
            for aligned in (False, True):
                sy, sx, bh, bw, *_ = geometry.align_box(F, *map(F, box), F(scale), aligned, 1, 1, 1)
                expected = np.array([sx, sy, bw, bh])  # one bin: the bin is the box
                got = sub.roi_box(*box, scale, aligned)
                try:
                    got = np.array([float(v) for v in got])
                except (TypeError, ValueError):
                    fail(f"roi_box must return 4 numbers (start_x, start_y, roi_w, roi_h): {got!r}")
                check_array(
                    got,
                    expected,
                    f"roi_box{(*box, scale, aligned)} as (start_x, start_y, roi_w, roi_h)",
                    check_dtype=False,
                )


def sample_coords_case(sub, start, roi_size, pooled, ratio):
    what = f"sample_coords({start!r}, {roi_size!r}, {pooled}, {ratio})"
    got = as_array(sub.sample_coords(start, roi_size, pooled, ratio), what)
    check_array(got, ref_sample_coords(start, roi_size, pooled, ratio), what, check_dtype=False)


@points(1)
def test_sample_coords_fixed(sub):
    """sample_coords: a fixed sampling_ratio"""
    for args in [(0.0, 4.0, 2, 2), (1.25, 3.0, 3, 1), (-2.5, 7.3, 2, 3), (4.0, 0.5, 4, 2)]:
        sample_coords_case(sub, *args)


@points(2)
def test_sample_coords_adaptive(sub):
    """sample_coords: adaptive grids (ceil(roi_size / pooled)), empty for negative sizes"""
    for args in [(1.0, 3.0, 2, -1), (0.0, 7.2, 3, 0), (2.5, 0.5, 3, 0), (0.3, 9.0, 3, -1),
                 (1.0, -2.0, 2, -1), (0.0, 0.0, 2, 0)]:  # fmt: skip
        sample_coords_case(sub, *args)


@points(2)
def test_forward_known_answer(sub):
    """forward: aligned samples on pixel centres give quadrant means (4x4 ramp)"""
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    box = np.array([[0.0, 0, 0, 4, 4]])
    check_array(
        sub.roi_align_forward(x, box, 2, 1.0, 2, True),
        [[[[2.5, 4.5], [10.5, 12.5]]]],
        "roi_align_forward(x, box (0, 0, 4, 4), 2, sampling_ratio=2, aligned=True)",
    )
    check_array(
        sub.roi_align_forward(x, box, 1, 1.0, 4, True),
        [[[[7.5]]]],
        "roi_align_forward(x, box (0, 0, 4, 4), 1, sampling_ratio=4, aligned=True)",
    )


@points(3)
def test_forward_random(sub):
    """forward avg, not aligned, adaptive: random maps and boxes, scale 1/2, 3x2 bins"""
    for seed in (41, 141):
        x, rois = case(seed=seed, n=2, c=3, h=8, w=9, k=6, spatial_scale=0.5)
        forward_case(sub, x, rois, (3, 2), 0.5)


@points(2)
def test_forward_random_aligned(sub):
    """forward avg, aligned, adaptive: random maps and boxes, scale 1/4"""
    for seed in (42, 142):
        x, rois = case(seed=seed, n=2, c=3, h=8, w=9, k=6, spatial_scale=0.25, min_size=1.5)
        forward_case(sub, x, rois, (2, 3), 0.25, aligned=True)


@points(1)
def test_forward_sampling_ratio(sub):
    """forward: fixed sampling_ratio 1 and 2, aligned or not, avg and max"""
    x, rois = case(seed=43, n=1, c=2, h=7, w=7, k=5, spatial_scale=0.5, min_size=1.5)
    for ratio in (1, 2):
        for aligned in (False, True):
            for mode in ("avg", "max"):
                forward_case(sub, x, rois, 2, 0.5, ratio, aligned, mode)


@points(2)
def test_forward_max(sub):
    """forward max: random maps and boxes, adaptive, aligned or not"""
    x, rois = case(seed=44, n=2, c=3, h=8, w=8, k=6, spatial_scale=0.5, min_size=1.5)
    forward_case(sub, x, rois, 3, 0.5, -1, False, "max")
    forward_case(sub, x, rois, 3, 0.5, -1, True, "max")


@points(1)
def test_forward_max_outside(sub):
    """forward max: a sample outside the map counts as 0 (negative maps, boxes off the map)"""
    rng = np.random.default_rng(45)
    x = -1.0 - random_features(rng, 1, 2, 5, 5) ** 2
    rois = np.array([[0, 3.0, 3.0, 9.0, 9.0], [0, -6.0, 1.0, 1.0, 3.0], [0, 7.0, 7.0, 9.0, 8.0]])
    forward_case(sub, x, rois, 3, 1.0, 2, False, "max")
    forward_case(sub, x, rois, 3, 1.0, -1, True, "max")


@points(1)
def test_forward_malformed_boxes(sub):
    """forward: tiny and inverted boxes (1x1 when not aligned, empty grid -> 0 when aligned)"""
    x, _ = case(seed=46, n=1, c=2, h=6, w=6, k=0)
    rois = np.array([[0, 2.2, 2.2, 2.4, 2.3], [0, 4.0, 3.0, 1.0, 1.0], [0, 3.0, 1.0, 3.0, 5.0]])
    for aligned in (False, True):
        for mode in ("avg", "max"):
            forward_case(sub, x, rois, 2, 1.0, -1, aligned, mode)


@points(1)
def test_forward_no_rois(sub):
    """forward: no RoIs gives an empty [0, C, PH, PW] output"""
    x, rois = case(seed=47, n=2, c=3, h=4, w=5, k=0)
    forward_case(sub, x, rois, (2, 3))


@points(1)
def test_forward_float32(sub):
    """forward: float32 in, float32 out"""
    x, rois = case(
        seed=48, n=2, c=3, h=6, w=7, k=4, spatial_scale=0.5, dtype="float32", min_size=1.5
    )
    forward_case(sub, x, rois, 2, 0.5, -1, False, "avg")
    forward_case(sub, x, rois, 2, 0.5, 2, True, "max")


@points(1)
def test_inputs_unchanged(sub):
    """the forward leaves its inputs as they were"""
    rng = np.random.default_rng(49)
    x = random_features(rng, 2, 2, 6, 6)
    # boxes inside the map: nothing but the inputs is tested here
    rois = random_rois(rng, 4, 2, 6, 6, 0.5, spill=0.0, max_size=0.2)
    x0, rois0 = x.copy(), rois.copy()
    sub.roi_align_forward(x, rois, 2, 0.5, -1, True)
    check_unchanged(x0, x, "x")
    check_unchanged(rois0, rois, "rois")
