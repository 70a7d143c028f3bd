"""RoIWarp on the CPU: the box quantized once (as RoIPool does), then sampled bilinearly at
scale 1 (as RoIAlign does): the Mask R-CNN paper's Table 2c ablation. It runs on RoIAlign's
kernels (:mod:`.roi_align`)."""

from __future__ import annotations

import numpy as np
from numba import njit

from ..validate import check_roi_args
from ._compile import JIT, roi_work, threads_for, warp_box
from .roi_align import align_backward, align_forward


@njit(**JIT)
def _warp_boxes(F, rois, scale):
    """RoIWarp's one quantization (:func:`geometry.warp_box`) of every box: [K, 4]."""
    boxes = np.empty((rois.shape[0], 4), rois.dtype)
    for k in range(rois.shape[0]):
        x1, y1, x2, y2 = warp_box(F, rois[k, 1], rois[k, 2], rois[k, 3], rois[k, 4], scale)
        boxes[k, 0], boxes[k, 1], boxes[k, 2], boxes[k, 3] = x1, y1, x2, y2
    return boxes


def _quantized(a) -> np.ndarray:
    F = a.float_type
    return _warp_boxes(F, a.rois, F(a.spatial_scale))


def roi_warp_forward(x, rois, output_size, spatial_scale=1.0, sampling_ratio=-1, pool_mode="max"):
    """RoIWarp: quantize the box once, then sample bilinearly (Mask R-CNN Table 2c)."""
    a = check_roi_args(x, rois, output_size, spatial_scale, sampling_ratio, False, pool_mode)
    with threads_for(roi_work(a)):
        return align_forward(a, _quantized(a), 1.0, False)


def roi_warp_backward(
    x, rois, grad_output, output_size, spatial_scale=1.0, sampling_ratio=-1, pool_mode="max"
):
    """Gradient of :func:`roi_warp_forward` with respect to ``x``."""
    a = check_roi_args(
        x, rois, output_size, spatial_scale, sampling_ratio, False, pool_mode, grad_output
    )
    with threads_for(roi_work(a)):
        return align_backward(a, _quantized(a), 1.0, False)
