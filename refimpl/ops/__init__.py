"""Stage 1: the RoI operators (RoIPool, RoIWarp, RoIAlign, PrRoIPool), NMS and box IoU.

Four backends, each a module with the same functions on NumPy arrays, typed by
:class:`refimpl.ops.interface.Backend` (see :mod:`refimpl.ops.python` for the definitions):

===========  =======================  ===========================================================
name         module                   what it is
===========  =======================  ===========================================================
``python``   ``refimpl.ops.python``   plain loops that read like the papers: the definition
``numpy``    ``refimpl.ops.numpy``    vectorized NumPy, what the NumPy lessons build
``numba``    ``refimpl.ops.numba``    ``njit``/``prange`` CPU kernels, one file per op
``cuda``     ``refimpl.ops.cuda``     numba-cuda kernels, one file per op, NCHW or channels-last
===========  =======================  ===========================================================

``BACKENDS`` maps a name to its module (imported on first use, so that e.g. the CUDA
simulator can be chosen before numba is imported); ``get_backend(name)`` is the same, typed.
All four share ``geometry.py`` (box -> bins -> sampling points -> bilinear weights) and
``validate.py`` (every check runs before any kernel). The functions:

=================================  ================================================================
``roi_align_forward``              ``(x, rois, output_size, spatial_scale=1.0, sampling_ratio=-1,
                                   aligned=False, pool_mode="avg") -> y``
``roi_align_backward``             ``(x, rois, grad_output, output_size, ...) -> grad_x``
``roi_pool_forward``               ``(x, rois, output_size, spatial_scale=1.0) -> y``
``roi_pool_backward``              ``(x, rois, grad_output, output_size, ...) -> grad_x``
``roi_pool_forward_with_argmax``   ``(x, rois, output_size, ...) -> (y, argmax)``
``roi_pool_backward_from_argmax``  ``(x, rois, grad_output, argmax, output_size, ...) -> grad_x``
``roi_warp_forward``               ``(x, rois, output_size, spatial_scale=1.0, sampling_ratio=-1,
                                   pool_mode="max") -> y``
``roi_warp_backward``              ``(x, rois, grad_output, output_size, ...) -> grad_x``
``prroi_pool_forward``             ``(x, rois, output_size, spatial_scale=1.0, aligned=False) -> y``
``prroi_pool_backward``            ``(x, rois, grad_output, ...) -> (grad_x, grad_rois)``
``box_iou``                        ``(boxes1, boxes2) -> iou``
``nms``                            ``(boxes, scores, iou_threshold) -> keep`` (int64, by score)
=================================  ================================================================

The argmax pair (flat plane index ``row * W + col`` of each bin's maximum, -1 when empty) is
what the torch operator saves for RoIPool's backward, as torchvision's does. The CUDA
backend also has launch functions on device arrays (:mod:`refimpl.ops.cuda`).
"""

from __future__ import annotations

import importlib
import sys

from .interface import BACKEND_FUNCTIONS, BACKEND_MODULES, BACKENDS, Backend, get_backend

# The torch operators (torch.ops.refimpl.*) and modules (refimpl.ops.torch): registered at
# once when torch is already imported (so that torch.export.load of a saved program works
# after `import torch, refimpl.ops`), else on first use of one of these names, so that the
# NumPy backends (and the autograder's workers) do not pay for importing torch.
_TORCH_NAMES = (
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
)


def _load_torch_names() -> None:
    module = importlib.import_module(f"{__name__}.torch")  # registers the operators
    globals().update({name: getattr(module, name) for name in _TORCH_NAMES})


def __getattr__(name: str):
    if name in _TORCH_NAMES:
        _load_torch_names()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BACKENDS",
    "BACKEND_FUNCTIONS",
    "BACKEND_MODULES",
    "Backend",
    "get_backend",
    *_TORCH_NAMES,
]

if "torch" in sys.modules:
    _load_torch_names()
