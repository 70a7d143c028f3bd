"""Known answers worked out by hand, for every op and mode, on every CPU backend.

The maps are tiny so each expected value can be checked with pencil and paper; the
derivation is in the comment beside it.
"""

from __future__ import annotations

import numpy as np
import pytest

# v[y, x] = 4y + x on a 4x4 map: linear, so bilinear samples are easy to evaluate.
RAMP = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)
# A 2x2 map that is not linear: bilinear interpolation mixes all four values.
SQUARE = np.array([[1.0, 2.0], [3.0, 5.0]]).reshape(1, 1, 2, 2)


def rois(*boxes, batch=0):
    return np.array([(batch, *b) for b in boxes], dtype=np.float64).reshape(-1, 5)


def bilinear(v, y, x):
    """Hand-written bilinear interpolation for points strictly inside a 2x2 map."""
    return (
        (1 - y) * (1 - x) * v[0, 0]
        + (1 - y) * x * v[0, 1]
        + y * (1 - x) * v[1, 0]
        + y * x * v[1, 1]
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
class TestRoIAlignAvg:
    def test_aligned_box_on_pixel_centres(self, backend, dtype):
        # aligned: box [0.5, 2.5] -> [0, 2] in pixel-index space; one bin, 2x2 samples at
        # 0.5 and 1.5 on each axis; the mean of 4y + x over them is 4*1 + 1 = 5.
        y = backend.roi_align_forward(
            RAMP.astype(dtype), rois((0.5, 0.5, 2.5, 2.5)), 1, aligned=True
        )
        np.testing.assert_allclose(y, [[[[5.0]]]])
        assert y.dtype == dtype

    def test_not_aligned_same_box_shifts_by_half_a_pixel(self, backend, dtype):
        # not aligned: [0.5, 2.5] stays [0.5, 2.5]; samples at 1 and 2 -> 4*1.5 + 1.5 = 7.5.
        y = backend.roi_align_forward(RAMP.astype(dtype), rois((0.5, 0.5, 2.5, 2.5)), 1)
        np.testing.assert_allclose(y, [[[[7.5]]]])

    def test_single_sample_between_four_pixels(self, backend, dtype):
        # box [0, 1]^2, one sample at (0.5, 0.5): (1 + 2 + 3 + 5) / 4.
        y = backend.roi_align_forward(SQUARE.astype(dtype), rois((0, 0, 1, 1)), 1, sampling_ratio=1)
        np.testing.assert_allclose(y, [[[[2.75]]]])

    def test_two_by_two_bins(self, backend, dtype):
        # box [0, 2]^2 on the ramp, 2x2 bins of 1 pixel, one sample each at the bin centre
        # (0.5 and 1.5): values 4y + x there.
        y = backend.roi_align_forward(RAMP.astype(dtype), rois((0, 0, 2, 2)), 2, sampling_ratio=1)
        np.testing.assert_allclose(y[0, 0], [[2.5, 3.5], [6.5, 7.5]])

    def test_samples_more_than_one_pixel_outside_count_as_zero(self, backend, dtype):
        # box [-3, 1]^2: one bin of 4, 2x2 samples at -2 and 0 per axis; only (0, 0) is inside
        # (-2 < -1), so the mean is v[0, 0] / 4 = 0.25.
        y = backend.roi_align_forward(
            SQUARE.astype(dtype), rois((-3, -3, 1, 1)), 1, sampling_ratio=2
        )
        np.testing.assert_allclose(y, [[[[0.25]]]])

    def test_within_one_pixel_outside_repeats_the_border(self, backend, dtype):
        # box [-1, 0]^2: one sample at (-0.5, -0.5), clamped to (0, 0): v[0, 0] = 1.
        y = backend.roi_align_forward(
            SQUARE.astype(dtype), rois((-1, -1, 0, 0)), 1, sampling_ratio=1
        )
        np.testing.assert_allclose(y, [[[[1.0]]]])
        # box [1.2, 2.0]^2 is stretched to 1x1 (not aligned): sample at 1.7 >= H - 1 -> v[1, 1].
        y = backend.roi_align_forward(
            SQUARE.astype(dtype), rois((1.2, 1.2, 2, 2)), 1, sampling_ratio=1
        )
        np.testing.assert_allclose(y, [[[[5.0]]]])

    def test_wholly_outside_gives_zero(self, backend, dtype):
        y = backend.roi_align_forward(SQUARE.astype(dtype), rois((10, 10, 12, 12)), 2)
        np.testing.assert_array_equal(y, np.zeros((1, 1, 2, 2)))

    def test_zero_size_box(self, backend, dtype):
        # aligned: a zero-size box has an adaptive grid of ceil(0) = 0 samples -> 0.
        box = rois((1.5, 1.5, 1.5, 1.5))
        y = backend.roi_align_forward(RAMP.astype(dtype), box, 1, aligned=True)
        np.testing.assert_array_equal(y, [[[[0.0]]]])
        # not aligned: it is stretched to 1x1 -> one sample at (2, 2): 4*2 + 2 = 10.
        y = backend.roi_align_forward(RAMP.astype(dtype), box, 1)
        np.testing.assert_allclose(y, [[[[10.0]]]])

    def test_inverted_box(self, backend, dtype):
        # aligned: a negative size -> an empty adaptive grid -> 0 (torchvision's CPU kernel
        # crashes here); with a fixed grid the samples walk backwards from the start: one
        # sample at 2.5 - 0.5 + (-1)/2 = 1.5 on each axis -> 4*1.5 + 1.5 = 7.5.
        box = rois((2.5, 2.5, 1.5, 1.5))
        y = backend.roi_align_forward(RAMP.astype(dtype), box, 1, aligned=True)
        np.testing.assert_array_equal(y, [[[[0.0]]]])
        y = backend.roi_align_forward(RAMP.astype(dtype), box, 1, aligned=True, sampling_ratio=1)
        np.testing.assert_allclose(y, [[[[7.5]]]])
        # not aligned: stretched to 1x1 from the start (2.5): sample at 3.0 -> 4*3 + 3 = 15.
        y = backend.roi_align_forward(RAMP.astype(dtype), box, 1, sampling_ratio=1)
        np.testing.assert_allclose(y, [[[[15.0]]]])

    def test_spatial_scale_and_batch_index(self, backend, dtype):
        # image box [0, 4]^2 at scale 1/2 -> feature box [0, 2]^2 on image 1 (values + 100).
        x = np.concatenate([RAMP, RAMP + 100]).astype(dtype)
        y = backend.roi_align_forward(
            x, rois((0, 0, 4, 4), batch=1), 1, spatial_scale=0.5, sampling_ratio=1
        )
        np.testing.assert_allclose(y, [[[[105.0]]]])

    def test_backward_spreads_the_gradient_bilinearly(self, backend, dtype):
        # one sample at (0.5, 0.5) reads the 4 pixels with weight 1/4 each.
        g = backend.roi_align_backward(
            SQUARE.astype(dtype),
            rois((0, 0, 1, 1)),
            np.full((1, 1, 1, 1), 2.0, dtype),
            1,
            sampling_ratio=1,
        )
        np.testing.assert_allclose(g, np.full((1, 1, 2, 2), 0.5))
        assert g.dtype == dtype

    def test_backward_divides_by_the_sample_count_and_skips_outside(self, backend, dtype):
        # box [-3, 1]^2, 4 samples of which only (0, 0) is inside: it sends 1/4 to v[0, 0].
        g = backend.roi_align_backward(
            SQUARE.astype(dtype),
            rois((-3, -3, 1, 1)),
            np.ones((1, 1, 1, 1), dtype),
            1,
            sampling_ratio=2,
        )
        np.testing.assert_allclose(g[0, 0], [[0.25, 0.0], [0.0, 0.0]])

    def test_backward_at_the_clamped_border_hits_one_pixel_fully(self, backend, dtype):
        # sample at 1.7 >= H - 1 on both axes: all four corners are v[1, 1].
        g = backend.roi_align_backward(
            SQUARE.astype(dtype),
            rois((1.2, 1.2, 2, 2)),
            np.ones((1, 1, 1, 1), dtype),
            1,
            sampling_ratio=1,
        )
        np.testing.assert_allclose(g[0, 0], [[0.0, 0.0], [0.0, 1.0]])

    def test_overlapping_rois_accumulate(self, backend, dtype):
        g = backend.roi_align_backward(
            SQUARE.astype(dtype),
            rois((0, 0, 1, 1), (0, 0, 1, 1)),
            np.ones((2, 1, 1, 1), dtype),
            1,
            sampling_ratio=1,
        )
        np.testing.assert_allclose(g, np.full((1, 1, 2, 2), 0.5))


# Bilinear samples of SQUARE at (0.25 | 0.75)^2, the 2x2 grid of the box [0, 1]^2:
SAMPLES = {(ya, xa): bilinear(SQUARE[0, 0], ya, xa) for ya in (0.25, 0.75) for xa in (0.25, 0.75)}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
class TestRoIAlignMax:
    def test_forward_is_the_largest_sample(self, backend, dtype):
        assert SAMPLES[0.75, 0.75] == 3.8125  # 1/16 + 2*3/16 + 3*3/16 + 5*9/16
        y = backend.roi_align_forward(
            SQUARE.astype(dtype), rois((0, 0, 1, 1)), 1, sampling_ratio=2, pool_mode="max"
        )
        np.testing.assert_allclose(y, [[[[3.8125]]]])
        avg = backend.roi_align_forward(
            SQUARE.astype(dtype), rois((0, 0, 1, 1)), 1, sampling_ratio=2
        )
        np.testing.assert_allclose(avg, [[[[sum(SAMPLES.values()) / 4]]]])

    def test_backward_goes_to_the_winning_sample_undivided(self, backend, dtype):
        g = backend.roi_align_backward(
            SQUARE.astype(dtype),
            rois((0, 0, 1, 1)),
            np.ones((1, 1, 1, 1), dtype),
            1,
            sampling_ratio=2,
            pool_mode="max",
        )
        # corner weights of (0.75, 0.75): (1/4, 3/4) on each axis.
        np.testing.assert_allclose(g[0, 0], [[1 / 16, 3 / 16], [3 / 16, 9 / 16]])

    def test_outside_samples_count_as_zero(self, backend, dtype):
        # on a negative map, the three outside samples (value 0) beat v[0, 0] = -1; the first
        # of them wins, and being outside it sends no gradient.
        x = -SQUARE.astype(dtype)
        box = rois((-3, -3, 1, 1))
        y = backend.roi_align_forward(x, box, 1, sampling_ratio=2, pool_mode="max")
        np.testing.assert_array_equal(y, [[[[0.0]]]])
        g = backend.roi_align_backward(
            x, box, np.ones((1, 1, 1, 1), dtype), 1, sampling_ratio=2, pool_mode="max"
        )
        np.testing.assert_array_equal(g, np.zeros_like(x))

    def test_first_sample_wins_ties(self, backend, dtype):
        # a constant map: every sample ties; the first one (iy = ix = 0, at (0.25, 0.25))
        # takes the gradient, with weights (3/4, 1/4) on each axis.
        x = np.full((1, 1, 2, 2), 3.0, dtype)
        g = backend.roi_align_backward(
            x,
            rois((0, 0, 1, 1)),
            np.ones((1, 1, 1, 1), dtype),
            1,
            sampling_ratio=2,
            pool_mode="max",
        )
        np.testing.assert_allclose(g[0, 0], [[9 / 16, 3 / 16], [3 / 16, 1 / 16]])

    def test_empty_grid_gives_zero(self, backend, dtype):
        box = rois((1.5, 1.5, 1.5, 1.5))
        y = backend.roi_align_forward(RAMP.astype(dtype), box, 1, aligned=True, pool_mode="max")
        np.testing.assert_array_equal(y, [[[[0.0]]]])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
class TestRoIPool:
    def test_quadrants(self, backend, dtype):
        # box [0, 3] inclusive -> 4 cells, 2 bins of 2: the max of each 2x2 block.
        y = backend.roi_pool_forward(RAMP.astype(dtype), rois((0, 0, 3, 3)), 2)
        np.testing.assert_array_equal(y[0, 0], [[5, 7], [13, 15]])
        assert y.dtype == dtype

    def test_c_rounding_half_away_from_zero(self, backend, dtype):
        # scale 1/2: 1 -> 0.5 -> 1 and 5 -> 2.5 -> 3 (half-even would give 0 and 2, and
        # pick v[2, 2] = 10 instead of v[3, 3] = 15).
        y = backend.roi_pool_forward(RAMP.astype(dtype), rois((1, 1, 5, 5)), 1, spatial_scale=0.5)
        np.testing.assert_array_equal(y, [[[[15.0]]]])

    def test_negative_coordinates_and_empty_bins(self, backend, dtype):
        # -3 * 0.5 = -1.5 -> -2; 1 * 0.5 -> 1: cells -2..1 (4), bins of 2: the first bin of
        # each axis lies wholly outside (clipped empty: 0); the last is rows/cols 0..1.
        y = backend.roi_pool_forward(RAMP.astype(dtype), rois((-3, -3, 1, 1)), 2, spatial_scale=0.5)
        np.testing.assert_array_equal(y[0, 0], [[0, 0], [0, 5]])

    def test_inclusive_end(self, backend, dtype):
        # a zero-size box still covers its one cell: v[1, 2] = 6.
        y = backend.roi_pool_forward(RAMP.astype(dtype), rois((2, 1, 2, 1)), 1)
        np.testing.assert_array_equal(y, [[[[6.0]]]])

    def test_bins_overlap_when_the_box_does_not_divide(self, backend, dtype):
        # 3 cells into 2 bins: floor(0) .. ceil(1.5) = [0, 2) and floor(1.5) .. ceil(3) = [1, 3).
        y = backend.roi_pool_forward(RAMP.astype(dtype), rois((0, 0, 2, 0)), (1, 2))
        np.testing.assert_array_equal(y[0, 0], [[1, 2]])
        g = backend.roi_pool_backward(
            RAMP.astype(dtype), rois((0, 0, 2, 0)), np.ones((1, 1, 1, 2), dtype), (1, 2)
        )
        np.testing.assert_array_equal(g[0, 0, 0], [0, 1, 1, 0])

    def test_backward_goes_to_the_argmax(self, backend, dtype):
        g = backend.roi_pool_backward(
            RAMP.astype(dtype),
            rois((0, 0, 3, 3)),
            np.arange(1, 5, dtype=dtype).reshape(1, 1, 2, 2),
            2,
        )
        expected = np.zeros((4, 4))
        expected[1, 1], expected[1, 3], expected[3, 1], expected[3, 3] = 1, 2, 3, 4
        np.testing.assert_array_equal(g[0, 0], expected)

    def test_ties_pick_the_first_maximum_in_row_major_order(self, backend, dtype):
        x = np.full((1, 1, 4, 4), 7.0, dtype)
        g = backend.roi_pool_backward(x, rois((1, 1, 2, 2)), np.ones((1, 1, 1, 1), dtype), 1)
        expected = np.zeros((4, 4))
        expected[1, 1] = 1
        np.testing.assert_array_equal(g[0, 0], expected)

    def test_wholly_outside(self, backend, dtype):
        y = backend.roi_pool_forward(RAMP.astype(dtype), rois((8, 8, 10, 10)), 2)
        np.testing.assert_array_equal(y, np.zeros((1, 1, 2, 2)))
        g = backend.roi_pool_backward(
            RAMP.astype(dtype), rois((8, 8, 10, 10)), np.ones((1, 1, 2, 2), dtype), 2
        )
        np.testing.assert_array_equal(g, np.zeros_like(RAMP))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
class TestRoIWarp:
    def test_one_quantization_then_bilinear(self, backend, dtype):
        # x: [0.6, 3.2] -> [1, 3], y: [0.6, 2.4] -> [1, 2]; one sample at (1.5, 2) -> 8.
        # (RoIAlign of the same box samples x at 0.6 + 1.3 = 1.9 and gives 7.9.)
        box = rois((0.6, 0.6, 3.2, 2.4))
        y = backend.roi_warp_forward(RAMP.astype(dtype), box, 1, sampling_ratio=1, pool_mode="avg")
        np.testing.assert_allclose(y, [[[[8.0]]]])
        a = backend.roi_align_forward(RAMP.astype(dtype), box, 1, sampling_ratio=1)
        np.testing.assert_allclose(a, [[[[7.9]]]], rtol=1e-6)

    def test_spatial_scale_applies_before_rounding(self, backend, dtype):
        # scale 1/2: x [1, 5] -> [0.5, 2.5] -> [1, 3]; y [1, 3] -> [0.5, 1.5] -> [1, 2].
        y = backend.roi_warp_forward(
            RAMP.astype(dtype),
            rois((1, 1, 5, 3)),
            1,
            spatial_scale=0.5,
            sampling_ratio=1,
            pool_mode="avg",
        )
        np.testing.assert_allclose(y, [[[[8.0]]]])

    def test_max_mode_is_the_default(self, backend, dtype):
        # samples at x 1.5, 2.5 and y 1.25, 1.75: the largest is 4*1.75 + 2.5 = 9.5.
        y = backend.roi_warp_forward(
            RAMP.astype(dtype), rois((0.6, 0.6, 3.2, 2.4)), 1, sampling_ratio=2
        )
        np.testing.assert_allclose(y, [[[[9.5]]]])
        g = backend.roi_warp_backward(
            RAMP.astype(dtype),
            rois((0.6, 0.6, 3.2, 2.4)),
            np.ones((1, 1, 1, 1), dtype),
            1,
            sampling_ratio=2,
        )
        expected = np.zeros((4, 4))
        # (1.75, 2.5): rows 1, 2 with weights 1/4, 3/4; cols 2, 3 with 1/2, 1/2.
        expected[1, 2] = expected[1, 3] = 1 / 8
        expected[2, 2] = expected[2, 3] = 3 / 8
        np.testing.assert_allclose(g[0, 0], expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
class TestBoxes:
    def test_box_iou(self, backend, dtype):
        a = np.array([[0, 0, 2, 2], [0, 0, 1, 1]], dtype)
        b = np.array([[1, 1, 3, 3], [0, 0, 2, 2], [5, 5, 6, 6]], dtype)
        # [0,2]^2 vs [1,3]^2: inter 1, union 7. [0,1]^2 vs [0,2]^2: 1/4. Touching: 0.
        expected = [[1 / 7, 1, 0], [0, 1 / 4, 0]]
        np.testing.assert_allclose(backend.box_iou(a, b), expected, rtol=1e-6)

    def test_nms_keeps_by_decreasing_score_and_suppresses_strictly(self, backend, dtype):
        boxes = np.array([[0, 0, 2, 2], [0, 0, 2, 1], [0, 0, 2, 2.2], [10, 10, 11, 11]], dtype)
        scores = np.array([0.5, 0.9, 0.8, 0.7], dtype)
        # IoU(box1, box0) = 2/4 = 0.5: NOT > 0.5, so box 0 survives box 1. box 2 overlaps
        # box 1 by 2/4.4 < 0.5 -> kept; then box 0 vs box 2: 4/4.4 > 0.5 -> suppressed.
        keep = backend.nms(boxes, scores, 0.5)
        np.testing.assert_array_equal(keep, [1, 2, 3])
        assert keep.dtype == np.int64
        keep = backend.nms(boxes, scores, 0.95)
        np.testing.assert_array_equal(keep, [1, 2, 3, 0])

    def test_nms_ties_keep_the_lower_index_first(self, backend, dtype):
        boxes = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [3, 3, 4, 4]], dtype)
        scores = np.array([0.5, 0.5, 0.5], dtype)
        np.testing.assert_array_equal(backend.nms(boxes, scores, 0.5), [0, 2])

    def test_nms_empty(self, backend, dtype):
        keep = backend.nms(np.zeros((0, 4), dtype), np.zeros(0, dtype), 0.5)
        assert keep.shape == (0,) and keep.dtype == np.int64
