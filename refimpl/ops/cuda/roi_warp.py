"""RoIWarp on the GPU: RoIAlign of the once-quantized box (Mask R-CNN Table 2c), on
RoIAlign's kernels (:mod:`.roi_align`) with ``quantize``: the box is rounded in the kernel,
so callers pass the original RoIs."""

from __future__ import annotations

from ..validate import check_roi_args
from .roi_align import sampled_backward, sampled_forward, sampled_on_host


def launch_forward(
    x, rois, out, spatial_scale, sampling_ratio, pool_mode="max", *, layout="nchw", stream=0
):
    """Launch RoIWarp's forward; contract as :func:`.roi_align.launch_forward` (there is no
    ``aligned``)."""
    params = (spatial_scale, sampling_ratio, False, pool_mode)
    return sampled_forward((x, rois, out), params, quantize=True, layout=layout, stream=stream)


def launch_backward(
    x,
    rois,
    grad_out,
    grad_x,
    spatial_scale,
    sampling_ratio,
    pool_mode="max",
    *,
    layout="nchw",
    stream=0,
):
    """Launch RoIWarp's backward; contract as :func:`.roi_align.launch_backward`."""
    params = (spatial_scale, sampling_ratio, False, pool_mode)
    arrays = (x, rois, grad_out, grad_x)
    return sampled_backward(arrays, params, quantize=True, layout=layout, stream=stream)


def roi_warp_forward(x, rois, output_size, spatial_scale=1.0, sampling_ratio=-1, pool_mode="max"):
    """RoIWarp: quantize the box once, then sample bilinearly (Mask R-CNN Table 2c)."""
    a = check_roi_args(x, rois, output_size, spatial_scale, sampling_ratio, False, pool_mode)
    return sampled_on_host(a, quantize=True)


def roi_warp_backward(
    x, rois, grad_output, output_size, spatial_scale=1.0, sampling_ratio=-1, pool_mode="max"
):
    """Gradient of RoIWarp with respect to ``x``."""
    a = check_roi_args(
        x, rois, output_size, spatial_scale, sampling_ratio, False, pool_mode, grad_output
    )
    return sampled_on_host(a, quantize=True)
