"""Box IoU and greedy NMS on the CPU (torchvision ``ops.boxes`` semantics)."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..validate import check_boxes, check_nms_args
from ._compile import JIT, PJIT, box_area, box_intersection, threads_for


@njit(**PJIT)
def _box_iou(F, boxes1, boxes2):
    """``iou[i, j]`` in ``F``, the python backend's expression; rows in parallel."""
    iou = np.empty((boxes1.shape[0], boxes2.shape[0]), boxes1.dtype)
    for i in prange(boxes1.shape[0]):
        ax1, ay1, ax2, ay2 = boxes1[i, 0], boxes1[i, 1], boxes1[i, 2], boxes1[i, 3]
        area_a = box_area(ax1, ay1, ax2, ay2)
        for j in range(boxes2.shape[0]):
            bx1, by1, bx2, by2 = boxes2[j, 0], boxes2[j, 1], boxes2[j, 2], boxes2[j, 3]
            inter = box_intersection(F, ax1, ay1, ax2, ay2, bx1, by1, bx2, by2)
            iou[i, j] = inter / (area_a + box_area(bx1, by1, bx2, by2) - inter)
    return iou


@njit(**JIT)
def _nms(F, boxes, order, threshold):
    """Greedy NMS in score order: each kept box suppresses the later boxes it overlaps by
    more than ``threshold``. The IoU is computed in ``F`` and compared in float64 (a float32
    IoU is promoted, as in torchvision: 0.3 in float32 rounds up and is suppressed at 0.3)."""
    n = order.shape[0]
    areas = np.empty(boxes.shape[0], boxes.dtype)
    for i in range(boxes.shape[0]):
        areas[i] = box_area(boxes[i, 0], boxes[i, 1], boxes[i, 2], boxes[i, 3])
    suppressed = np.zeros(boxes.shape[0], np.bool_)
    keep = np.empty(n, np.int64)
    n_keep = 0
    for a in range(n):
        i = order[a]
        if suppressed[i]:
            continue
        keep[n_keep] = i
        n_keep += 1
        ax1, ay1, ax2, ay2 = boxes[i, 0], boxes[i, 1], boxes[i, 2], boxes[i, 3]
        for b in range(a + 1, n):
            j = order[b]
            if suppressed[j]:
                continue
            bx1, by1, bx2, by2 = boxes[j, 0], boxes[j, 1], boxes[j, 2], boxes[j, 3]
            inter = box_intersection(F, ax1, ay1, ax2, ay2, bx1, by1, bx2, by2)
            if inter / (areas[i] + areas[j] - inter) > threshold:
                suppressed[j] = True
    return keep[:n_keep]


def box_iou(boxes1, boxes2):
    """Intersection over union of every pair: [N, M] (0 / 0 = NaN, as torchvision)."""
    boxes1 = check_boxes("boxes1", boxes1)
    boxes2 = np.ascontiguousarray(check_boxes("boxes2", boxes2), dtype=boxes1.dtype)
    with threads_for(boxes1.shape[0] * boxes2.shape[0]):
        return _box_iou(boxes1.dtype.type, boxes1, boxes2)


def nms(boxes, scores, iou_threshold):
    """Greedy non-maximum suppression: visit boxes by decreasing score (stable on ties) and
    drop every later box whose IoU with a kept one is strictly greater than the threshold."""
    boxes, scores, threshold = check_nms_args(boxes, scores, iou_threshold)
    order = np.argsort(-scores, kind="stable")
    return _nms(boxes.dtype.type, boxes, order, float(threshold))
