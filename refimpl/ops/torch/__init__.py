"""The RoI operators in PyTorch: ``torch.ops.refimpl.*``, a drop-in for ``torchvision.ops``.

Importing this package registers the operators (``torch.library.custom_op``, namespace
``refimpl``), so that autograd, ``torch.compile(fullgraph=True)``, ``torch.export`` (saving
and loading) and TorchScript treat them like built-ins:

==============================  ==============================================================
``refimpl::roi_align``          RoIAlign (Mask R-CNN sec. 3), plus our ``pool_mode`` "max"
``refimpl::roi_pool``           RoIPool (Fast R-CNN sec. 2.1): ``(output, argmax)``
``refimpl::roi_warp``           RoIWarp as the Mask R-CNN ablation uses it (Table 2c)
``refimpl::prroi_pool``         Precise RoI Pooling (IoU-Net, Jiang et al. 2018, sec. 3.3)
``refimpl::*_backward``         their gradients, operators too so that they trace (input
                                only, except PrRoIPool's: input and boxes)
``refimpl::nms``                greedy non-maximum suppression (int64 indices, by score)
``refimpl::box_iou``            IoU of every pair of boxes
==============================  ==============================================================

Where each part lives: ``roi_align_op`` (RoIAlign's registration, written out in full:
lesson 8), ``registry`` (the other RoI operators, from one table), ``boxes`` (NMS and box
IoU), ``cpu_kernels`` / ``cuda_kernels`` (the numba and numba-cuda backends on tensors),
``layout`` (the CUDA kernels' memory layout), ``checks`` (argument checks), ``functional``
(the public functions), ``modules`` and ``poolers`` (the ``nn.Module`` s).
"""

from __future__ import annotations

from . import boxes, registry, roi_align_op  # noqa: F401 (registers the operators)
from .boxes import batched_nms, box_iou, nms
from .functional import convert_boxes_to_roi_format, prroi_pool, roi_align, roi_pool, roi_warp
from .layout import cuda_layout, current_cuda_layout
from .modules import PrRoIPool, RoIAlign, RoIPool, RoIWarp
from .poolers import (
    LevelMapper,
    MultiScaleRoIAlign,
    MultiScaleRoIPool,
    MultiScaleRoIWarp,
    infer_scale,
)

__all__ = [
    "LevelMapper",
    "MultiScaleRoIAlign",
    "MultiScaleRoIPool",
    "MultiScaleRoIWarp",
    "PrRoIPool",
    "RoIAlign",
    "RoIPool",
    "RoIWarp",
    "batched_nms",
    "box_iou",
    "convert_boxes_to_roi_format",
    "cuda_layout",
    "current_cuda_layout",
    "infer_scale",
    "nms",
    "prroi_pool",
    "roi_align",
    "roi_pool",
    "roi_warp",
]
