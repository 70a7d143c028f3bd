"""Box coding: boxes as offsets relative to a reference box (R-CNN appendix C; Faster R-CNN
sec. 3.1.2, eq. 2).

For a reference (anchor or proposal) box P and a target box G, with centres ``x = x1 + w / 2``
and sizes ``w = x2 - x1`` (no "+1")::

    dx = wx (Gx - Px) / Pw      dy = wy (Gy - Py) / Ph
    dw = ww log(Gw / Pw)        dh = wh log(Gh / Ph)

The weights ``(wx, wy, ww, wh)`` scale the targets to roughly unit variance: (1, 1, 1, 1) for
the RPN, (10, 10, 5, 5) for the box head (Detectron's values). Decoding clamps ``dw, dh`` at
``log(1000 / 16)`` before ``exp``, so that an untrained regressor cannot overflow a box to
infinity. The operation order is torchvision's, so results agree to the last bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

BBOX_XFORM_CLIP = math.log(1000.0 / 16)


def encode_boxes(gt_boxes: Tensor, reference_boxes: Tensor, weights: Sequence[float]) -> Tensor:
    """Deltas ``[N, 4]`` that take each ``reference_boxes[i]`` to ``gt_boxes[i]`` (eq. 2 with
    the weights ``(wx, wy, ww, wh)``); the part ``Parts.encode_boxes`` (exercise 10)."""
    wx, wy, ww, wh = weights
    ex_widths = reference_boxes[:, 2:3] - reference_boxes[:, 0:1]
    ex_heights = reference_boxes[:, 3:4] - reference_boxes[:, 1:2]
    ex_ctr_x = reference_boxes[:, 0:1] + 0.5 * ex_widths
    ex_ctr_y = reference_boxes[:, 1:2] + 0.5 * ex_heights

    gt_widths = gt_boxes[:, 2:3] - gt_boxes[:, 0:1]
    gt_heights = gt_boxes[:, 3:4] - gt_boxes[:, 1:2]
    gt_ctr_x = gt_boxes[:, 0:1] + 0.5 * gt_widths
    gt_ctr_y = gt_boxes[:, 1:2] + 0.5 * gt_heights

    dx = wx * (gt_ctr_x - ex_ctr_x) / ex_widths
    dy = wy * (gt_ctr_y - ex_ctr_y) / ex_heights
    dw = ww * torch.log(gt_widths / ex_widths)
    dh = wh * torch.log(gt_heights / ex_heights)
    return torch.cat([dx, dy, dw, dh], dim=1)


def decode_boxes(
    deltas: Tensor,
    reference_boxes: Tensor,
    weights: Sequence[float],
    bbox_xform_clip: float = BBOX_XFORM_CLIP,
) -> Tensor:
    """Boxes from deltas: ``deltas [N, 4K]`` (K sets, e.g. one per class) relative to
    ``reference_boxes [N, 4]`` -> ``[N, K, 4]`` in ``deltas``' dtype; the part
    ``Parts.decode_boxes`` (exercise 10)."""
    boxes = reference_boxes.to(deltas.dtype)
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    ctr_x = boxes[:, 0] + 0.5 * widths
    ctr_y = boxes[:, 1] + 0.5 * heights

    wx, wy, ww, wh = weights
    dx = deltas[:, 0::4] / wx
    dy = deltas[:, 1::4] / wy
    # The clamp keeps exp() finite for wild predictions early in training.
    dw = torch.clamp(deltas[:, 2::4] / ww, max=bbox_xform_clip)
    dh = torch.clamp(deltas[:, 3::4] / wh, max=bbox_xform_clip)

    pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
    pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
    half_w = 0.5 * (torch.exp(dw) * widths[:, None])
    half_h = 0.5 * (torch.exp(dh) * heights[:, None])
    return torch.stack(
        [pred_ctr_x - half_w, pred_ctr_y - half_h, pred_ctr_x + half_w, pred_ctr_y + half_h],
        dim=2,
    )


EncodeFn = Callable[[Tensor, Tensor, Sequence[float]], Tensor]
DecodeFn = Callable[[Tensor, Tensor, Sequence[float]], Tensor]


class BoxCoder:
    """Encode boxes as deltas from reference boxes, and decode deltas back to boxes.

    Args:
        weights: ``(wx, wy, ww, wh)``.
        bbox_xform_clip: the clamp on decoded ``dw, dh`` (``log(1000 / 16)``).
        encode_fn, decode_fn: the functions (:func:`encode_boxes`, :func:`decode_boxes`; the
            parts ``Parts.encode_boxes`` and ``Parts.decode_boxes``, which clamp at
            ``log(1000 / 16)``). A ``decode_fn`` other than ours is called without
            ``bbox_xform_clip``, which must then be the default.
    """

    def __init__(
        self,
        weights: Sequence[float],
        bbox_xform_clip: float = BBOX_XFORM_CLIP,
        encode_fn: EncodeFn = encode_boxes,
        decode_fn: DecodeFn = decode_boxes,
    ) -> None:
        if len(weights) != 4:
            raise ValueError(f"weights must have 4 values (wx, wy, ww, wh), got {weights}")
        if decode_fn is not decode_boxes and bbox_xform_clip != BBOX_XFORM_CLIP:
            raise ValueError("a decode_fn of your own clamps at log(1000 / 16): keep the default")
        self.weights = tuple(float(w) for w in weights)
        self.bbox_xform_clip = bbox_xform_clip
        self.encode_fn = encode_fn
        self.decode_fn = decode_fn

    def encode(self, gt_boxes: Tensor, reference_boxes: Tensor) -> Tensor:
        """Deltas ``[N, 4]`` that take each ``reference_boxes[i]`` to ``gt_boxes[i]``."""
        return self.encode_fn(gt_boxes, reference_boxes, self.weights)

    def decode(self, deltas: Tensor, reference_boxes: Tensor) -> Tensor:
        """Boxes from deltas: ``deltas [N, 4K]`` (K sets, e.g. one per class) relative to
        ``reference_boxes [N, 4]`` -> ``[N, K, 4]`` in ``deltas``' dtype."""
        if self.decode_fn is decode_boxes:
            return decode_boxes(deltas, reference_boxes, self.weights, self.bbox_xform_clip)
        return self.decode_fn(deltas, reference_boxes, self.weights)
