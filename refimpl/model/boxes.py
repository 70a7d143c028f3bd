"""Box utilities of the detector (torchvision's ``ops/boxes.py``): boxes are ``[N, 4]`` rows
``(x1, y1, x2, y2)`` in pixels, widths ``x2 - x1`` (no "+1", as torchvision).

``box_iou``, ``nms`` and ``batched_nms`` are the operators of stage 1 (:mod:`refimpl.ops`),
re-exported so that the model's box code has one home; :func:`batched_nms_over` builds a
per-category NMS on top of any ``nms`` (e.g. a learner's, :mod:`refimpl.model.parts`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from refimpl.ops import batched_nms, box_iou, nms

__all__ = [
    "batched_nms",
    "batched_nms_over",
    "box_area",
    "box_iou",
    "clip_boxes_to_image",
    "nms",
    "remove_small_boxes",
]

NMS = Callable[[Tensor, Tensor, float], Tensor]


def box_area(boxes: Tensor) -> Tensor:
    """``[N]`` areas ``(x2 - x1) * (y2 - y1)``."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def clip_boxes_to_image(boxes: Tensor, size: Sequence[int]) -> Tensor:
    """Clip ``[..., 4]`` boxes to an image of ``size = (H, W)``: x in [0, W], y in [0, H]."""
    h, w = size
    x = boxes[..., 0::2].clamp(min=0, max=w)
    y = boxes[..., 1::2].clamp(min=0, max=h)
    return torch.stack([x, y], dim=-1).reshape(boxes.shape)


def remove_small_boxes(boxes: Tensor, min_size: float) -> Tensor:
    """Indices of the boxes whose width and height are both >= ``min_size``."""
    ws, hs = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    return torch.where((ws >= min_size) & (hs >= min_size))[0]


def batched_nms_over(nms_fn: NMS) -> Callable[[Tensor, Tensor, Tensor, float], Tensor]:
    """``batched_nms(boxes, scores, idxs, iou_threshold)`` from an ``nms``: torchvision's
    coordinate trick, as :func:`refimpl.ops.batched_nms` (each category's boxes shifted by
    ``idx * span`` so that categories never overlap, then one ``nms`` call)."""

    def batched(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
        if boxes.numel() == 0:
            return torch.empty((0,), dtype=torch.int64, device=boxes.device)
        wide = boxes.to(torch.promote_types(boxes.dtype, torch.float32))
        span = wide.max() + 1 - wide.min().clamp(max=0)
        return nms_fn(wide + (idxs.to(wide.dtype) * span)[:, None], scores, iou_threshold)

    batched.__qualname__ = f"batched_nms_over({getattr(nms_fn, '__qualname__', 'nms')})"
    return batched
