"""Box operators: ``refimpl::nms`` and ``refimpl::box_iou``, and the public ``nms``,
``batched_nms`` and ``box_iou`` with torchvision's signatures (torchvision ``ops.boxes``).

The public functions are TorchScript-compatible and leaves of ``torch.fx`` traces (as
torchvision's); their Python-level checks run in eager mode, and the operators' kernels
check what a kernel needs in every mode.
"""

from __future__ import annotations

import numbers

import torch
from torch import Tensor

from ..errors import TypeRuntimeError, ValueIndexError, ValueRuntimeError
from . import cuda_kernels
from .checks import check_float_tensor, check_same_device, compute_dtype, fx_leaf
from .cpu_kernels import as_numpy, cpu_backend

__all__ = ["batched_nms", "box_iou", "nms"]


def _check_nms(boxes: Tensor, scores: Tensor) -> None:
    check_float_tensor("boxes", boxes, ndim=2)
    if boxes.shape[1] != 4:
        raise ValueRuntimeError(f"boxes must have shape [N, 4], got {list(boxes.shape)}")
    check_float_tensor("scores", scores, ndim=1)
    if scores.shape[0] != boxes.shape[0]:
        raise ValueRuntimeError(
            f"scores must have one entry per box: {scores.shape[0]} scores, {boxes.shape[0]} boxes"
        )
    check_same_device("boxes", boxes, {"scores": scores})


@torch.library.custom_op("refimpl::nms", mutates_args=(), device_types="cpu")
def _nms_op(dets: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS: int64 indices of the kept boxes, by decreasing score. (``dets``:
    torchvision's name in its schema, for callers that pass it by keyword.)"""
    _check_nms(dets, scores)
    dtype = compute_dtype(dets.dtype)
    keep = cpu_backend().nms(as_numpy(dets, dtype), as_numpy(scores, dtype), iou_threshold)
    return torch.from_numpy(keep)


@_nms_op.register_kernel("cuda")
def _nms_cuda(boxes, scores, iou_threshold):
    _check_nms(boxes, scores)
    dtype = compute_dtype(boxes.dtype)
    return cuda_kernels.nms(boxes.to(dtype), scores.to(dtype), iou_threshold)


@_nms_op.register_fake
def _(boxes, scores, _iou_threshold):
    _check_nms(boxes, scores)
    # How many boxes survive depends on the data: an unbacked symbolic size for tracing.
    n = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty((n,), dtype=torch.int64)


def _check_box_iou(boxes1: Tensor, boxes2: Tensor) -> None:
    for name, b in (("boxes1", boxes1), ("boxes2", boxes2)):
        check_float_tensor(name, b)
        if b.dim() != 2 or b.shape[1] != 4:
            raise ValueIndexError(f"{name} must have shape [N, 4], got {list(b.shape)}")
    check_same_device("boxes1", boxes1, {"boxes2": boxes2})


@torch.library.custom_op("refimpl::box_iou", mutates_args=(), device_types="cpu")
def _box_iou_op(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU of every pair, ``[N, M]``, in boxes1's dtype (16-bit: computed in float32)."""
    _check_box_iou(boxes1, boxes2)
    dtype = compute_dtype(boxes1.dtype)
    iou = cpu_backend().box_iou(as_numpy(boxes1, dtype), as_numpy(boxes2, dtype))
    return torch.from_numpy(iou).to(boxes1.dtype)


@_box_iou_op.register_kernel("cuda")
def _box_iou_cuda(boxes1, boxes2):
    _check_box_iou(boxes1, boxes2)
    dtype = compute_dtype(boxes1.dtype)
    return cuda_kernels.box_iou(boxes1.to(dtype), boxes2.to(dtype)).to(boxes1.dtype)


@_box_iou_op.register_fake
def _(boxes1, boxes2):
    _check_box_iou(boxes1, boxes2)
    return boxes1.new_empty((boxes1.shape[0], boxes2.shape[0]))


# --- the public functions ------------------------------------------------------------------------


def _check_threshold(iou_threshold: object) -> float:
    if isinstance(iou_threshold, bool) or not isinstance(iou_threshold, numbers.Real):
        raise TypeRuntimeError(
            f"iou_threshold must be a real number, got {type(iou_threshold).__name__}"
        )
    return float(iou_threshold)


@torch.fx.wrap
def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression (as in Fast R-CNN's and Mask R-CNN's detectors).

    Visits the boxes ``[N, 4]`` ``(x1, y1, x2, y2)`` by decreasing score (ties: lower index
    first) and drops each box whose IoU with an already kept one is strictly greater than
    ``iou_threshold``. Returns the int64 indices of the kept boxes, by decreasing score.
    float16/bfloat16 boxes are compared in float32; scores are cast to the boxes' dtype.
    """
    if not torch.jit.is_scripting():
        traced = fx_leaf(
            nms,
            (
                boxes,
                scores,
                iou_threshold,
            ),
        )
        if traced is not None:
            return traced  # type: ignore[return-value]
    if not torch.jit.is_scripting():
        _check_nms(boxes, scores)
        iou_threshold = _check_threshold(iou_threshold)
    return torch.ops.refimpl.nms(boxes, scores.to(boxes.dtype), iou_threshold)


def _check_batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor) -> None:
    check_float_tensor("boxes", boxes, ndim=2)
    if not isinstance(idxs, Tensor) or idxs.dim() != 1:
        raise ValueRuntimeError("idxs must be a 1-D tensor of category indices")
    if idxs.is_floating_point() or idxs.is_complex():
        raise TypeRuntimeError(f"idxs must have an integer dtype, got {idxs.dtype}")
    check_same_device("boxes", boxes, {"scores": scores, "idxs": idxs})
    if idxs.shape[0] != boxes.shape[0]:
        raise ValueRuntimeError(
            f"idxs must have one entry per box: {idxs.shape[0]} idxs, {boxes.shape[0]} boxes"
        )


@torch.fx.wrap
def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """NMS independently per category ``idxs`` (int ``[N]``), in one :func:`nms` call.

    torchvision's coordinate trick: each category's boxes are shifted by ``idx * span`` so
    that boxes of different categories never overlap. ``span`` is torchvision's
    ``max + 1``, widened by ``-min`` when coordinates are negative (where ``max + 1`` alone
    would let categories overlap). Returns int64 indices by decreasing score; no boxes (of
    any dtype, whatever ``scores`` and ``idxs`` are): an empty int64 tensor, as torchvision.
    """
    if not torch.jit.is_scripting():
        traced = fx_leaf(
            batched_nms,
            (
                boxes,
                scores,
                idxs,
                iou_threshold,
            ),
        )
        if traced is not None:
            return traced  # type: ignore[return-value]
    if not torch.jit.is_scripting() and not isinstance(boxes, Tensor):
        raise TypeRuntimeError(f"boxes must be a torch.Tensor, got {type(boxes).__name__}")
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    if not torch.jit.is_scripting():
        _check_batched_nms(boxes, scores, idxs)
    # At least float32: 90 categories x 1333 pixels overflow float16 (nms computes 16-bit
    # boxes in float32 anyway). The shift rounds coordinates (as torchvision's does), which
    # can move an IoU that sits exactly on the threshold.
    boxes = boxes.to(torch.promote_types(boxes.dtype, torch.float32))
    span = boxes.max() + 1 - boxes.min().clamp(max=0)
    shifted = boxes + (idxs.to(boxes.dtype) * span)[:, None]
    return nms(shifted, scores, iou_threshold)


def _iou_dtype(boxes1: Tensor, boxes2: Tensor) -> torch.dtype:
    dtype = torch.promote_types(boxes1.dtype, boxes2.dtype)
    if dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        return dtype
    # torchvision divides: integer boxes give the default float dtype.
    if torch.jit.is_scripting():
        return torch.float32
    return torch.get_default_dtype()


@torch.fx.wrap
def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Intersection over union of every pair of boxes ``(x1, y1, x2, y2)``: ``[N, M]``.

    Areas are ``(x2 - x1) * (y2 - y1)`` (no "+1"); two zero-area boxes give 0 / 0 = NaN, as
    torchvision. The result has the promoted dtype of the two inputs (integer boxes: the
    default float dtype); float16/bfloat16 are computed in float32 and cast back. Not
    differentiable (an IoU loss should use torch arithmetic).
    """
    if not torch.jit.is_scripting():
        traced = fx_leaf(
            box_iou,
            (
                boxes1,
                boxes2,
            ),
        )
        if traced is not None:
            return traced  # type: ignore[return-value]
    if not torch.jit.is_scripting():
        for name, b in (("boxes1", boxes1), ("boxes2", boxes2)):
            if not isinstance(b, Tensor):
                raise TypeRuntimeError(f"{name} must be a torch.Tensor, got {type(b).__name__}")
        check_same_device("boxes1", boxes1, {"boxes2": boxes2})
    dtype = _iou_dtype(boxes1, boxes2)
    return torch.ops.refimpl.box_iou(boxes1.to(dtype), boxes2.to(dtype))
