"""Box IoU and NMS on the GPU (torchvision ``ops.boxes`` semantics).

* ``box_iou``: one thread per pair ``(i, j)``.
* ``nms``: torchvision's tiled suppression mask: one block of 64 threads per pair of 64-box
  tiles, each thread one row box against the 64 column boxes held in shared memory, writing
  one 64-bit word; the greedy pass over the mask runs on the host
  (:func:`reduce_nms_mask`).
"""

from __future__ import annotations

import functools
import math
from types import SimpleNamespace

import numpy as np
from numba import cuda

from ..validate import FLOAT_DTYPES, check_boxes, check_nms_args
from ._device import box_area, box_intersection
from ._launch import check_contiguous, check_dtype, check_shape, device, launch_size, require_device

NMS_TILE = 64  # boxes per tile = bits per mask word


@functools.cache
def _kernels(dtype: np.dtype) -> SimpleNamespace:
    """``box_iou`` and ``nms_mask`` for float32 or float64 (``F`` closed over)."""
    F = np.dtype(dtype).type

    @cuda.jit
    def box_iou(boxes1, boxes2, iou):
        """One thread per pair (i, j). 0 / 0 (two empty boxes) gives NaN, as torchvision."""
        n = boxes1.shape[0]
        m = boxes2.shape[0]
        for idx in range(cuda.grid(1), n * m, cuda.gridsize(1)):
            i = idx // m
            j = idx % m
            ax1, ay1, ax2, ay2 = boxes1[i, 0], boxes1[i, 1], boxes1[i, 2], boxes1[i, 3]
            bx1, by1, bx2, by2 = boxes2[j, 0], boxes2[j, 1], boxes2[j, 2], boxes2[j, 3]
            inter = box_intersection(F, ax1, ay1, ax2, ay2, bx1, by1, bx2, by2)
            union = box_area(ax1, ay1, ax2, ay2) + box_area(bx1, by1, bx2, by2) - inter
            iou[i, j] = inter / union

    @cuda.jit
    def nms_mask(boxes, mask, iou_threshold):
        """Block (col_tile, row_tile) of NMS_TILE threads; thread t compares row box
        ``row_tile * 64 + t`` with the tile's 64 column boxes (staged in shared memory, read
        by every thread) and writes one 64-bit word: bit j set when the row box would
        suppress column box ``col_tile * 64 + j``, i.e. the column box comes later in score
        order and their IoU is strictly above the threshold (torchvision's layout)."""
        n = boxes.shape[0]
        col_tile = cuda.blockIdx.x
        row_tile = cuda.blockIdx.y
        t = cuda.threadIdx.x
        row_size = min(n - row_tile * NMS_TILE, NMS_TILE)
        col_size = min(n - col_tile * NMS_TILE, NMS_TILE)
        tile = cuda.shared.array((NMS_TILE, 4), dtype=F)
        if t < col_size:
            for d in range(4):
                tile[t, d] = boxes[col_tile * NMS_TILE + t, d]
        cuda.syncthreads()  # reached by every thread of the block: no early return above
        if t < row_size:
            i = row_tile * NMS_TILE + t
            ax1, ay1, ax2, ay2 = boxes[i, 0], boxes[i, 1], boxes[i, 2], boxes[i, 3]
            area_a = box_area(ax1, ay1, ax2, ay2)
            bits = np.uint64(0)
            if row_tile <= col_tile:  # tiles below the diagonal hold only earlier boxes
                first = t + 1 if row_tile == col_tile else 0
                for j in range(first, col_size):
                    bx1, by1, bx2, by2 = tile[j, 0], tile[j, 1], tile[j, 2], tile[j, 3]
                    inter = box_intersection(F, ax1, ay1, ax2, ay2, bx1, by1, bx2, by2)
                    iou = inter / (area_a + box_area(bx1, by1, bx2, by2) - inter)
                    # F vs float64 threshold: compared in float64, as torchvision's C++.
                    # NaN (0 / 0) compares False: an empty box suppresses nothing.
                    if iou > iou_threshold:
                        bits |= np.uint64(1) << np.uint64(j)
            mask[i, col_tile] = bits

    return SimpleNamespace(box_iou=box_iou, nms_mask=nms_mask)


def launch_box_iou(boxes1, boxes2, iou, *, stream=0):
    """Launch the pairwise IoU: ``boxes1`` [N, 4], ``boxes2`` [M, 4] (x1, y1, x2, y2) and
    ``iou`` [N, M] (C-contiguous, overwritten) device arrays of one float dtype; returns
    ``iou``. Finite coordinates are the caller's concern."""
    boxes1 = device(boxes1, "boxes1")
    boxes2 = device(boxes2, "boxes2")
    iou = device(iou, "iou")
    if np.dtype(boxes1.dtype) not in FLOAT_DTYPES:
        raise TypeError(f"boxes1 must have dtype float32 or float64, got {boxes1.dtype}")
    for name, b in (("boxes1", boxes1), ("boxes2", boxes2)):
        if len(b.shape) != 2 or b.shape[1] != 4:
            raise ValueError(f"{name} must have shape [N, 4], got {tuple(b.shape)}")
    check_dtype("boxes2", boxes2, boxes1.dtype)
    check_shape("iou", iou, (boxes1.shape[0], boxes2.shape[0]))
    check_dtype("iou", iou, boxes1.dtype)
    check_contiguous("iou", iou)
    n = boxes1.shape[0] * boxes2.shape[0]
    if n:
        blocks, threads = launch_size(n)
        _kernels(np.dtype(boxes1.dtype)).box_iou[blocks, threads, stream](boxes1, boxes2, iou)
    return iou


def nms_mask_shape(n_boxes: int) -> tuple[int, int]:
    """Shape of the suppression mask for ``n_boxes`` boxes: [n, ceil(n / 64)] of uint64."""
    return n_boxes, (n_boxes + NMS_TILE - 1) // NMS_TILE


def launch_nms_mask(boxes_sorted, mask, iou_threshold, *, stream=0):
    """Launch the NMS suppression mask on device arrays; returns ``mask``.

    ``boxes_sorted`` [n, 4] (float32 or float64): the boxes already in decreasing score
    order (stable on ties, as ``np.argsort(-scores, kind="stable")`` or
    ``torch.sort(scores, descending=True, stable=True)``). ``mask``: uint64, shape
    :func:`nms_mask_shape`, C-contiguous, overwritten (int64 is accepted too and receives
    the same bits): bit ``j % 64`` of ``mask[i, j // 64]`` is set when ``j > i`` and
    IoU(box i, box j) > ``iou_threshold`` (compared in float64). Reduce it on the host with
    :func:`reduce_nms_mask`.
    """
    boxes_sorted = device(boxes_sorted, "boxes_sorted")
    mask = device(mask, "mask")
    if np.dtype(boxes_sorted.dtype) not in FLOAT_DTYPES:
        raise TypeError(
            f"boxes_sorted must have dtype float32 or float64, got {boxes_sorted.dtype}"
        )
    if len(boxes_sorted.shape) != 2 or boxes_sorted.shape[1] != 4:
        raise ValueError(f"boxes_sorted must have shape [n, 4], got {tuple(boxes_sorted.shape)}")
    n, tiles = nms_mask_shape(boxes_sorted.shape[0])
    check_shape("mask", mask, (n, tiles))
    if np.dtype(mask.dtype) == np.int64:
        mask = mask.view(np.uint64)  # the same 64 bits (torch's uint64 support is thin)
    check_dtype("mask", mask, np.uint64)
    check_contiguous("mask", mask)
    threshold = float(iou_threshold)
    if not math.isfinite(threshold):
        raise ValueError(f"iou_threshold must be finite, got {iou_threshold!r}")
    if n:
        # np.float64 (not a Python float) so that the simulator compares as the GPU does.
        _kernels(np.dtype(boxes_sorted.dtype)).nms_mask[(tiles, tiles), NMS_TILE, stream](
            boxes_sorted, mask, np.float64(threshold)
        )
    return mask


def reduce_nms_mask(mask: np.ndarray) -> np.ndarray:
    """The greedy pass of NMS on the host: positions (in score order, int64) of kept boxes.

    Visits the boxes in order; a box is kept unless a kept box has set its bit, and a kept
    box's row of the mask is OR-ed into the running ``removed`` words. Sequential by nature,
    and cheap next to the O(n^2) mask (one word OR per tile per kept box).
    """
    mask = np.asarray(mask)
    if mask.dtype == np.int64:
        mask = mask.view(np.uint64)
    if mask.dtype != np.uint64 or mask.ndim != 2:
        raise TypeError(
            f"mask must be a 2-D uint64 (or int64) array, got {mask.dtype} {mask.shape}"
        )
    removed = np.zeros(mask.shape[1], np.uint64)
    keep = []
    for i in range(mask.shape[0]):
        word = int(removed[i // NMS_TILE])
        if not (word >> (i % NMS_TILE)) & 1:
            keep.append(i)
            removed |= mask[i]
    return np.array(keep, dtype=np.int64)


# --- the backend interface: NumPy arrays in and out -----------------------------------------


def box_iou(boxes1, boxes2):
    """Intersection over union of every pair: [N, M] (0 / 0 = NaN, as torchvision)."""
    boxes1 = check_boxes("boxes1", boxes1)
    boxes2 = check_boxes("boxes2", boxes2).astype(boxes1.dtype)
    require_device()
    shape = (boxes1.shape[0], boxes2.shape[0])
    if math.prod(shape) == 0:
        return np.zeros(shape, boxes1.dtype)
    iou = cuda.device_array(shape, boxes1.dtype)
    launch_box_iou(cuda.to_device(boxes1), cuda.to_device(boxes2), iou)
    return iou.copy_to_host()


def nms(boxes, scores, iou_threshold):
    """Greedy non-maximum suppression: the IoU mask of the score-sorted boxes on the device,
    the greedy pass on the host; kept indices (int64) in decreasing score order."""
    boxes, scores, threshold = check_nms_args(boxes, scores, iou_threshold)
    require_device()
    if boxes.shape[0] == 0:
        return np.zeros(0, np.int64)
    order = np.argsort(-scores, kind="stable")
    mask = cuda.device_array(nms_mask_shape(boxes.shape[0]), np.uint64)
    launch_nms_mask(cuda.to_device(np.ascontiguousarray(boxes[order])), mask, threshold)
    return order[reduce_nms_mask(mask.copy_to_host())].astype(np.int64)
