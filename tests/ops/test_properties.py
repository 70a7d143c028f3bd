"""Properties that must hold on every backend, independent of any implementation detail."""

from __future__ import annotations

import math

import numpy as np
import pytest

from refimpl.ops import BACKENDS
from tests.conftest import CPU_BACKENDS, assert_close


def _c_round(v: float) -> int:
    """C's round (half away from zero), written independently of refimpl."""
    return int(math.copysign(math.floor(abs(v) + 0.5), v))


def _random_boxes(rng, n, low, high, min_size, max_size, batch=1):
    xy = rng.uniform(low, high - max_size, size=(n, 2))
    wh = rng.uniform(min_size, max_size, size=(n, 2))
    b = rng.integers(0, batch, size=(n, 1))
    return np.concatenate([b, xy, xy + wh], axis=1)


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [1, 2, 3, -1])
def test_roi_align_of_a_linear_map_is_the_bin_centre_value(backend, aligned, sampling_ratio):
    """Bilinear interpolation reproduces a linear function exactly, and the samples of a bin
    are symmetric about its centre, so avg RoIAlign returns f(bin centre)."""
    rng = np.random.default_rng(1)
    height, width = 9, 11
    a, b, c = 0.7, -1.3, 2.0
    yy, xx = np.mgrid[0:height, 0:width]
    x = (a * yy + b * xx + c)[None, None].astype(np.float64)
    offset = 0.5 if aligned else 0.0
    # Boxes whose samples all lie in [0, H-1] x [0, W-1] (no clamping), at least 1 pixel wide.
    boxes = _random_boxes(rng, 6, 0.0 + offset, min(height, width) - 1 + offset, 1.0, 6.0)
    ph, pw = 3, 2
    y = backend.roi_align_forward(x, boxes, (ph, pw), 1.0, sampling_ratio, aligned)
    for k, (_, x1, y1, x2, y2) in enumerate(boxes):
        bin_h, bin_w = (y2 - y1) / ph, (x2 - x1) / pw
        for i in range(ph):
            for j in range(pw):
                cy = y1 - offset + (i + 0.5) * bin_h
                cx = x1 - offset + (j + 0.5) * bin_w
                assert y[k, 0, i, j] == pytest.approx(a * cy + b * cx + c, abs=1e-9)


def test_roi_pool_of_a_monotone_ramp_picks_the_last_pixel_of_each_bin(backend):
    rng = np.random.default_rng(2)
    height, width = 12, 10
    yy, xx = np.mgrid[0:height, 0:width]
    x = (yy * width + xx)[None, None].astype(np.float64)  # increasing along y and x
    boxes = _random_boxes(rng, 8, -2, 13, 0.0, 9.0)
    scale, ph, pw = 0.75, 3, 4
    y = backend.roi_pool_forward(x, boxes, (ph, pw), scale)
    for k, (_, x1, y1, x2, y2) in enumerate(boxes):
        sx, sy = _c_round(x1 * scale), _c_round(y1 * scale)
        rw = max(_c_round(x2 * scale) - sx + 1, 1)
        rh = max(_c_round(y2 * scale) - sy + 1, 1)
        for i in range(ph):
            h_end = min(max(math.ceil((i + 1) * rh / ph) + sy, 0), height)
            h_start = min(max(math.floor(i * rh / ph) + sy, 0), height)
            for j in range(pw):
                w_end = min(max(math.ceil((j + 1) * rw / pw) + sx, 0), width)
                w_start = min(max(math.floor(j * rw / pw) + sx, 0), width)
                if h_end <= h_start or w_end <= w_start:
                    assert y[k, 0, i, j] == 0
                else:
                    assert y[k, 0, i, j] == x[0, 0, h_end - 1, w_end - 1]


@pytest.mark.parametrize("pool_mode", ["avg", "max"])
@pytest.mark.parametrize("scale", [1.0, 0.5, 0.25])
def test_roi_warp_is_roi_align_of_the_quantized_box(backend, pool_mode, scale):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 3, 8, 9))
    boxes = _random_boxes(rng, 7, -4 / scale, 12 / scale, 0.0, 6 / scale, batch=2)
    quantized = boxes.copy()
    quantized[:, 1:] = [[_c_round(v * scale) for v in row] for row in boxes[:, 1:]]
    y = backend.roi_warp_forward(x, boxes, (2, 3), scale, 2, pool_mode)
    expected = backend.roi_align_forward(x, quantized, (2, 3), 1.0, 2, False, pool_mode)
    assert_close(y, expected)
    g = rng.normal(size=y.shape)
    assert_close(
        backend.roi_warp_backward(x, boxes, g, (2, 3), scale, 2, pool_mode),
        backend.roi_align_backward(x, quantized, g, (2, 3), 1.0, 2, False, pool_mode),
    )


def test_empty_roi_set_gives_empty_output_and_zero_gradient(backend):
    x = np.ones((2, 3, 5, 5), np.float32)
    rois = np.zeros((0, 5), np.float32)
    for name, kwargs in [
        ("roi_align", {}),
        ("roi_align", {"pool_mode": "max"}),
        ("roi_pool", {}),
        ("roi_warp", {}),
    ]:
        y = getattr(backend, f"{name}_forward")(x, rois, (2, 4), **kwargs)
        assert y.shape == (0, 3, 2, 4) and y.dtype == np.float32
        g = getattr(backend, f"{name}_backward")(x, rois, y, (2, 4), **kwargs)
        assert g.shape == x.shape and g.dtype == np.float32 and not g.any()


def test_outputs_keep_the_input_dtype_and_rois_may_differ(backend):
    x = np.random.default_rng(4).normal(size=(1, 2, 6, 6)).astype(np.float32)
    rois = np.array([[0, 0.3, 0.7, 4.1, 5.2]], np.float64)
    for fn in ("roi_align_forward", "roi_pool_forward", "roi_warp_forward"):
        assert getattr(backend, fn)(x, rois, 2).dtype == np.float32


def test_linearity_of_the_backward(backend):
    """Every backward is linear in grad_output (the argmax depends on x only)."""
    rng = np.random.default_rng(5)
    x = rng.permutation(2 * 2 * 7 * 6).reshape(2, 2, 7, 6).astype(np.float64)
    rois = _random_boxes(rng, 5, -2, 9, 0.5, 5, batch=2)
    g1, g2 = rng.normal(size=(2, 5, 2, 2, 3))
    for fn, kwargs in [
        ("roi_align_backward", {"sampling_ratio": 2}),
        ("roi_align_backward", {"pool_mode": "max"}),
        ("roi_pool_backward", {}),
        ("roi_warp_backward", {}),
    ]:
        f = getattr(backend, fn)
        assert_close(
            f(x, rois, 2 * g1 - g2, (2, 3), **kwargs),
            2 * f(x, rois, g1, (2, 3), **kwargs) - f(x, rois, g2, (2, 3), **kwargs),
        )


@pytest.mark.parametrize("other", [b for b in CPU_BACKENDS if b != "python"])
def test_agrees_with_the_python_definition_on_random_inputs(other):
    """Cross-backend agreement, driven by hypothesis over shapes, boxes and parameters."""
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies
    ref, impl = BACKENDS["python"], BACKENDS[other]

    @hypothesis.settings(max_examples=25, deadline=None, derandomize=True)
    @hypothesis.given(
        seed=st.integers(0, 2**31 - 1),
        dtype=st.sampled_from([np.float32, np.float64]),
        shape=st.tuples(st.integers(1, 2), st.integers(1, 3), st.integers(1, 7), st.integers(1, 7)),
        k=st.integers(0, 5),
        output_size=st.tuples(st.integers(1, 3), st.integers(1, 3)),
        scale=st.sampled_from([1.0, 0.5, 0.25, 0.3]),
        sampling_ratio=st.integers(-1, 3),
        aligned=st.booleans(),
        pool_mode=st.sampled_from(["avg", "max"]),
    )
    def check(seed, dtype, shape, k, output_size, scale, sampling_ratio, aligned, pool_mode):
        rng = np.random.default_rng(seed)
        x = rng.permutation(np.prod(shape)).reshape(shape).astype(dtype) / 7
        lo, hi = -3 / scale, (max(shape[2:]) + 3) / scale
        corners = rng.uniform(lo, hi, size=(k, 4))
        rois = np.concatenate([rng.integers(0, shape[0], (k, 1)), corners], axis=1)
        g = rng.normal(size=(k, shape[1], *output_size)).astype(dtype)
        args = (output_size, scale, sampling_ratio, aligned, pool_mode)
        assert_close(impl.roi_align_forward(x, rois, *args), ref.roi_align_forward(x, rois, *args))
        assert_close(
            impl.roi_align_backward(x, rois, g, *args), ref.roi_align_backward(x, rois, g, *args)
        )
        wargs = (output_size, scale, sampling_ratio, pool_mode)
        assert_close(impl.roi_warp_forward(x, rois, *wargs), ref.roi_warp_forward(x, rois, *wargs))
        assert_close(
            impl.roi_warp_backward(x, rois, g, *wargs), ref.roi_warp_backward(x, rois, g, *wargs)
        )
        assert_close(
            impl.roi_pool_forward(x, rois, output_size, scale),
            ref.roi_pool_forward(x, rois, output_size, scale),
        )
        assert_close(
            impl.roi_pool_backward(x, rois, g, output_size, scale),
            ref.roi_pool_backward(x, rois, g, output_size, scale),
        )
        boxes = np.sort(corners.reshape(k, 2, 2), axis=1).reshape(k, 4).astype(dtype)
        scores = rng.uniform(size=k).astype(dtype)
        np.testing.assert_array_equal(impl.nms(boxes, scores, 0.4), ref.nms(boxes, scores, 0.4))
        assert_close(impl.box_iou(boxes, boxes[::-1]), ref.box_iou(boxes, boxes[::-1]))

    check()
