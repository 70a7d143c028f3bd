"""The ``"numba"`` backend: compiled CPU kernels (``numba.njit``, ``prange``), the results of
:mod:`refimpl.ops.python` (torchvision's kernels) with the work reordered for speed.

One file per op (``roi_align.py``, ``roi_warp.py``, ``roi_pool.py``, ``prroi_pool.py``,
``boxes.py``), each with its kernels and its part of the backend interface
(:class:`refimpl.ops.interface.Backend`), all re-exported here::

    from refimpl.ops import numba as numba_backend
    y = numba_backend.roi_align_forward(x, rois, (7, 7), 0.25, 2, True)      # NumPy in and out
    y, argmax = numba_backend.roi_pool_forward_with_argmax(x, rois, (7, 7), 0.25)

and three shared modules: ``_compile.py`` (jit options, the geometry compiled, the thread
policy), ``_layout.py`` (channels-last copies, channel blocks), ``_taps.py`` (the separable
kernels that avg RoIAlign and PrRoIPool share).

1. **Geometry once per RoI.** Box -> bins -> sampling points -> bilinear weights come from
   :mod:`refimpl.ops.geometry` (compiled, never re-derived), computed in the input's dtype
   ``F`` and stored in small tables before any channel is touched.
2. **Separable RoIAlign (avg) and PrRoIPool** (:mod:`._taps`): a bin's average is
   ``sum_i wy_i * sum_j wx_j * x[row_i, col_j]`` over per-axis taps.
3. **Channels innermost.** The forward copies ``x`` to channels-last ``[N, H*W, C]``, so a
   tap reads ``C`` contiguous values and the channel loop is a SIMD loop.
4. **Parallel and race-free.** Forward kernels ``prange`` over RoIs (each writes only its own
   output). Backward kernels scatter into pixels that many RoIs share, so they ``prange``
   over blocks of channels instead: a thread owns a block of channels for all RoIs, copies
   its channels of ``x`` channels-last (the max modes need them), accumulates into its own
   channels-last gradient block and finally writes those channels of ``grad_x``: no two
   threads ever write the same memory, and every gradient element is accumulated in the
   same order (RoI, bin, tap) whatever the number of threads, so the results are bitwise
   reproducible.
5. **Small inputs on one thread** (``_compile.PARALLEL_MIN_WORK``): waking threads costs more
   than they save there.

The max modes (RoIAlign max, RoIWarp, RoIPool) are not separable: they keep a running max
(and, for the backward, argmax) per channel, still with channels innermost, and compute each
sample's value exactly as the python backend does, so they agree with it bitwise.
"""

from __future__ import annotations

from .boxes import box_iou, nms
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
    "nms",
    "prroi_pool_backward",
    "prroi_pool_forward",
    "roi_align_backward",
    "roi_align_forward",
    "roi_pool_backward",
    "roi_pool_backward_from_argmax",
    "roi_pool_forward",
    "roi_pool_forward_with_argmax",
    "roi_warp_backward",
    "roi_warp_forward",
]
