"""The public RoI functions, with torchvision's signatures: ``roi_align``, ``roi_pool``,
``roi_warp``, ``prroi_pool`` and ``convert_boxes_to_roi_format``.

Each converts the boxes to the ``[K, 5]`` RoI format in the arithmetic's dtype and calls its
operator (``torch.ops.refimpl.*``). As torchvision's, they can be compiled by
``torch.jit.script`` (TorchScript's types then check the arguments; the Python-level checks,
which name the bad argument, run in eager mode) and are leaves of ``torch.fx`` traces
(``torch.fx.wrap``). The operators' kernels check what a kernel needs in every mode.
The exact semantics are in ``docs/spec/roi-ops.md``.

dtypes: float32 and float64 are computed in that dtype, as torchvision does. float16 and
bfloat16 are computed in float32 and the result is cast back; boxes are never rounded to 16
bits (a coordinate such as 800.3 has no float16 value closer than 800.5, and bfloat16 has
no 257: a list of more than 256 images would pool image 256 for the 257th).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.jit.annotations import BroadcastingList2

from ..errors import TypeAssertionError, ValueAssertionError, ValueIndexError
from .checks import (
    check_float_tensor,
    check_roi_params,
    check_same_device,
    compute_dtype,
    fx_leaf,
)

__all__ = ["convert_boxes_to_roi_format", "prroi_pool", "roi_align", "roi_pool", "roi_warp"]


def _check_box_list(boxes: list[Tensor], input: Tensor | None) -> None:
    """Eager checks of a list of per-image boxes: tensors, floating, on one device."""
    if not isinstance(boxes, (list, tuple)):
        raise TypeAssertionError(
            f"boxes must be a Tensor[K, 5] or a list of Tensor[L, 4], got {type(boxes).__name__}"
        )
    for i, b in enumerate(boxes):
        if not isinstance(b, Tensor):
            raise TypeAssertionError(f"boxes[{i}] must be a torch.Tensor, got {type(b).__name__}")
        check_float_tensor(f"boxes[{i}]", b)
        if input is not None:
            check_same_device("input", input, {f"boxes[{i}]": b})
        elif i > 0:
            check_same_device("boxes[0]", boxes[0], {f"boxes[{i}]": b})


def _check_box_shapes(boxes: list[Tensor]) -> None:
    for i, b in enumerate(boxes):
        if b.dim() != 2 or b.shape[1] != 4:
            raise ValueAssertionError(f"boxes[{i}] must have shape [L, 4], got {list(b.shape)}")


def _rois_from_list(boxes: list[Tensor], dtype: torch.dtype) -> Tensor:
    """The list position in column 0, everything in ``dtype`` before it is concatenated."""
    rois: list[Tensor] = []
    for i, b in enumerate(boxes):
        b = b.to(dtype)
        rois.append(torch.cat([torch.full_like(b[:, :1], i), b], dim=1))
    return torch.cat(rois, dim=0)


def convert_boxes_to_roi_format(boxes: list[Tensor]) -> Tensor:
    """A list of ``Tensor[L_i, 4]`` (one per image) -> ``Tensor[K, 5]`` with the list position
    as the batch index in column 0, as torchvision's ``convert_boxes_to_roi_format``.

    The result has the boxes' promoted dtype, except that float16/bfloat16 give float32:
    bfloat16 has no integer above 256 to hold a batch index (float16: above 2048), where
    torchvision's rounds the 257th image's index to 256. An empty list gives ``[0, 5]``.
    """
    if not torch.jit.is_scripting():
        traced = fx_leaf(convert_boxes_to_roi_format, (boxes,))
        if traced is not None:
            return traced  # type: ignore[return-value]
    if not torch.jit.is_scripting():
        _check_box_list(boxes, None)
    _check_box_shapes(boxes)
    if len(boxes) == 0:
        return torch.zeros((0, 5))
    dtype = boxes[0].dtype
    for b in boxes:
        dtype = torch.promote_types(dtype, b.dtype)
    return _rois_from_list(boxes, compute_dtype(dtype))


def _as_rois(boxes: Tensor | list[Tensor], input: Tensor) -> Tensor:
    """``boxes`` as a ``[K, 5]`` RoI tensor in input's compute dtype (float32 for 16-bit)."""
    dtype = compute_dtype(input.dtype)
    if isinstance(boxes, Tensor):
        if not torch.jit.is_scripting():
            check_float_tensor("boxes", boxes)
            check_same_device("input", input, {"boxes": boxes})
        if boxes.dim() != 2:
            raise ValueIndexError(
                f"boxes must be a Tensor[K, 5] or a list of Tensor[L, 4], got shape "
                f"{list(boxes.shape)}"
            )
        if boxes.shape[1] != 5:
            raise ValueAssertionError(
                f"boxes must be a Tensor[K, 5] or a list of Tensor[L, 4], got shape "
                f"{list(boxes.shape)}"
            )
        return boxes.to(dtype)
    if not torch.jit.is_scripting():
        _check_box_list(boxes, input)
    _check_box_shapes(boxes)
    if len(boxes) == 0:
        return input.new_zeros((0, 5), dtype=dtype)
    return _rois_from_list(boxes, dtype)


@torch.fx.wrap
def roi_align(
    input: Tensor,
    boxes: Tensor | list[Tensor],
    output_size: BroadcastingList2[int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
    pool_mode: str = "avg",
) -> Tensor:
    """RoIAlign (Mask R-CNN, He et al. 2017, sec. 3): pool each box into a fixed grid of bins
    without quantizing it; each bin is the average (or, ``pool_mode="max"``, the maximum) of
    regularly spaced bilinear samples.

    Args:
        input: ``[N, C, H, W]`` feature map.
        boxes: ``Tensor[K, 5]`` rows ``(batch_index, x1, y1, x2, y2)``, or a list of
            ``Tensor[L, 4]``, one per image, in image coordinates.
        output_size: ``(PH, PW)`` bins, or an int for a square grid.
        spatial_scale: image -> feature map scale (1 / stride, e.g. 1/16).
        sampling_ratio: samples per bin along each axis; ``<= 0``: adaptive,
            ``ceil(roi_size / output_size)``.
        aligned: shift by half a pixel so that pixel centres sit at integer + 0.5 (detectron2's
            correction); False is the paper's (and torchvision's default) legacy behaviour.
        pool_mode: ``"avg"`` (the paper's RoIAlign) or ``"max"`` (its Table 2c ablation).

    Returns:
        ``[K, C, PH, PW]`` in input's dtype (K = 0, or N = 0 and K = 0: an empty result).
        float16/bfloat16 are computed in float32 and the result is cast back.
        Differentiable with respect to ``input`` only.
    """
    if not torch.jit.is_scripting():
        traced = fx_leaf(
            roi_align,
            (
                input,
                boxes,
                output_size,
                spatial_scale,
                sampling_ratio,
                aligned,
                pool_mode,
            ),
        )
        if traced is not None:
            return traced  # type: ignore[return-value]
    if not torch.jit.is_scripting():
        check_float_tensor("input", input, ndim=4)
        pooled, spatial_scale, sampling_ratio, aligned, pool_mode = check_roi_params(
            output_size, spatial_scale, sampling_ratio, aligned, pool_mode
        )
        output_size = list(pooled)
    rois = _as_rois(boxes, input)
    return torch.ops.refimpl.roi_align(
        input, rois, spatial_scale, output_size[0], output_size[1], sampling_ratio, aligned,
        pool_mode,
    )  # fmt: skip


@torch.fx.wrap
def roi_pool(
    input: Tensor,
    boxes: Tensor | list[Tensor],
    output_size: BroadcastingList2[int],
    spatial_scale: float = 1.0,
) -> Tensor:
    """RoIPool (Fast R-CNN, Girshick 2015, sec. 2.1): round the box to feature cells, split it
    into ``output_size`` bins rounded to whole cells, and max-pool each bin (an empty bin
    gives 0). The two roundings are the misalignment RoIAlign removes (Mask R-CNN sec. 3).

    ``input``, ``boxes``, ``output_size`` and ``spatial_scale`` as in :func:`roi_align`.
    Returns ``[K, C, PH, PW]`` in input's dtype (float16/bfloat16 computed in float32 and cast
    back); the gradient of each bin goes to its first maximum (Fast R-CNN eq. 4).
    """
    if not torch.jit.is_scripting():
        traced = fx_leaf(
            roi_pool,
            (
                input,
                boxes,
                output_size,
                spatial_scale,
            ),
        )
        if traced is not None:
            return traced  # type: ignore[return-value]
    if not torch.jit.is_scripting():
        check_float_tensor("input", input, ndim=4)
        pooled, spatial_scale, _, _, _ = check_roi_params(output_size, spatial_scale)
        output_size = list(pooled)
    rois = _as_rois(boxes, input)
    return torch.ops.refimpl.roi_pool(input, rois, spatial_scale, output_size[0], output_size[1])[0]


@torch.fx.wrap
def roi_warp(
    input: Tensor,
    boxes: Tensor | list[Tensor],
    output_size: BroadcastingList2[int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    pool_mode: str = "max",
) -> Tensor:
    """RoIWarp as the Mask R-CNN ablation uses it (sec. 3, Table 2c; Dai et al.'s MNC): the
    box is rounded to feature cells once, as in RoIPool, then sampled bilinearly without a
    second rounding, as in RoIAlign (``aligned=False``). Default ``pool_mode="max"``.

    Arguments as in :func:`roi_align`. Returns ``[K, C, PH, PW]`` in input's dtype
    (float16/bfloat16 computed in float32 and cast back).
    """
    if not torch.jit.is_scripting():
        traced = fx_leaf(
            roi_warp,
            (
                input,
                boxes,
                output_size,
                spatial_scale,
                sampling_ratio,
                pool_mode,
            ),
        )
        if traced is not None:
            return traced  # type: ignore[return-value]
    if not torch.jit.is_scripting():
        check_float_tensor("input", input, ndim=4)
        pooled, spatial_scale, sampling_ratio, _, pool_mode = check_roi_params(
            output_size, spatial_scale, sampling_ratio, pool_mode=pool_mode
        )
        output_size = list(pooled)
    rois = _as_rois(boxes, input)
    return torch.ops.refimpl.roi_warp(
        input, rois, spatial_scale, output_size[0], output_size[1], sampling_ratio, pool_mode
    )


@torch.fx.wrap
def prroi_pool(
    input: Tensor,
    boxes: Tensor | list[Tensor],
    output_size: BroadcastingList2[int],
    spatial_scale: float = 1.0,
    aligned: bool = False,
) -> Tensor:
    """Precise RoI Pooling (IoU-Net, Jiang et al. 2018, sec. 3.3): each bin is the exact
    integral of the bilinearly interpolated feature map over the bin, divided by the bin's
    area. Each pixel contributes a tent function (zero beyond one pixel), so the integral is
    a sum of pixel values times closed-form tent integrals: no quantization, no sampling
    points, and a zero-area bin gives 0.

    ``input``, ``boxes``, ``output_size``, ``spatial_scale`` and ``aligned`` as in
    :func:`roi_align`. Returns ``[K, C, PH, PW]`` in input's dtype (float16/bfloat16 computed
    in float32 and cast back). Differentiable with respect to ``input`` **and** ``boxes``
    (the output moves continuously with the box): a ``Tensor[K, 5]`` gets a ``[K, 5]``
    gradient whose column 0 (the batch index) is 0; a list of ``Tensor[L, 4]`` gets its
    ``[L, 4]`` gradients.
    """
    if not torch.jit.is_scripting():
        traced = fx_leaf(
            prroi_pool,
            (
                input,
                boxes,
                output_size,
                spatial_scale,
                aligned,
            ),
        )
        if traced is not None:
            return traced  # type: ignore[return-value]
    if not torch.jit.is_scripting():
        check_float_tensor("input", input, ndim=4)
        pooled, spatial_scale, _, aligned, _ = check_roi_params(
            output_size, spatial_scale, aligned=aligned
        )
        output_size = list(pooled)
    rois = _as_rois(boxes, input)
    return torch.ops.refimpl.prroi_pool(
        input, rois, spatial_scale, output_size[0], output_size[1], aligned
    )
