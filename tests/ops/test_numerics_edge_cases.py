"""Issue 12's silent wrong answers at the edges of the arithmetic: a subnormal-width
PrRoIPool box, and 16-bit boxes of more than 256 images."""

from __future__ import annotations

import numpy as np
import pytest

from refimpl.ops.geometry import MIN_PRROI_AREA


@pytest.mark.parametrize(
    ("dtype", "width"),
    [(np.float64, 1e-310), (np.float64, 5e-324), (np.float64, 1e-200), (np.float32, 1e-40),
     (np.float32, 1e-45), (np.float32, 1e-39)],
)  # fmt: skip
def test_prroi_pool_subnormal_width_box(backend, dtype, width):
    """A box of width 1e-310 used to give numpy an all-NaN input gradient, python NaN box
    gradients and numba a NaN forward. Its bins' area is below ``MIN_PRROI_AREA``: they pool
    to 0 with no gradient, as a zero-width box, on every backend."""
    assert width * 1.0 / 2 < MIN_PRROI_AREA  # (2 bins a side, a box 1 high: area w / 4)
    x = np.arange(16, dtype=dtype).reshape(1, 1, 4, 4)
    rois = np.array([[0, 0.0, 0.0, width, 2.0], [0, 1.0, 0.0, 1.0 + width, 1.0]], dtype)
    grad = np.ones((2, 1, 2, 2), dtype)
    y = backend.prroi_pool_forward(x, rois, 2, 1.0, False)
    grad_x, grad_rois = backend.prroi_pool_backward(x, rois, grad, 2, 1.0, False)
    np.testing.assert_array_equal(y, 0)
    np.testing.assert_array_equal(grad_x, 0)
    np.testing.assert_array_equal(grad_rois, 0)


torch = pytest.importorskip("torch")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("fn", ["roi_align", "roi_pool", "roi_warp", "prroi_pool"])
def test_sixteen_bit_box_lists_of_many_images(dtype, fn):
    """The 257th image's batch index is 256 in bfloat16 (257 is not representable; float16
    fails past 2048): each image's RoI must pool that image, here a map filled with its index
    (integers up to 2100: exact in float32, where 16-bit inputs are computed)."""
    import refimpl.ops.torch as ops

    n = 2100 if dtype == torch.float16 else 300
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 4, 4).contiguous()
    boxes = [torch.tensor([[0.0, 0.0, 3.0, 3.0]], dtype=dtype) for _ in range(n)]
    y = getattr(ops, fn)(x, boxes, 1, 1.0)
    # bilinear and tent weights sum to 1 within a few float32 ulps (relative 1e-6 with
    # margin); the wrong image would be off by at least 1 / 2100 = 5e-4, relatively
    want = torch.arange(n, dtype=torch.float32)
    torch.testing.assert_close(y.flatten(), want, rtol=1e-5, atol=1e-5)
    rois = ops.convert_boxes_to_roi_format(boxes)
    assert rois.dtype == torch.float32 and torch.equal(rois[:, 0], torch.arange(n).float())
