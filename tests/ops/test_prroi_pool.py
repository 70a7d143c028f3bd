"""Precise RoI Pooling (IoU-Net): exact integrals, convergence of RoIAlign to it, gradients
to the input and to the box."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from refimpl.ops import BACKENDS
from refimpl.ops.geometry import tent_integral
from tests.conftest import CPU_BACKENDS, assert_close

PRROI_BACKENDS = [b for b in CPU_BACKENDS if hasattr(BACKENDS[b], "prroi_pool_forward")]


@pytest.fixture(params=PRROI_BACKENDS)
def prroi(request):
    return BACKENDS[request.param]


def test_every_cpu_backend_has_prroi_pool():
    assert PRROI_BACKENDS == list(CPU_BACKENDS)


def test_tent_integrals_by_hand():
    f = np.float64
    assert tent_integral(f, 0.0, 0.5, 0) == pytest.approx(0.375)  # 1/2 - (1/2)^2/2... of a tent
    assert tent_integral(f, -1.0, 1.0, 0) == pytest.approx(1.0)  # the whole tent
    assert tent_integral(f, -5.0, 5.0, 3) == pytest.approx(1.0)
    assert tent_integral(f, 1.5, 2.5, 0) == 0.0  # disjoint
    assert tent_integral(f, 0.5, 1.5, 1) == pytest.approx(0.75)  # symmetric middle part


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_single_pixel_map(prroi, dtype):
    # f = 2 * tent(y) * tent(x): the integral over [-1, 1]^2 is 2, the area 4.
    x = np.full((1, 1, 1, 1), 2.0, dtype)
    y = prroi.prroi_pool_forward(x, np.array([[0, -1, -1, 1, 1]], dtype), 1)
    np.testing.assert_allclose(y, [[[[0.5]]]], rtol=1e-6)
    # over [0, 1] x [-1, 1]: half of it, over an area of 2.
    y = prroi.prroi_pool_forward(x, np.array([[0, 0, -1, 1, 1]], dtype), 1)
    np.testing.assert_allclose(y, [[[[0.5]]]], rtol=1e-6)
    # over [0, 0.5]^2: (3/8)^2 * 2 / (1/4).
    y = prroi.prroi_pool_forward(x, np.array([[0, 0, 0, 0.5, 0.5]], dtype), 1)
    np.testing.assert_allclose(y, [[[[9 / 32 * 4]]]], rtol=1e-6)


def test_constant_map_over_whole_pixels(prroi):
    x = np.full((1, 2, 5, 6), 3.0)
    y = prroi.prroi_pool_forward(x, np.array([[0, 0, 0, 5, 4.0], [0, 1, 2, 3, 3.0]]), (2, 3))
    np.testing.assert_allclose(y, 3.0)


@pytest.mark.parametrize("aligned", [False, True])
def test_linear_map_gives_the_bin_centre_value(prroi, aligned):
    yy, xx = np.mgrid[0:7, 0:8]
    x = (0.5 * yy - 0.25 * xx + 1.0)[None, None]
    off = 0.5 if aligned else 0.0
    box = np.array([[0, 1.3 + off, 0.7 + off, 6.1 + off, 5.9 + off]])
    y = prroi.prroi_pool_forward(x, box, (2, 3), aligned=aligned)
    for i in range(2):
        for j in range(3):
            cy = 0.7 + (i + 0.5) * 5.2 / 2
            cx = 1.3 + (j + 0.5) * 4.8 / 3
            assert y[0, 0, i, j] == pytest.approx(0.5 * cy - 0.25 * cx + 1.0, abs=1e-12)


def test_zero_area_and_inverted_boxes_give_zero(prroi):
    x = np.ones((1, 1, 4, 4))
    boxes = np.array([[0, 1, 1, 1, 3.0], [0, 3, 3, 1, 1.0]])
    y = prroi.prroi_pool_forward(x, boxes, 2)
    np.testing.assert_array_equal(y, 0.0)
    gx, gr = prroi.prroi_pool_backward(x, boxes, np.ones((2, 1, 2, 2)), 2)
    assert not gx.any() and not gr.any()


def test_roi_align_converges_to_prroi_pool_as_samples_grow():
    """avg RoIAlign with n x n samples is a midpoint rule for the same integral: away from
    the border it converges to PrRoIPool, the error falling as n grows."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 3, 12, 12))
    boxes = np.array([[0, 2.3, 1.7, 9.4, 8.2], [0, 4.1, 3.3, 7.9, 9.6]])
    exact = BACKENDS["python"].prroi_pool_forward(x, boxes, 3)
    errors = [
        np.abs(BACKENDS["numba"].roi_align_forward(x, boxes, 3, 1.0, n, False) - exact).max()
        for n in (1, 2, 4, 8, 16, 32, 64)
    ]
    assert all(b < a for a, b in itertools.pairwise(errors)), errors
    # about second order (a midpoint rule on a piecewise-smooth integrand): 4x per doubling
    # on average, so 6 doublings take the error below 1/1000 of the single-sample one.
    assert errors[-1] < 1e-3 * errors[0], errors


def _numeric_box_gradient(f, rois, eps=1e-6):
    grad = np.zeros_like(rois)
    for k in range(rois.shape[0]):
        for j in range(1, 5):
            plus, minus = rois.copy(), rois.copy()
            plus[k, j] += eps
            minus[k, j] -= eps
            grad[k, j] = (f(plus) - f(minus)) / (2 * eps)
    return grad


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_gradients_to_input_and_box_match_finite_differences(prroi, aligned, scale):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 2, 6, 7))
    # off the lattice: no bin edge within eps of a pixel centre (a kink of the integral)
    rois = np.array(
        [[0, 1.31, 0.73, 4.22, 3.91], [1, -0.62, 2.13, 3.37, 6.44], [0, 5.53, 4.41, 7.87, 6.17]]
    )
    rois[:, 1:] /= scale
    grad_out = rng.normal(size=(3, 2, 2, 3))

    def loss(xx, rr):
        return np.sum(prroi.prroi_pool_forward(xx, rr, (2, 3), scale, aligned) * grad_out)

    gx, gr = prroi.prroi_pool_backward(x, rois, grad_out, (2, 3), scale, aligned)
    assert gr.shape == rois.shape and not gr[:, 0].any()
    np.testing.assert_allclose(gr, _numeric_box_gradient(lambda r: loss(x, r), rois), atol=1e-6)
    numeric = np.zeros_like(x)
    flat = x.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + 1e-6
        plus = loss(x, rois)
        flat[i] = old - 1e-6
        minus = loss(x, rois)
        flat[i] = old
        numeric.reshape(-1)[i] = (plus - minus) / 2e-6
    np.testing.assert_allclose(gx, numeric, atol=1e-7)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_backends_agree(dtype):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 3, 9, 8)).astype(dtype)
    xy = rng.uniform(-3, 9, size=(6, 2))
    rois = np.concatenate([rng.integers(0, 2, (6, 1)), xy, xy + rng.uniform(-1, 6, (6, 2))], 1)
    g = rng.normal(size=(6, 3, 2, 3)).astype(dtype)
    ref = BACKENDS["python"]
    for name in PRROI_BACKENDS:
        impl = BACKENDS[name]
        for aligned in (False, True):
            args = ((2, 3), 0.5, aligned)
            assert_close(
                impl.prroi_pool_forward(x, rois, *args), ref.prroi_pool_forward(x, rois, *args)
            )
            for a, b in zip(
                impl.prroi_pool_backward(x, rois, g, *args),
                ref.prroi_pool_backward(x, rois, g, *args),
                strict=True,
            ):
                assert_close(a, b, dtype=dtype)
