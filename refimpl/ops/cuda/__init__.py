"""The ``"cuda"`` backend: numba-cuda kernels for RoIAlign, RoIWarp, RoIPool, PrRoIPool, box
IoU and NMS.

One file per op (``roi_align.py``, ``roi_warp.py``, ``roi_pool.py``, ``prroi_pool.py``,
``boxes.py``), each with its kernels, its **launch functions** and its part of the backend
interface; two shared modules: ``_device.py`` (device functions: the geometry, element
access in either layout, bilinear sampling) and ``_launch.py`` (grid sizes, host checks).

* **Launch functions** take *device* arrays (numba device arrays, or anything with
  ``__cuda_array_interface__`` such as a torch CUDA tensor), keyword-only ``layout``
  ("nchw" or "channels_last", :data:`refimpl.ops.validate.LAYOUTS`) and ``stream``. They
  check only what is cheap on the host (shapes, dtypes, scalars), never the values: the
  caller validates those (:func:`refimpl.ops.validate.check_rois`,
  :func:`~refimpl.ops.validate.check_sampling_grid`). Outputs are overwritten; gradients are
  accumulated into (pass them zeroed)::

      from refimpl.ops.cuda import roi_align, roi_pool, roi_warp, prroi_pool, boxes
      roi_align.launch_forward(x, rois, out, scale, sampling_ratio, aligned, pool_mode,
                               layout="channels_last", stream=stream)
      roi_align.launch_backward(x, rois, grad_out, grad_x, scale, sampling_ratio, aligned,
                                pool_mode, layout="nchw", stream=stream)
      roi_warp.launch_forward(x, rois, out, scale, sampling_ratio, pool_mode, layout=, stream=)
      roi_warp.launch_backward(x, rois, grad_out, grad_x, scale, sampling_ratio, pool_mode, ...)
      roi_pool.launch_forward(x, rois, out, scale, layout=, stream=)
      roi_pool.launch_forward_with_argmax(x, rois, out, argmax, scale, layout=, stream=)
      roi_pool.launch_backward(x, rois, grad_out, grad_x, scale, layout=, stream=)
      roi_pool.launch_backward_from_argmax(rois, grad_out, argmax, grad_x, layout=, stream=)
      prroi_pool.launch_forward(x, rois, out, scale, aligned, stream=)              # NCHW only
      prroi_pool.launch_backward(x, rois, grad_out, grad_x, grad_rois, scale, aligned, stream=)
      boxes.launch_box_iou(boxes1, boxes2, iou, stream=)
      boxes.launch_nms_mask(boxes_sorted, mask, iou_threshold, stream=)
      boxes.nms_mask_shape(n), boxes.reduce_nms_mask(mask)                           # host

  "nchw": ``x`` [N, C, H, W], pooled arrays [K, C, PH, PW], one thread per output element
  gathering from one channel plane, as torchvision's kernels; "channels_last": ``x``
  [N, H, W, C], pooled arrays [K, PH, PW, C], threads along the channels (coalesced reads,
  writes and atomics; see :mod:`.roi_align`). One kernel body per op, the layout a
  compile-time constant of each compiled kernel.
* **The backend interface** (``roi_align_forward`` ... ``nms``, the functions of
  :class:`refimpl.ops.interface.Backend`) on NumPy arrays: validate, copy to the device,
  launch, copy back. It needs a GPU or the simulator (``NUMBA_ENABLE_CUDASIM=1`` before
  numba is imported).

Thread layout: every kernel except NMS and PrRoIPool's backward is a 1-D grid-stride loop,
so any grid covers any problem and the grid is capped at a few waves of the GPU
(``_launch.MAX_BLOCKS``). Arithmetic: the geometry is :mod:`refimpl.ops.geometry`, compiled
as device functions, in the input dtype ``F`` and in torchvision's operation order; kernels
are specialized per dtype (and layout) by cached factories that close over ``F``.

References: Mask R-CNN (He et al., 2017) sec. 3 "RoIAlign" and Table 2c (RoIWarp, max/avg);
Fast R-CNN (Girshick, 2015) sec. 2.1 and eq. 4; IoU-Net (Jiang et al., 2018) sec. 3.3; the
semantics in ``docs/spec/roi-ops.md``.
"""

from __future__ import annotations

from . import boxes, prroi_pool, roi_align, roi_pool, roi_warp
from .boxes import box_iou, launch_box_iou, launch_nms_mask, nms, nms_mask_shape, reduce_nms_mask
from .prroi_pool import prroi_pool_backward, prroi_pool_forward
from .roi_align import roi_align_backward, roi_align_forward
from .roi_pool import (
    roi_pool_backward,
    roi_pool_backward_from_argmax,
    roi_pool_forward,
    roi_pool_forward_with_argmax,
)
from .roi_warp import roi_warp_backward, roi_warp_forward

__all__ = [
    "box_iou",
    "boxes",
    "launch_box_iou",
    "launch_nms_mask",
    "nms",
    "nms_mask_shape",
    "prroi_pool",
    "prroi_pool_backward",
    "prroi_pool_forward",
    "reduce_nms_mask",
    "roi_align",
    "roi_align_backward",
    "roi_align_forward",
    "roi_pool",
    "roi_pool_backward",
    "roi_pool_backward_from_argmax",
    "roi_pool_forward",
    "roi_pool_forward_with_argmax",
    "roi_warp",
    "roi_warp_backward",
    "roi_warp_forward",
]
