"""``refimpl::roi_align``, registered by hand: the one operator written out in full.

Lesson 8 takes this file apart: ``torch.library.custom_op`` (the schema comes from the type
hints, defaults included), a kernel per device, a fake kernel for tracing, a backward that
is an operator too (so that the backward traces), and the autograd formula tying them
together. The other RoI operators are registered the same way, from one table
(:mod:`refimpl.ops.torch.registry`), with the same kernel helpers.

torchvision's argument order (``torch.ops.torchvision.roi_align``'s seven arguments call
this operator unchanged), plus ``pool_mode`` (Mask R-CNN Table 2c), default ``"avg"``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import cpu_kernels, cuda_kernels
from .checks import check_roi_tensors, check_sampling_ratio
from .cpu_kernels import cpu_backend


@torch.library.custom_op("refimpl::roi_align", mutates_args=(), device_types="cpu")
def _roi_align_op(
    input: Tensor,
    rois: Tensor,
    spatial_scale: float,
    pooled_height: int,
    pooled_width: int,
    sampling_ratio: int,
    aligned: bool,
    pool_mode: str = "avg",
) -> Tensor:
    """RoIAlign forward (Mask R-CNN sec. 3) on the CPU: tensors -> NumPy views -> the numba
    kernel -> a tensor."""
    check_sampling_ratio(sampling_ratio)
    return cpu_kernels.roi_forward(
        cpu_backend().roi_align_forward,
        input,
        rois,
        (pooled_height, pooled_width),
        spatial_scale,
        sampling_ratio,
        aligned,
        pool_mode,
    )


# The dispatcher drops trailing arguments equal to their defaults: every kernel repeats them.
@_roi_align_op.register_kernel("cuda")
def _roi_align_cuda(
    input,
    rois,
    spatial_scale,
    pooled_height,
    pooled_width,
    sampling_ratio,
    aligned,
    pool_mode="avg",
):
    check_sampling_ratio(sampling_ratio)
    return cuda_kernels.roi_forward(
        "roi_align_forward",
        input,
        rois,
        (pooled_height, pooled_width),
        spatial_scale,
        sampling_ratio,
        aligned,
        pool_mode,
    )


def _fake_roi_forward(input: Tensor, rois: Tensor, pooled_height, pooled_width) -> Tensor:
    """Shapes only: ``[K, C, PH, PW]`` in input's dtype, on input's device."""
    check_roi_tensors(input, rois)
    return input.new_empty((rois.shape[0], input.shape[1], pooled_height, pooled_width))


@_roi_align_op.register_fake
def _(input, rois, _spatial_scale, pooled_height, pooled_width, *_params):
    # The scale and the parameters after the pooled size do not change the output's shape.
    return _fake_roi_forward(input, rois, pooled_height, pooled_width)


@torch.library.custom_op("refimpl::roi_align_backward", mutates_args=(), device_types="cpu")
def _roi_align_backward_op(
    grad: Tensor,
    input: Tensor | None,
    rois: Tensor,
    spatial_scale: float,
    pooled_height: int,
    pooled_width: int,
    batch_size: int,
    channels: int,
    height: int,
    width: int,
    sampling_ratio: int,
    aligned: bool,
    pool_mode: str,
) -> Tensor:
    """RoIAlign's input gradient: a bilinear-weighted scatter of ``grad`` (Mask R-CNN sec. 3).

    ``input`` is needed by ``pool_mode="max"`` only (to find the winning samples again); the
    average needs just its shape, so autograd does not keep the feature map alive for it.
    """
    check_sampling_ratio(sampling_ratio)
    return cpu_kernels.roi_backward(
        cpu_backend().roi_align_backward,
        grad,
        input,
        rois,
        (batch_size, channels, height, width),
        (pooled_height, pooled_width),
        spatial_scale,
        sampling_ratio,
        aligned,
        pool_mode,
    )


@_roi_align_backward_op.register_kernel("cuda")
def _roi_align_backward_cuda(
    grad,
    input,
    rois,
    spatial_scale,
    pooled_height,
    pooled_width,
    batch_size,
    channels,
    height,
    width,
    sampling_ratio,
    aligned,
    pool_mode,
):
    check_sampling_ratio(sampling_ratio)
    return cuda_kernels.roi_backward(
        "roi_align_backward",
        grad,
        input,
        rois,
        (batch_size, channels, height, width),
        (pooled_height, pooled_width),
        spatial_scale,
        sampling_ratio,
        aligned,
        pool_mode,
    )


def _fake_roi_backward(grad: Tensor, batch_size, channels, height, width) -> Tensor:
    return grad.new_empty((batch_size, channels, height, width))


@_roi_align_backward_op.register_fake
def _(grad, _input, _rois, _spatial_scale, _pooled_height, _pooled_width, batch_size, channels,
      height, width, *_params):  # fmt: skip
    return _fake_roi_backward(grad, batch_size, channels, height, width)


def _roi_align_setup_context(ctx, inputs, output) -> None:  # noqa: ARG001  (torch passes output=)
    input, rois, spatial_scale, ph, pw, sampling_ratio, aligned, pool_mode = inputs
    ctx.params = (spatial_scale, ph, pw, sampling_ratio, aligned, pool_mode)
    ctx.input_shape = tuple(input.shape)
    # max mode recomputes its argmax from the input; the average needs only the shape.
    ctx.save_for_backward(input if pool_mode == "max" else None, rois)


def _roi_align_backward(ctx, grad):
    if not ctx.needs_input_grad[0]:
        return (None,) * 8
    input, rois = ctx.saved_tensors
    spatial_scale, ph, pw, sampling_ratio, aligned, pool_mode = ctx.params
    grad_input = torch.ops.refimpl.roi_align_backward.default(
        grad, input, rois, spatial_scale, ph, pw, *ctx.input_shape, sampling_ratio, aligned,
        pool_mode,
    )  # fmt: skip
    return (grad_input,) + (None,) * 7  # no gradient to the boxes or the parameters


_roi_align_op.register_autograd(_roi_align_backward, setup_context=_roi_align_setup_context)
