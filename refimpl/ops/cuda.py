"""The ``"cuda"`` backend: numba-cuda kernels for RoIAlign, RoIPool, RoIWarp, PrRoIPool, box IoU
and NMS.

Two layers:

* **Launch functions** (``launch_*``) take *device* arrays: numba device arrays, or anything
  with ``__cuda_array_interface__`` such as a torch CUDA tensor, and an optional ``stream``.
  They check only what is cheap to check on the host (shapes, dtypes, scalar parameters),
  never the arrays' values: the caller must have validated the data (finite coordinates,
  integral batch indices in range; see :mod:`refimpl.ops.validate`). A torch op can launch
  them on its tensors without a copy.
* **The backend interface** (``roi_align_forward`` ... ``nms``, the same functions and
  signatures as :mod:`refimpl.ops.python`) on NumPy arrays: validate, copy to the device,
  launch, copy back.

Thread layout (all kernels, except NMS, use a 1-D grid-stride loop, so any grid size covers
any problem and the grid can be capped at a few waves of the GPU):

* RoI forwards: one thread per output element ``(k, c, ph, pw)``, as torchvision's CUDA
  kernels. Consecutive threads take consecutive ``pw``, then ``ph``, then ``c``, so a warp
  writes a contiguous run of the output. Every thread recomputes its RoI's geometry from the
  box: a few flops, cheaper than a second pass and a buffer. The same kernels compile for
  **channels-last** arrays too (``launch_*_nhwc``: x [N, H, W, C], outputs [K, PH, PW, C]),
  with consecutive threads along ``c``: coalesced reads, writes and atomics (see the
  comment above :func:`launch_roi_align_forward_nhwc`).
* RoI backwards: also one thread per ``grad_output`` element, scattering into ``grad_x``
  with **atomic adds** (see :func:`_roi_align_backward_body` for why not a gather).
  RoIPool's backward recomputes each bin's argmax from ``x``; its saved-argmax variant
  (``launch_roi_pool_forward_with_argmax`` / ``launch_roi_pool_backward_from_argmax``, as
  torchvision's CUDA RoIPool) stores the argmax in the forward and scatters through it
  without reading ``x``.
* PrRoIPool (IoU-Net sec. 3.3): the forward as the RoI forwards, each thread summing tent
  integrals over the pixels under its bin. The backward has one **block per RoI** instead
  (a block-stride loop over the RoIs): its threads stride over the RoI's ``(c, ph, pw)``,
  scatter the input gradient with atomic adds, and reduce their contributions to the RoI's
  four box coordinates in shared memory (see :func:`launch_prroi_pool_backward`).
* ``box_iou``: one thread per pair ``(i, j)``.
* ``nms``: torchvision's tiled suppression mask: one block of 64 threads per pair of 64-box
  tiles, each thread one row box against the 64 column boxes held in shared memory, writing
  one 64-bit word; the greedy pass over the mask runs on the host.

Arithmetic: the geometry is :mod:`refimpl.ops.geometry`, compiled as device functions, in the
input dtype ``F`` and in torchvision's operation order. Kernels are specialized per dtype by a
cached factory that closes over ``F`` (a compile-time constant in the kernel).

References: Mask R-CNN (He et al., 2017) sec. 3 "RoIAlign" and Table 2c (RoIWarp, max/avg);
Fast R-CNN (Girshick, 2015) sec. 2.1 and eq. 4 (RoIPool and its backward); the semantics in
``docs/spec/roi-ops.md``.
"""

from __future__ import annotations

import functools
import math
from types import SimpleNamespace

import numpy as np
from numba import cuda

from . import geometry as g
from .validate import (
    FLOAT_DTYPES,
    check_argmax,
    check_boxes,
    check_nms_args,
    check_pool_mode,
    check_roi_args,
    check_spatial_scale,
)

THREADS_PER_BLOCK = 256
# A grid-stride loop lets the grid stay small: an H100 holds 132 SMs x 8 resident blocks of
# 256 threads = 1056 blocks; 4096 blocks (about four waves) keeps every SM busy and bounds
# the launch. Tests lower it to exercise the stride.
MAX_BLOCKS = 4096
NMS_TILE = 64  # boxes per tile = bits per mask word
# PrRoIPool's backward: at most this many threads per block (one block per RoI, a power of
# two for the tree reduction); tests lower it to exercise the stride. The shared memory of
# the reduction is sized, at compile time, for PRROI_MAX_THREADS.
PRROI_THREADS = 128
PRROI_MAX_THREADS = 256

# --- device functions: the shared geometry, compiled for the GPU --------------------------


_G = g.compile_all(cuda.jit(device=True))
_c_round = _G.c_round
_align_box = _G.align_box
_sample_coord = _G.sample_coord
_bilinear_1d = _G.bilinear_1d
_pool_box = _G.pool_box
_pool_bin = _G.pool_bin
_warp_box = _G.warp_box
_box_area = _G.box_area
_box_intersection = _G.box_intersection
_tent_antiderivative = _G.tent_antiderivative
_tent_integral = _G.tent_integral
_tent = _G.tent
_tent_support = _G.tent_support
_prroi_box = _G.prroi_box


@cuda.jit(device=True)
def _roi_grid(F, rois, k, spatial_scale, aligned, quantize, pooled_h, pooled_w, sampling_ratio):
    """The bins and sampling grid of RoI ``k`` (RoIAlign, paper sec. 3).

    With ``quantize`` (RoIWarp) the box is first rounded to integer feature coordinates, as
    RoIPool does, and then sampled at scale 1 without the half-pixel offset: one quantization
    instead of RoIPool's two (the paper's Table 2c).
    """
    x1 = rois[k, 1]
    y1 = rois[k, 2]
    x2 = rois[k, 3]
    y2 = rois[k, 4]
    scale = F(spatial_scale)
    if quantize:
        x1, y1, x2, y2 = _warp_box(F, x1, y1, x2, y2, scale)
        scale = F(1.0)
    return _align_box(F, x1, y1, x2, y2, scale, aligned, pooled_h, pooled_w, sampling_ratio)


# Two memory layouts, one kernel body. ``cl`` (channels-last) is a constant of each compiled
# kernel (the factory closes over it), so the compiler keeps one branch of these accessors.
# NCHW: arrays [N, C, H, W] and [K, C, PH, PW]; channels-last: [N, H, W, C] and [K, PH, PW, C].


@cuda.jit(device=True)
def _at(a, i, c, y, xx, cl):
    """Element ``(i, c, y, xx)`` (image or RoI, channel, row, column) of a 4-D array."""
    if cl:
        return a[i, y, xx, c]
    return a[i, c, y, xx]


@cuda.jit(device=True)
def _put(a, i, c, y, xx, value, cl):
    if cl:
        a[i, y, xx, c] = value
    else:
        a[i, c, y, xx] = value


@cuda.jit(device=True)
def _atomic_add(a, i, c, y, xx, value, cl):
    if cl:
        cuda.atomic.add(a, (i, y, xx, c), value)
    else:
        cuda.atomic.add(a, (i, c, y, xx), value)


@cuda.jit(device=True)
def _dims(a, cl):
    """``(N, C, H, W)`` of a 4-D array in either layout."""
    if cl:
        return a.shape[0], a.shape[3], a.shape[1], a.shape[2]
    return a.shape[0], a.shape[1], a.shape[2], a.shape[3]


@cuda.jit(device=True)
def _bilinear(F, x, b, c, y, xx, height, width, cl):
    """Bilinear sample of plane ``x[b, c]`` at ``(y, xx)``; 0 more than a pixel outside."""
    inside_y, y_low, y_high, wy_low, wy_high = _bilinear_1d(F, y, height)
    inside_x, x_low, x_high, wx_low, wx_high = _bilinear_1d(F, xx, width)
    if not (inside_y and inside_x):
        return F(0.0)
    # Same weights and summation order as the python backend (and torchvision).
    return (
        (wy_low * wx_low) * _at(x, b, c, y_low, x_low, cl)
        + (wy_low * wx_high) * _at(x, b, c, y_low, x_high, cl)
        + (wy_high * wx_low) * _at(x, b, c, y_high, x_low, cl)
        + (wy_high * wx_high) * _at(x, b, c, y_high, x_high, cl)
    )


@cuda.jit(device=True)
def _bilinear_scatter(F, grad_x, b, c, y, xx, height, width, share, cl):
    """Add ``share`` times each bilinear weight to the four pixels the sample at (y, xx) read.

    Atomic: other bins and RoIs may write the same pixels concurrently. At the clamped border
    two corners are the same pixel and it receives both weights, as in the forward.
    """
    inside_y, y_low, y_high, wy_low, wy_high = _bilinear_1d(F, y, height)
    inside_x, x_low, x_high, wx_low, wx_high = _bilinear_1d(F, xx, width)
    if not (inside_y and inside_x):
        return
    _atomic_add(grad_x, b, c, y_low, x_low, share * (wy_low * wx_low), cl)
    _atomic_add(grad_x, b, c, y_low, x_high, share * (wy_low * wx_high), cl)
    _atomic_add(grad_x, b, c, y_high, x_low, share * (wy_high * wx_low), cl)
    _atomic_add(grad_x, b, c, y_high, x_high, share * (wy_high * wx_high), cl)


@cuda.jit(device=True)
def _max_sample(F, x, b, c, ph, pw, grid, h, w, cl):
    """The bin's largest sample: ``(value, iy, ix)``, ``iy = -1`` for an empty grid.
    ``grid``: ``(start_y, start_x, bin_h, bin_w, grid_h, grid_w)`` from :func:`_roi_grid`.

    An outside sample counts as 0; the first maximum wins (``>``), iterating iy then ix.
    The backward calls this too, recomputing the argmax from ``x`` instead of storing it.
    """
    start_y, start_x, bin_h, bin_w, grid_h, grid_w = grid
    best = F(0.0)
    best_iy = -1
    best_ix = -1
    for iy in range(grid_h):
        y = _sample_coord(F, start_y, bin_h, ph, iy, grid_h)
        for ix in range(grid_w):
            xx = _sample_coord(F, start_x, bin_w, pw, ix, grid_w)
            v = _bilinear(F, x, b, c, y, xx, h, w, cl)
            if best_iy < 0 or v > best:
                best = v
                best_iy = iy
                best_ix = ix
    return best, best_iy, best_ix


@cuda.jit(device=True)
def _pool_bin_pixels(F, rois, k, spatial_scale, ph, pw, pooled_h, pooled_w, height, width):
    """The pixel rows ``[h_lo, h_hi)`` and columns ``[w_lo, w_hi)`` of RoIPool's bin
    ``(ph, pw)`` of RoI ``k``: the box rounded to pixels, split by floor and ceil (Fast
    R-CNN sec. 2.1), clipped to the map."""
    start_y, start_x, bin_h, bin_w = _pool_box(
        F, rois[k, 1], rois[k, 2], rois[k, 3], rois[k, 4], F(spatial_scale), pooled_h, pooled_w
    )
    h_lo, h_hi = _pool_bin(F, ph, bin_h, start_y, height)
    w_lo, w_hi = _pool_bin(F, pw, bin_w, start_x, width)
    return h_lo, h_hi, w_lo, w_hi


@cuda.jit(device=True)
def _pool_argmax(F, x, b, c, h_lo, h_hi, w_lo, w_hi, cl):
    """RoIPool's bin maximum: ``(value, y, x)``, the first maximum in row-major order;
    ``y = -1`` (and value 0) for an empty bin."""
    best = F(0.0)
    best_y = -1
    best_x = -1
    for yy in range(h_lo, h_hi):
        for xx in range(w_lo, w_hi):
            v = _at(x, b, c, yy, xx, cl)
            if best_y < 0 or v > best:
                best = v
                best_y = yy
                best_x = xx
    return best, best_y, best_x


@cuda.jit(device=True)
def _prroi_bin(F, rois, k, spatial_scale, aligned, pooled_h, pooled_w, ph, pw):
    """Bin ``(ph, pw)`` of RoI ``k`` for PrRoIPool as real intervals: ``y0, y1, x0, x1`` and
    the bin's area (0 for a zero-size or inverted box), as the python backend computes them."""
    start_y, start_x, bin_h, bin_w = _prroi_box(
        F,
        rois[k, 1],
        rois[k, 2],
        rois[k, 3],
        rois[k, 4],
        F(spatial_scale),
        aligned,
        pooled_h,
        pooled_w,
    )
    y0 = start_y + F(ph) * bin_h
    y1 = start_y + F(ph + 1) * bin_h
    x0 = start_x + F(pw) * bin_w
    x1 = start_x + F(pw + 1) * bin_w
    return y0, y1, x0, x1, bin_h * bin_w


@cuda.jit(device=True)
def _tent_weight(F, lo, hi, i, point):
    """Pixel ``i``'s weight along one axis: its tent's integral over ``[lo, hi]`` (a bin), or,
    for a ``point`` (a bin edge, ``hi == lo``), its tent's value there."""
    if point:
        return _tent(F, lo - F(i))
    return _tent_integral(F, lo, hi, i)


@cuda.jit(device=True)
def _tent_sum(F, x, b, c, y_lo, y_hi, y_point, x_lo, x_hi, x_point, height, width):
    """``sum_ij x[b, c, i, j] * wy_i * wx_j`` over the pixels whose tents overlap the
    intervals (or points): the bin's integral of the bilinear map, or its integral along
    one edge. The python backend's expression and summation order."""
    i_lo, i_hi = _tent_support(y_lo, y_hi, height)
    j_lo, j_hi = _tent_support(x_lo, x_hi, width)
    total = F(0.0)
    for i in range(i_lo, i_hi):
        wy = _tent_weight(F, y_lo, y_hi, i, y_point)
        for j in range(j_lo, j_hi):
            wx = _tent_weight(F, x_lo, x_hi, j, x_point)
            total += x[b, c, i, j] * wy * wx
    return total


@cuda.jit(device=True)
def _unravel(idx, channels, pooled_h, pooled_w, cl):
    """Output element ``idx`` as (k, c, ph, pw): of a C-ordered [K, C, PH, PW] array (pw
    fastest), or channels-last, of a C-ordered [K, PH, PW, C] array (c fastest)."""
    if cl:
        c = idx % channels
        pw = (idx // channels) % pooled_w
        ph = (idx // (channels * pooled_w)) % pooled_h
        k = idx // (channels * pooled_w * pooled_h)
        return k, c, ph, pw
    pw = idx % pooled_w
    ph = (idx // pooled_w) % pooled_h
    c = (idx // (pooled_w * pooled_h)) % channels
    k = idx // (pooled_w * pooled_h * channels)
    return k, c, ph, pw


# --- kernels, one set per dtype ------------------------------------------------------------


@functools.cache
def _kernels(dtype: np.dtype, channels_last: bool = False) -> SimpleNamespace:
    """Compile-on-first-launch kernels for float32 or float64 and one memory layout (``F``
    and ``CL`` are closed over: constants of the compiled code). PrRoIPool, box IoU and NMS
    have one layout; take them from ``_kernels(dtype)``."""
    F = np.dtype(dtype).type
    CL = bool(channels_last)

    @cuda.jit
    def roi_align_forward(x, rois, out, spatial_scale, sampling_ratio, aligned, max_mode, quantize):
        """One thread per output element (k, c, ph, pw): avg or max of the bin's samples."""
        n_images, channels, height, width = _dims(x, CL)
        n_rois, _, pooled_h, pooled_w = _dims(out, CL)
        total = n_rois * channels * pooled_h * pooled_w
        for idx in range(cuda.grid(1), total, cuda.gridsize(1)):
            k, c, ph, pw = _unravel(idx, channels, pooled_h, pooled_w, CL)
            b = int(rois[k, 0])
            if b < 0 or b >= n_images:  # guard only: validation has excluded this
                _put(out, k, c, ph, pw, F(0.0), CL)
                continue
            start_y, start_x, bin_h, bin_w, grid_h, grid_w, count = _roi_grid(
                F, rois, k, spatial_scale, aligned, quantize, pooled_h, pooled_w, sampling_ratio
            )
            if max_mode:
                grid = (start_y, start_x, bin_h, bin_w, grid_h, grid_w)
                value, _, _ = _max_sample(F, x, b, c, ph, pw, grid, height, width, CL)
                _put(out, k, c, ph, pw, value, CL)
            else:
                acc = F(0.0)
                for iy in range(grid_h):
                    y = _sample_coord(F, start_y, bin_h, ph, iy, grid_h)
                    for ix in range(grid_w):
                        xx = _sample_coord(F, start_x, bin_w, pw, ix, grid_w)
                        acc += _bilinear(F, x, b, c, y, xx, height, width, CL)
                _put(out, k, c, ph, pw, acc / count, CL)  # an empty grid: 0 / 1

    @cuda.jit
    def roi_align_backward(
        x, rois, grad_out, grad_x, spatial_scale, sampling_ratio, aligned, max_mode, quantize
    ):
        """One thread per grad_output element, scattering with atomic adds.

        Why atomics, not a gather (one thread per input pixel summing what reaches it): a
        pixel would have to search all K RoIs of its image and, for each, the bins whose
        samples touch it (work ~ N*C*H*W*K, mostly wasted on RoIs that miss the pixel),
        whereas the scatter does exactly the forward's work. The RoIs of a detector spread
        over the image, so few threads hit the same pixel at once and atomics rarely
        contend; float32 and float64 atomic adds are native on sm_60+. This is also what
        torchvision's CUDA kernel does. The price: the summation order varies between runs,
        so the result is not bitwise deterministic (equal up to rounding).
        """
        n_images, channels, height, width = _dims(x, CL)
        n_rois, _, pooled_h, pooled_w = _dims(grad_out, CL)
        total = n_rois * channels * pooled_h * pooled_w
        for idx in range(cuda.grid(1), total, cuda.gridsize(1)):
            k, c, ph, pw = _unravel(idx, channels, pooled_h, pooled_w, CL)
            b = int(rois[k, 0])
            if b < 0 or b >= n_images:
                continue
            start_y, start_x, bin_h, bin_w, grid_h, grid_w, count = _roi_grid(
                F, rois, k, spatial_scale, aligned, quantize, pooled_h, pooled_w, sampling_ratio
            )
            grad = _at(grad_out, k, c, ph, pw, CL)
            if max_mode:
                # The gradient of a max goes, undivided, to the winning sample only.
                grid = (start_y, start_x, bin_h, bin_w, grid_h, grid_w)
                _, best_iy, best_ix = _max_sample(F, x, b, c, ph, pw, grid, height, width, CL)
                if best_iy >= 0:
                    y = _sample_coord(F, start_y, bin_h, ph, best_iy, grid_h)
                    xx = _sample_coord(F, start_x, bin_w, pw, best_ix, grid_w)
                    _bilinear_scatter(F, grad_x, b, c, y, xx, height, width, grad, CL)
            else:
                share = grad / count
                for iy in range(grid_h):
                    y = _sample_coord(F, start_y, bin_h, ph, iy, grid_h)
                    for ix in range(grid_w):
                        xx = _sample_coord(F, start_x, bin_w, pw, ix, grid_w)
                        _bilinear_scatter(F, grad_x, b, c, y, xx, height, width, share, CL)

    def roi_pool_forward_kernel(save_argmax):
        """RoIPool's forward, with or without storing the argmax: one Python body, two
        kernels. ``save_argmax`` is closed over, a compile-time constant like ``CL``: the
        plain kernel has no argmax store at all (its launch passes ``out`` as a stand-in
        that is never written), and both share the arithmetic, so their outputs are equal."""

        @cuda.jit
        def roi_pool_forward(x, rois, out, argmax, spatial_scale):
            """One thread per output element: the maximum of its quantized bin (0 if empty)
            and, with ``save_argmax``, its flat index ``y * W + x`` (-1 if empty)."""
            n_images, channels, height, width = _dims(x, CL)
            n_rois, _, pooled_h, pooled_w = _dims(out, CL)
            total = n_rois * channels * pooled_h * pooled_w
            for idx in range(cuda.grid(1), total, cuda.gridsize(1)):
                k, c, ph, pw = _unravel(idx, channels, pooled_h, pooled_w, CL)
                b = int(rois[k, 0])
                value = F(0.0)
                best_y = -1
                best_x = -1
                if b >= 0 and b < n_images:  # the guard only: validation has excluded this
                    h_lo, h_hi, w_lo, w_hi = _pool_bin_pixels(
                        F, rois, k, spatial_scale, ph, pw, pooled_h, pooled_w, height, width
                    )
                    value, best_y, best_x = _pool_argmax(F, x, b, c, h_lo, h_hi, w_lo, w_hi, CL)
                _put(out, k, c, ph, pw, value, CL)
                if save_argmax:
                    index = -1  # an empty bin (or a guarded RoI)
                    if best_y >= 0:
                        index = best_y * width + best_x
                    _put(argmax, k, c, ph, pw, index, CL)

        return roi_pool_forward

    roi_pool_forward = roi_pool_forward_kernel(False)
    roi_pool_forward_argmax = roi_pool_forward_kernel(True)

    @cuda.jit
    def roi_pool_backward(x, rois, grad_out, grad_x, spatial_scale):
        """One thread per grad_output element: recompute the bin's argmax from x, then an
        atomic add there (Fast R-CNN eq. 4; bins of one RoI and of different RoIs overlap)."""
        n_images, channels, height, width = _dims(x, CL)
        n_rois, _, pooled_h, pooled_w = _dims(grad_out, CL)
        total = n_rois * channels * pooled_h * pooled_w
        for idx in range(cuda.grid(1), total, cuda.gridsize(1)):
            k, c, ph, pw = _unravel(idx, channels, pooled_h, pooled_w, CL)
            b = int(rois[k, 0])
            if b < 0 or b >= n_images:
                continue
            h_lo, h_hi, w_lo, w_hi = _pool_bin_pixels(
                F, rois, k, spatial_scale, ph, pw, pooled_h, pooled_w, height, width
            )
            _, best_y, best_x = _pool_argmax(F, x, b, c, h_lo, h_hi, w_lo, w_hi, CL)
            if best_y >= 0:
                _atomic_add(grad_x, b, c, best_y, best_x, _at(grad_out, k, c, ph, pw, CL), CL)

    @cuda.jit
    def roi_pool_backward_argmax(rois, argmax, grad_out, grad_x):
        """One thread per grad_output element: an atomic add at the forward's saved argmax
        (Fast R-CNN eq. 4), no search and no read of x. The bounds test is a guard only
        (the host validates argmax): a bad index must not write outside its plane."""
        n_images, channels, height, width = _dims(grad_x, CL)
        n_rois, _, pooled_h, pooled_w = _dims(grad_out, CL)
        total = n_rois * channels * pooled_h * pooled_w
        for idx in range(cuda.grid(1), total, cuda.gridsize(1)):
            k, c, ph, pw = _unravel(idx, channels, pooled_h, pooled_w, CL)
            b = int(rois[k, 0])
            a = _at(argmax, k, c, ph, pw, CL)
            if b < 0 or b >= n_images or a < 0 or a >= height * width:
                continue  # -1: an empty bin, which passes no gradient
            _atomic_add(grad_x, b, c, a // width, a % width, _at(grad_out, k, c, ph, pw, CL), CL)

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
            inter = _box_intersection(F, ax1, ay1, ax2, ay2, bx1, by1, bx2, by2)
            union = _box_area(ax1, ay1, ax2, ay2) + _box_area(bx1, by1, bx2, by2) - inter
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
            area_a = _box_area(ax1, ay1, ax2, ay2)
            bits = np.uint64(0)
            if row_tile <= col_tile:  # tiles below the diagonal hold only earlier boxes
                first = t + 1 if row_tile == col_tile else 0
                for j in range(first, col_size):
                    bx1, by1, bx2, by2 = tile[j, 0], tile[j, 1], tile[j, 2], tile[j, 3]
                    inter = _box_intersection(F, ax1, ay1, ax2, ay2, bx1, by1, bx2, by2)
                    iou = inter / (area_a + _box_area(bx1, by1, bx2, by2) - inter)
                    # F vs float64 threshold: compared in float64, as torchvision's C++.
                    # NaN (0 / 0) compares False: an empty box suppresses nothing.
                    if iou > iou_threshold:
                        bits |= np.uint64(1) << np.uint64(j)
            mask[i, col_tile] = bits

    @cuda.jit
    def prroi_pool_forward(x, rois, out, spatial_scale, aligned):
        """One thread per output element (k, c, ph, pw): the exact integral of the bilinear
        map over the bin, a sum of pixel values times tent integrals along y and x (IoU-Net
        sec. 3.3), divided by the bin's area; a zero-area bin gives 0."""
        n_images, channels, height, width = x.shape
        n_rois, _, pooled_h, pooled_w = out.shape
        total = n_rois * channels * pooled_h * pooled_w
        for idx in range(cuda.grid(1), total, cuda.gridsize(1)):
            k, c, ph, pw = _unravel(idx, channels, pooled_h, pooled_w, False)
            b = int(rois[k, 0])
            y0, y1, x0, x1, area = _prroi_bin(
                F, rois, k, spatial_scale, aligned, pooled_h, pooled_w, ph, pw
            )
            if b < 0 or b >= n_images or not area > F(0.0):
                out[k, c, ph, pw] = F(0.0)
                continue
            integral = _tent_sum(F, x, b, c, y0, y1, False, x0, x1, False, height, width)
            out[k, c, ph, pw] = integral / area

    @cuda.jit
    def prroi_pool_backward(x, rois, grad_out, grad_x, grad_rois, spatial_scale, aligned):
        """One block per RoI (a block-stride loop over RoIs); its threads stride over the
        RoI's grad_output elements (c, ph, pw).

        Each element scatters ``grad * wy_i * wx_j / area`` into ``grad_x`` with atomic
        adds (as RoIAlign's backward), and computes its bin's contribution to the box
        gradient: Leibniz's rule per bin edge (the map's integral along the edge minus the
        output times the edge's length, over the area; see the python backend), chained to
        the box corners. Every element of a RoI adds to the same four numbers: atomics there
        would serialize a whole RoI's threads on four addresses, so the block reduces them
        in shared memory instead (a tree), and thread 0 adds the sums to ``grad_rois[k]``.
        The box gradient is thus deterministic; ``grad_x``, as for RoIAlign, is equal up to
        rounding between runs.
        """
        n_images, channels, height, width = x.shape
        n_rois, _, pooled_h, pooled_w = grad_out.shape
        per_roi = channels * pooled_h * pooled_w
        t = cuda.threadIdx.x
        partial = cuda.shared.array((PRROI_MAX_THREADS, 4), dtype=F)
        scale = F(spatial_scale)
        one = F(1.0)
        for k in range(cuda.blockIdx.x, n_rois, cuda.gridDim.x):
            b = int(rois[k, 0])
            n_elements = per_roi if b >= 0 and b < n_images else 0  # guard only
            d_x1 = F(0.0)  # dLoss / d(box x1), this thread's share; likewise below
            d_y1 = F(0.0)
            d_x2 = F(0.0)
            d_y2 = F(0.0)
            for e in range(t, n_elements, cuda.blockDim.x):
                c = e // (pooled_h * pooled_w)
                ph = (e // pooled_w) % pooled_h
                pw = e % pooled_w
                y0, y1, x0, x1, area = _prroi_bin(
                    F, rois, k, spatial_scale, aligned, pooled_h, pooled_w, ph, pw
                )
                if not area > F(0.0):
                    continue  # a zero-area bin pools to 0 and passes no gradient
                grad = grad_out[k, c, ph, pw]
                i_lo, i_hi = _tent_support(y0, y1, height)
                j_lo, j_hi = _tent_support(x0, x1, width)
                for i in range(i_lo, i_hi):
                    wy = _tent_integral(F, y0, y1, i)
                    for j in range(j_lo, j_hi):
                        wx = _tent_integral(F, x0, x1, j)
                        cuda.atomic.add(grad_x, (b, c, i, j), grad * wy * wx / area)
                out = _tent_sum(F, x, b, c, y0, y1, False, x0, x1, False, height, width) / area
                along_y0 = _tent_sum(F, x, b, c, y0, y0, True, x0, x1, False, height, width)
                along_y1 = _tent_sum(F, x, b, c, y1, y1, True, x0, x1, False, height, width)
                along_x0 = _tent_sum(F, x, b, c, y0, y1, False, x0, x0, True, height, width)
                along_x1 = _tent_sum(F, x, b, c, y0, y1, False, x1, x1, True, height, width)
                extent_x = x1 - x0  # the length of the horizontal edges
                extent_y = y1 - y0
                e_y0 = grad * -one * (along_y0 - out * extent_x) / area
                e_y1 = grad * one * (along_y1 - out * extent_x) / area
                e_x0 = grad * -one * (along_x0 - out * extent_y) / area
                e_x1 = grad * one * (along_x1 - out * extent_y) / area
                # edge y0 of bin ph is y1_box + ph / PH * (y2_box - y1_box), times the scale
                fy0 = F(ph) / F(pooled_h)
                fy1 = F(ph + 1) / F(pooled_h)
                fx0 = F(pw) / F(pooled_w)
                fx1 = F(pw + 1) / F(pooled_w)
                d_x1 += scale * (e_x0 * (one - fx0) + e_x1 * (one - fx1))
                d_x2 += scale * (e_x0 * fx0 + e_x1 * fx1)
                d_y1 += scale * (e_y0 * (one - fy0) + e_y1 * (one - fy1))
                d_y2 += scale * (e_y0 * fy0 + e_y1 * fy1)
            partial[t, 0] = d_x1
            partial[t, 1] = d_y1
            partial[t, 2] = d_x2
            partial[t, 3] = d_y2
            cuda.syncthreads()
            stride = cuda.blockDim.x // 2  # blockDim.x is a power of two
            while stride > 0:
                if t < stride:
                    for d in range(4):
                        partial[t, d] += partial[t + stride, d]
                cuda.syncthreads()
                stride //= 2
            if t == 0:
                for d in range(4):
                    grad_rois[k, d + 1] += partial[0, d]
            cuda.syncthreads()  # partial is reused by the next RoI

    return SimpleNamespace(
        prroi_pool_forward=prroi_pool_forward,
        prroi_pool_backward=prroi_pool_backward,
        roi_align_forward=roi_align_forward,
        roi_align_backward=roi_align_backward,
        roi_pool_forward=roi_pool_forward,
        roi_pool_forward_argmax=roi_pool_forward_argmax,
        roi_pool_backward=roi_pool_backward,
        roi_pool_backward_argmax=roi_pool_backward_argmax,
        box_iou=box_iou,
        nms_mask=nms_mask,
    )


# --- launch layer: device arrays in, device arrays out -------------------------------------


def _device(a, name: str):
    """``a`` as a numba device array: numba's own pass through; anything else exposing
    ``__cuda_array_interface__`` (a torch CUDA tensor) is wrapped without a copy."""
    if hasattr(a, "copy_to_host") and hasattr(a, "shape") and hasattr(a, "dtype"):
        return a  # a numba device array (or the simulator's stand-in)
    if hasattr(a, "__cuda_array_interface__") and hasattr(cuda, "as_cuda_array"):
        return cuda.as_cuda_array(a)
    raise TypeError(
        f"{name} must be a device array (numba device array or an object with "
        f"__cuda_array_interface__), got {type(a).__name__}"
    )


def _check_shape(name: str, a, shape: tuple) -> None:
    if tuple(a.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(a.shape)}")


def _check_dtype(name: str, a, dtype) -> None:
    if np.dtype(a.dtype) != np.dtype(dtype):
        raise TypeError(f"{name} must have dtype {np.dtype(dtype)}, got {np.dtype(a.dtype)}")


def _check_contiguous(name: str, a) -> None:
    # Outputs are written element by element and accumulated atomically: overlapping
    # memory (e.g. a broadcast view) would race, so insist on a plain C-ordered buffer.
    if not a.is_c_contiguous():
        raise ValueError(f"{name} must be C-contiguous")


def _launch_size(n: int) -> tuple[int, int]:
    """(blocks, threads) for ``n`` work items in a grid-stride loop.

    Small problems get a smaller block (a warp multiple): the same result, less idle work.
    """
    threads = min(THREADS_PER_BLOCK, 32 * ((n + 31) // 32))
    blocks = min(MAX_BLOCKS, (n + threads - 1) // threads)
    return blocks, threads


def _roi_arrays(x, rois, out, out_name: str, channels_last: bool = False, x_name: str = "x"):
    """Device views of x, rois and the pooled array; their shapes and dtypes agree. NCHW:
    x [N, C, H, W], out [K, C, PH, PW]; channels-last: x [N, H, W, C], out [K, PH, PW, C].
    ``x_name``: the name errors give x (``grad_x`` when it stands in for x)."""
    x = _device(x, x_name)
    rois = _device(rois, "rois")
    out = _device(out, out_name)
    x_dims, out_dims, axis = ("[N, C, H, W]", "C, PH, PW", 1)
    if channels_last:
        x_dims, out_dims, axis = ("[N, H, W, C]", "PH, PW, C", 3)
    if len(x.shape) != 4:
        raise ValueError(f"{x_name} must have shape {x_dims}, got {tuple(x.shape)}")
    if np.dtype(x.dtype) not in FLOAT_DTYPES:
        raise TypeError(f"{x_name} must have dtype float32 or float64, got {np.dtype(x.dtype)}")
    if len(rois.shape) != 2 or rois.shape[1] != 5:
        raise ValueError(f"rois must have shape [K, 5], got {tuple(rois.shape)}")
    _check_dtype("rois", rois, x.dtype)
    if len(out.shape) != 4 or out.shape[0] != rois.shape[0] or out.shape[axis] != x.shape[axis]:
        dims = out_dims.replace("C", f"C={x.shape[axis]}")
        raise ValueError(
            f"{out_name} must have shape [K={rois.shape[0]}, {dims}], got {tuple(out.shape)}"
        )
    _check_dtype(out_name, out, x.dtype)
    return x, rois, out


def _grad_x(grad_x, x):
    """grad_x as a device array of x's shape and dtype, C-contiguous (it is accumulated into)."""
    grad_x = _device(grad_x, "grad_x")
    _check_shape("grad_x", grad_x, x.shape)
    _check_dtype("grad_x", grad_x, x.dtype)
    _check_contiguous("grad_x", grad_x)
    return grad_x


def _argmax(argmax, shape: tuple, contiguous: bool):
    """RoIPool's argmax as a device array: int64 of the pooled array's ``shape``. Only its
    shape and dtype are checked here; its values are the caller's concern."""
    argmax = _device(argmax, "argmax")
    _check_shape("argmax", argmax, shape)
    _check_dtype("argmax", argmax, np.int64)
    if contiguous:
        _check_contiguous("argmax", argmax)
    return argmax


def _check_sampling_ratio(sampling_ratio) -> int:
    if isinstance(sampling_ratio, bool) or not isinstance(sampling_ratio, (int, np.integer)):
        raise TypeError(f"sampling_ratio must be an int, got {type(sampling_ratio).__name__}")
    return int(sampling_ratio)


def _launch_align_forward(arrays, params, quantize, stream, channels_last):
    """RoIAlign / RoIWarp forward: ``arrays = (x, rois, out)``, ``params = (spatial_scale,
    sampling_ratio, aligned, pool_mode)``; ``quantize``: RoIWarp's rounding of the box."""
    x, rois, out = arrays
    spatial_scale, sampling_ratio, aligned, mode = params
    x, rois, out = _roi_arrays(x, rois, out, "out", channels_last)
    _check_contiguous("out", out)
    scale = check_spatial_scale(spatial_scale)
    sampling_ratio = _check_sampling_ratio(sampling_ratio)
    max_mode = check_pool_mode(mode) == "max"
    n = math.prod(out.shape)
    if n == 0:
        return out
    blocks, threads = _launch_size(n)
    _kernels(x.dtype, channels_last).roi_align_forward[blocks, threads, stream](
        x,
        rois,
        out,
        np.float64(scale),
        np.int64(sampling_ratio),
        bool(aligned),
        max_mode,
        quantize,
    )
    return out


def _launch_align_backward(arrays, params, quantize, stream, channels_last):
    """The backward of :func:`_launch_align_forward`: ``arrays = (x, rois, grad_out,
    grad_x)``, ``params`` as the forward's."""
    x, rois, grad_out, grad_x = arrays
    spatial_scale, sampling_ratio, aligned, mode = params
    x, rois, grad_out = _roi_arrays(x, rois, grad_out, "grad_out", channels_last)
    grad_x = _grad_x(grad_x, x)
    scale = check_spatial_scale(spatial_scale)
    sampling_ratio = _check_sampling_ratio(sampling_ratio)
    max_mode = check_pool_mode(mode) == "max"
    n = math.prod(grad_out.shape)
    if n == 0:
        return grad_x
    blocks, threads = _launch_size(n)
    _kernels(x.dtype, channels_last).roi_align_backward[blocks, threads, stream](
        x,
        rois,
        grad_out,
        grad_x,
        np.float64(scale),
        np.int64(sampling_ratio),
        bool(aligned),
        max_mode,
        quantize,
    )
    return grad_x


def _launch_pool_forward(x, rois, out, argmax, spatial_scale, stream, channels_last):
    """RoIPool's forward; with ``argmax`` (not None) the kernel that also stores it."""
    x, rois, out = _roi_arrays(x, rois, out, "out", channels_last)
    _check_contiguous("out", out)
    if argmax is not None:
        argmax = _argmax(argmax, out.shape, contiguous=True)
    scale = check_spatial_scale(spatial_scale)
    n = math.prod(out.shape)
    if n == 0:
        return out, argmax
    blocks, threads = _launch_size(n)
    kernels = _kernels(x.dtype, channels_last)
    if argmax is None:
        # The plain kernel never touches its argmax parameter: out stands in for it.
        kernels.roi_pool_forward[blocks, threads, stream](x, rois, out, out, np.float64(scale))
    else:
        kernels.roi_pool_forward_argmax[blocks, threads, stream](
            x, rois, out, argmax, np.float64(scale)
        )
    return out, argmax


def _launch_pool_backward(x, rois, grad_out, grad_x, spatial_scale, stream, channels_last):
    x, rois, grad_out = _roi_arrays(x, rois, grad_out, "grad_out", channels_last)
    grad_x = _grad_x(grad_x, x)
    scale = check_spatial_scale(spatial_scale)
    n = math.prod(grad_out.shape)
    if n == 0:
        return grad_x
    blocks, threads = _launch_size(n)
    _kernels(x.dtype, channels_last).roi_pool_backward[blocks, threads, stream](
        x, rois, grad_out, grad_x, np.float64(scale)
    )
    return grad_x


def _launch_pool_backward_from_argmax(rois, grad_out, argmax, grad_x, stream, channels_last):
    # grad_x stands in for x: only its shape is needed (the argmax replaces the search).
    grad_x, rois, grad_out = _roi_arrays(
        grad_x, rois, grad_out, "grad_out", channels_last, x_name="grad_x"
    )
    _check_contiguous("grad_x", grad_x)
    argmax = _argmax(argmax, grad_out.shape, contiguous=False)
    n = math.prod(grad_out.shape)
    if n == 0:
        return grad_x
    blocks, threads = _launch_size(n)
    _kernels(grad_x.dtype, channels_last).roi_pool_backward_argmax[blocks, threads, stream](
        rois, argmax, grad_out, grad_x
    )
    return grad_x


def launch_roi_align_forward(
    x, rois, out, spatial_scale, sampling_ratio, aligned, pool_mode="avg", stream=0
):
    """Launch RoIAlign's forward (Mask R-CNN sec. 3) on device arrays; returns ``out``.

    ``x`` [N, C, H, W] and ``rois`` [K, 5] (batch_index, x1, y1, x2, y2) are device arrays of
    one dtype, float32 or float64 (any strides); ``out`` [K, C, PH, PW] of that dtype,
    C-contiguous, is overwritten (its shape gives the output size). ``spatial_scale`` > 0,
    ``sampling_ratio`` int (<= 0: adaptive), ``aligned`` bool, ``pool_mode`` "avg" | "max".
    The caller must have validated the *values* (as :func:`refimpl.ops.validate.check_rois`
    does): finite coordinates within +-2**24 feature pixels, integral batch indices in
    [0, N). Asynchronous on ``stream`` (a numba stream, or 0 for the default stream; for
    torch, ``cuda.external_stream(torch.cuda.current_stream().cuda_stream)``).
    """
    return _launch_align_forward(
        (x, rois, out), (spatial_scale, sampling_ratio, aligned, pool_mode), False, stream, False
    )


def launch_roi_align_backward(
    x, rois, grad_out, grad_x, spatial_scale, sampling_ratio, aligned, pool_mode="avg", stream=0
):
    """Launch RoIAlign's backward on device arrays; returns ``grad_x``.

    Arguments as :func:`launch_roi_align_forward`, plus ``grad_out`` [K, C, PH, PW] (any
    strides) and ``grad_x`` [N, C, H, W], C-contiguous, both of x's dtype. ``grad_x`` is
    **accumulated into** with atomic adds: pass it zeroed. ``x`` is read only in max mode
    (the argmax is recomputed), but its shape and dtype are always required.
    """
    params = (spatial_scale, sampling_ratio, aligned, pool_mode)
    return _launch_align_backward((x, rois, grad_out, grad_x), params, False, stream, False)


def launch_roi_warp_forward(x, rois, out, spatial_scale, sampling_ratio, pool_mode="max", stream=0):
    """Launch RoIWarp's forward (RoIAlign of the once-quantized box; Mask R-CNN Table 2c).

    Contract as :func:`launch_roi_align_forward` (there is no ``aligned``). The boxes are
    rounded in the kernel: pass the original ``rois``.
    """
    return _launch_align_forward(
        (x, rois, out), (spatial_scale, sampling_ratio, False, pool_mode), True, stream, False
    )


def launch_roi_warp_backward(
    x, rois, grad_out, grad_x, spatial_scale, sampling_ratio, pool_mode="max", stream=0
):
    """Launch RoIWarp's backward; contract as :func:`launch_roi_align_backward`."""
    params = (spatial_scale, sampling_ratio, False, pool_mode)
    return _launch_align_backward((x, rois, grad_out, grad_x), params, True, stream, False)


def launch_roi_pool_forward(x, rois, out, spatial_scale, stream=0):
    """Launch RoIPool's forward (Fast R-CNN sec. 2.1) on device arrays; returns ``out``.

    Shapes, dtypes and the caller's validation as :func:`launch_roi_align_forward`. No argmax
    is stored: the backward recomputes it from ``x`` (for a stored one, see
    :func:`launch_roi_pool_forward_with_argmax`).
    """
    return _launch_pool_forward(x, rois, out, None, spatial_scale, stream, False)[0]


def launch_roi_pool_backward(x, rois, grad_out, grad_x, spatial_scale, stream=0):
    """Launch RoIPool's backward (Fast R-CNN eq. 4); returns ``grad_x``.

    As :func:`launch_roi_align_backward`: ``grad_x`` is accumulated into (pass it zeroed);
    ``x`` is read to recompute each bin's argmax (the first maximum in row-major order).
    """
    return _launch_pool_backward(x, rois, grad_out, grad_x, spatial_scale, stream, False)


# RoIPool with a saved argmax, as torchvision's CUDA RoIPool: the forward stores where each
# bin's maximum is, the backward scatters there without reading x or searching the bins
# again. It costs an int64 array the size of the output, kept from forward to backward.


def launch_roi_pool_forward_with_argmax(x, rois, out, argmax, spatial_scale, stream=0):
    """Launch RoIPool's forward storing the argmax; returns ``(out, argmax)``.

    As :func:`launch_roi_pool_forward` (``out`` is bitwise the same), plus ``argmax``: int64
    of ``out``'s shape, C-contiguous, overwritten with each bin's flat index ``y * W + x``
    into its image plane, the first maximum in row-major order (-1 for an empty bin).
    """
    return _launch_pool_forward(x, rois, out, argmax, spatial_scale, stream, False)


def launch_roi_pool_backward_from_argmax(rois, grad_out, argmax, grad_x, stream=0):
    """Launch RoIPool's backward from the forward's argmax (Fast R-CNN eq. 4); returns
    ``grad_x``: ``grad_x[b, c, argmax // W, argmax % W] += grad_out`` per element.

    ``grad_out`` [K, C, PH, PW] (any strides) and ``argmax`` (int64, its shape, any strides)
    as the forward gave them; ``rois`` [K, 5] and ``grad_x`` [N, C, H, W] (C-contiguous) of
    grad_out's dtype. ``grad_x`` is **accumulated into** with atomic adds: pass it zeroed.
    The caller must have validated the rois (as :func:`launch_roi_align_forward`) and the
    argmax values (in ``[-1, H * W)``, as :func:`refimpl.ops.validate.check_argmax`); an
    element whose batch index or argmax is out of range is skipped, never written out of
    bounds.
    """
    return _launch_pool_backward_from_argmax(rois, grad_out, argmax, grad_x, stream, False)


# --- the same launches on channels-last arrays ----------------------------------------------
#
# Threads are laid along the channels: a warp's 32 threads share one RoI bin and take 32
# consecutive channels (FPN has 256), so each bilinear corner (or RoIPool pixel) the warp
# reads is one coalesced 128-byte transaction of an [N, H, W, C] map, fully used, and the
# warp writes a contiguous run of the output. In NCHW a warp's lanes take consecutive pw
# (then ph) of one plane: samples a bin width apart over several rows, several cache lines
# per read, mostly wasted. In the backward the warp's 32 atomic adds go to 32 consecutive
# addresses, where in NCHW neighbouring bins of a small RoI share corner pixels and their
# atomics serialize. The price: the caller provides channels-last data (a torch caller:
# ``x.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1)``, no copy when the
# features already are channels-last). Same arithmetic and iteration order as NCHW: the
# forwards are bitwise equal, the max modes pick the same first maximum.


def launch_roi_align_forward_nhwc(
    x, rois, out, spatial_scale, sampling_ratio, aligned, pool_mode="avg", stream=0
):
    """:func:`launch_roi_align_forward` on channels-last arrays: ``x`` [N, H, W, C] (any
    strides; C-contiguous is the fast case), ``out`` [K, PH, PW, C], C-contiguous."""
    return _launch_align_forward(
        (x, rois, out), (spatial_scale, sampling_ratio, aligned, pool_mode), False, stream, True
    )


def launch_roi_align_backward_nhwc(
    x, rois, grad_out, grad_x, spatial_scale, sampling_ratio, aligned, pool_mode="avg", stream=0
):
    """:func:`launch_roi_align_backward` on channels-last arrays: ``grad_out`` [K, PH, PW, C]
    (any strides, e.g. a permuted view of an NCHW gradient), ``grad_x`` [N, H, W, C],
    C-contiguous, accumulated into (pass it zeroed); in avg mode it may stand in for ``x``."""
    params = (spatial_scale, sampling_ratio, aligned, pool_mode)
    return _launch_align_backward((x, rois, grad_out, grad_x), params, False, stream, True)


def launch_roi_warp_forward_nhwc(
    x, rois, out, spatial_scale, sampling_ratio, pool_mode="max", stream=0
):
    """:func:`launch_roi_warp_forward` on channels-last arrays (as
    :func:`launch_roi_align_forward_nhwc`)."""
    return _launch_align_forward(
        (x, rois, out), (spatial_scale, sampling_ratio, False, pool_mode), True, stream, True
    )


def launch_roi_warp_backward_nhwc(
    x, rois, grad_out, grad_x, spatial_scale, sampling_ratio, pool_mode="max", stream=0
):
    """:func:`launch_roi_warp_backward` on channels-last arrays (as
    :func:`launch_roi_align_backward_nhwc`)."""
    params = (spatial_scale, sampling_ratio, False, pool_mode)
    return _launch_align_backward((x, rois, grad_out, grad_x), params, True, stream, True)


def launch_roi_pool_forward_nhwc(x, rois, out, spatial_scale, stream=0):
    """:func:`launch_roi_pool_forward` on channels-last arrays (as
    :func:`launch_roi_align_forward_nhwc`)."""
    return _launch_pool_forward(x, rois, out, None, spatial_scale, stream, True)[0]


def launch_roi_pool_backward_nhwc(x, rois, grad_out, grad_x, spatial_scale, stream=0):
    """:func:`launch_roi_pool_backward` on channels-last arrays (as
    :func:`launch_roi_align_backward_nhwc`; ``x`` is read to recompute the argmax)."""
    return _launch_pool_backward(x, rois, grad_out, grad_x, spatial_scale, stream, True)


def launch_roi_pool_forward_with_argmax_nhwc(x, rois, out, argmax, spatial_scale, stream=0):
    """:func:`launch_roi_pool_forward_with_argmax` on channels-last arrays: ``x``
    [N, H, W, C], ``out`` and ``argmax`` [K, PH, PW, C], both C-contiguous (the argmax
    indices are still ``y * W + x`` within an image plane)."""
    return _launch_pool_forward(x, rois, out, argmax, spatial_scale, stream, True)


def launch_roi_pool_backward_from_argmax_nhwc(rois, grad_out, argmax, grad_x, stream=0):
    """:func:`launch_roi_pool_backward_from_argmax` on channels-last arrays: ``grad_out`` and
    ``argmax`` [K, PH, PW, C] (any strides), ``grad_x`` [N, H, W, C], C-contiguous."""
    return _launch_pool_backward_from_argmax(rois, grad_out, argmax, grad_x, stream, True)


def launch_prroi_pool_forward(x, rois, out, spatial_scale, aligned, stream=0):
    """Launch PrRoIPool's forward (IoU-Net, Jiang et al. 2018, sec. 3.3); returns ``out``.

    Shapes, dtypes, ``stream`` and the caller's validation as
    :func:`launch_roi_align_forward`; ``aligned`` shifts the box by half a pixel. Every
    element of ``out`` is written (a zero-area bin writes 0).
    """
    x, rois, out = _roi_arrays(x, rois, out, "out")
    _check_contiguous("out", out)
    scale = check_spatial_scale(spatial_scale)
    n = math.prod(out.shape)
    if n == 0:
        return out
    blocks, threads = _launch_size(n)
    _kernels(x.dtype).prroi_pool_forward[blocks, threads, stream](
        x, rois, out, np.float64(scale), bool(aligned)
    )
    return out


def _prroi_block_size(per_roi: int) -> int:
    """Threads per block of PrRoIPool's backward: a power of two from one warp up to
    ``PRROI_THREADS``, no larger than needed for the RoI's ``C * PH * PW`` elements."""
    limit = min(PRROI_THREADS, PRROI_MAX_THREADS)
    threads = 32
    while threads < min(per_roi, limit):
        threads *= 2
    return threads


def launch_prroi_pool_backward(
    x, rois, grad_out, grad_x, grad_rois, spatial_scale, aligned, stream=0
):
    """Launch PrRoIPool's backward, to the input and to the boxes; returns
    ``(grad_x, grad_rois)``.

    Arguments as :func:`launch_roi_align_backward`, plus ``grad_rois`` [K, 5] of rois'
    dtype, C-contiguous. ``x`` is read (the box gradient integrates the map along the bin
    edges). Both ``grad_x`` and ``grad_rois[:, 1:]`` are **accumulated into**: pass them
    zeroed; ``grad_rois[:, 0]`` (the batch index) is not written. One block per RoI, at
    most :data:`MAX_BLOCKS` blocks (a block-stride loop over the RoIs).
    """
    x, rois, grad_out = _roi_arrays(x, rois, grad_out, "grad_out")
    grad_x = _grad_x(grad_x, x)
    grad_rois = _device(grad_rois, "grad_rois")
    _check_shape("grad_rois", grad_rois, rois.shape)
    _check_dtype("grad_rois", grad_rois, x.dtype)
    _check_contiguous("grad_rois", grad_rois)
    scale = check_spatial_scale(spatial_scale)
    if math.prod(grad_out.shape) == 0:
        return grad_x, grad_rois
    n_rois, channels, pooled_h, pooled_w = grad_out.shape
    blocks = min(MAX_BLOCKS, n_rois)
    threads = _prroi_block_size(channels * pooled_h * pooled_w)
    _kernels(x.dtype).prroi_pool_backward[blocks, threads, stream](
        x, rois, grad_out, grad_x, grad_rois, np.float64(scale), bool(aligned)
    )
    return grad_x, grad_rois


def launch_box_iou(boxes1, boxes2, iou, stream=0):
    """Launch the pairwise IoU: ``boxes1`` [N, 4], ``boxes2`` [M, 4] (x1, y1, x2, y2) and
    ``iou`` [N, M] (C-contiguous, overwritten) device arrays of one float dtype; returns
    ``iou``. Finite coordinates are the caller's concern."""
    boxes1 = _device(boxes1, "boxes1")
    boxes2 = _device(boxes2, "boxes2")
    iou = _device(iou, "iou")
    if np.dtype(boxes1.dtype) not in FLOAT_DTYPES:
        raise TypeError(f"boxes1 must have dtype float32 or float64, got {boxes1.dtype}")
    for name, b in (("boxes1", boxes1), ("boxes2", boxes2)):
        if len(b.shape) != 2 or b.shape[1] != 4:
            raise ValueError(f"{name} must have shape [N, 4], got {tuple(b.shape)}")
    _check_dtype("boxes2", boxes2, boxes1.dtype)
    _check_shape("iou", iou, (boxes1.shape[0], boxes2.shape[0]))
    _check_dtype("iou", iou, boxes1.dtype)
    _check_contiguous("iou", iou)
    n = boxes1.shape[0] * boxes2.shape[0]
    if n == 0:
        return iou
    blocks, threads = _launch_size(n)
    _kernels(boxes1.dtype).box_iou[blocks, threads, stream](boxes1, boxes2, iou)
    return iou


def nms_mask_shape(n_boxes: int) -> tuple[int, int]:
    """Shape of the suppression mask for ``n_boxes`` boxes: [n, ceil(n / 64)] of uint64."""
    return n_boxes, (n_boxes + NMS_TILE - 1) // NMS_TILE


def launch_nms_mask(boxes_sorted, mask, iou_threshold, stream=0):
    """Launch the NMS suppression mask on device arrays; returns ``mask``.

    ``boxes_sorted`` [n, 4] (float32 or float64): the boxes already in decreasing score
    order (stable on ties, as ``np.argsort(-scores, kind="stable")`` or
    ``torch.sort(scores, descending=True, stable=True)``). ``mask``: uint64, shape
    :func:`nms_mask_shape`, C-contiguous, overwritten (int64 is accepted too and receives
    the same bits): bit ``j % 64`` of ``mask[i, j // 64]``
    is set when ``j > i`` and IoU(box i, box j) > ``iou_threshold`` (compared in float64).
    Reduce it on the host with :func:`reduce_nms_mask`.
    """
    boxes_sorted = _device(boxes_sorted, "boxes_sorted")
    mask = _device(mask, "mask")
    if np.dtype(boxes_sorted.dtype) not in FLOAT_DTYPES:
        raise TypeError(
            f"boxes_sorted must have dtype float32 or float64, got {boxes_sorted.dtype}"
        )
    if len(boxes_sorted.shape) != 2 or boxes_sorted.shape[1] != 4:
        raise ValueError(f"boxes_sorted must have shape [n, 4], got {tuple(boxes_sorted.shape)}")
    n, tiles = nms_mask_shape(boxes_sorted.shape[0])
    _check_shape("mask", mask, (n, tiles))
    if np.dtype(mask.dtype) == np.int64:
        mask = mask.view(np.uint64)  # the same 64 bits (torch's uint64 support is thin)
    _check_dtype("mask", mask, np.uint64)
    _check_contiguous("mask", mask)
    threshold = float(iou_threshold)
    if not math.isfinite(threshold):
        raise ValueError(f"iou_threshold must be finite, got {iou_threshold!r}")
    if n == 0:
        return mask
    # np.float64 (not a Python float) so that the simulator compares as the GPU does.
    _kernels(boxes_sorted.dtype).nms_mask[(tiles, tiles), NMS_TILE, stream](
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
    n = mask.shape[0]
    removed = np.zeros(mask.shape[1], np.uint64)
    keep = []
    for i in range(n):
        word = int(removed[i // NMS_TILE])
        if not (word >> (i % NMS_TILE)) & 1:
            keep.append(i)
            removed |= mask[i]
    return np.array(keep, dtype=np.int64)


# --- the backend interface: NumPy arrays in and out -----------------------------------------


def _require_device() -> None:
    if not cuda.is_available():
        raise RuntimeError(
            "the 'cuda' backend needs a CUDA GPU, or the CUDA simulator: set "
            "NUMBA_ENABLE_CUDASIM=1 in the environment before numba is imported"
        )


def _align(
    x, rois, grad_output, output_size, spatial_scale, sampling_ratio, aligned, pool_mode, quantize
):
    """Validate, copy in, launch forward (grad_output None) or backward, copy out."""
    a = check_roi_args(
        x, rois, output_size, spatial_scale, sampling_ratio, aligned, pool_mode, grad_output
    )
    _require_device()
    n_rois, channels = a.rois.shape[0], a.x.shape[1]
    params = (a.spatial_scale, a.sampling_ratio, a.aligned, a.pool_mode)
    if grad_output is None:
        shape = (n_rois, channels, a.pooled_h, a.pooled_w)
        if n_rois == 0 or channels == 0:
            return np.zeros(shape, a.x.dtype)
        out = cuda.device_array(shape, a.x.dtype)
        arrays = (cuda.to_device(a.x), cuda.to_device(a.rois), out)
        _launch_align_forward(arrays, params, quantize, 0, False)
        return out.copy_to_host()
    if n_rois == 0 or channels == 0:
        return np.zeros_like(a.x)
    grad_x = cuda.to_device(np.zeros_like(a.x))
    arrays = (cuda.to_device(a.x), cuda.to_device(a.rois), cuda.to_device(a.grad_output), grad_x)
    _launch_align_backward(arrays, params, quantize, 0, False)
    return grad_x.copy_to_host()


def roi_align_forward(
    x, rois, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False, pool_mode="avg"
):
    """RoIAlign (Mask R-CNN sec. 3): average (or max) of bilinear samples in each bin."""
    return _align(
        x, rois, None, output_size, spatial_scale, sampling_ratio, aligned, pool_mode, False
    )


def roi_align_backward(
    x,
    rois,
    grad_output,
    output_size,
    spatial_scale=1.0,
    sampling_ratio=-1,
    aligned=False,
    pool_mode="avg",
):
    """Gradient of RoIAlign with respect to ``x`` (the boxes get none)."""
    return _align(
        x,
        rois,
        grad_output,
        output_size,
        spatial_scale,
        sampling_ratio,
        aligned,
        pool_mode,
        False,
    )


def roi_warp_forward(x, rois, output_size, spatial_scale=1.0, sampling_ratio=-1, pool_mode="max"):
    """RoIWarp: quantize the box once, then sample bilinearly (Mask R-CNN Table 2c)."""
    return _align(x, rois, None, output_size, spatial_scale, sampling_ratio, False, pool_mode, True)


def roi_warp_backward(
    x, rois, grad_output, output_size, spatial_scale=1.0, sampling_ratio=-1, pool_mode="max"
):
    """Gradient of RoIWarp with respect to ``x``."""
    return _align(
        x, rois, grad_output, output_size, spatial_scale, sampling_ratio, False, pool_mode, True
    )


def _pool(x, rois, output_size, spatial_scale, save_argmax):
    """RoIPool's forward on NumPy arrays: ``(y, argmax)``, argmax None unless saved."""
    a = check_roi_args(x, rois, output_size, spatial_scale)
    _require_device()
    shape = (a.rois.shape[0], a.x.shape[1], a.pooled_h, a.pooled_w)
    if math.prod(shape) == 0:
        argmax = np.full(shape, -1, np.int64) if save_argmax else None
        return np.zeros(shape, a.x.dtype), argmax
    out = cuda.device_array(shape, a.x.dtype)
    argmax = cuda.device_array(shape, np.int64) if save_argmax else None
    _launch_pool_forward(
        cuda.to_device(a.x), cuda.to_device(a.rois), out, argmax, a.spatial_scale, 0, False
    )
    return out.copy_to_host(), None if argmax is None else argmax.copy_to_host()


def roi_pool_forward(x, rois, output_size, spatial_scale=1.0):
    """RoIPool (Fast R-CNN sec. 2.1): max over each quantized bin; an empty bin gives 0."""
    return _pool(x, rois, output_size, spatial_scale, False)[0]


def roi_pool_forward_with_argmax(x, rois, output_size, spatial_scale=1.0):
    """:func:`roi_pool_forward` and the argmax: ``(y, argmax)``, ``argmax [K, C, PH, PW]``
    int64 flat indices ``y * W + x`` into each image plane (-1 for an empty bin), what
    :func:`roi_pool_backward_from_argmax` takes (torchvision's CUDA RoIPool saves it so)."""
    return _pool(x, rois, output_size, spatial_scale, True)


def roi_pool_backward(x, rois, grad_output, output_size, spatial_scale=1.0):
    """The gradient of each bin goes to its argmax pixel (Fast R-CNN eq. 4)."""
    a = check_roi_args(x, rois, output_size, spatial_scale, grad_output=grad_output)
    _require_device()
    if a.grad_output.size == 0:
        return np.zeros_like(a.x)
    grad_x = cuda.to_device(np.zeros_like(a.x))
    launch_roi_pool_backward(
        cuda.to_device(a.x),
        cuda.to_device(a.rois),
        cuda.to_device(a.grad_output),
        grad_x,
        a.spatial_scale,
    )
    return grad_x.copy_to_host()


def roi_pool_backward_from_argmax(x, rois, grad_output, argmax, output_size, spatial_scale=1.0):
    """The RoIPool backward given the forward's argmax: ``grad_x[argmax] += grad_output``.
    ``x`` gives only the shape and dtype (it is not copied to the device)."""
    a = check_roi_args(x, rois, output_size, spatial_scale, grad_output=grad_output)
    _, _, height, width = a.x.shape
    argmax = check_argmax(argmax, a.grad_output.shape, height * width)
    _require_device()
    if a.grad_output.size == 0:
        return np.zeros_like(a.x)
    grad_x = cuda.to_device(np.zeros_like(a.x))
    launch_roi_pool_backward_from_argmax(
        cuda.to_device(a.rois),
        cuda.to_device(a.grad_output),
        cuda.to_device(np.ascontiguousarray(argmax)),
        grad_x,
    )
    return grad_x.copy_to_host()


def prroi_pool_forward(x, rois, output_size, spatial_scale=1.0, aligned=False):
    """PrRoIPool: the exact integral of the bilinearly interpolated map over each bin,
    divided by the bin's area (a zero-area bin gives 0). No quantization, no sampling."""
    a = check_roi_args(x, rois, output_size, spatial_scale, aligned=aligned)
    _require_device()
    shape = (a.rois.shape[0], a.x.shape[1], a.pooled_h, a.pooled_w)
    if math.prod(shape) == 0:
        return np.zeros(shape, a.x.dtype)
    out = cuda.device_array(shape, a.x.dtype)
    launch_prroi_pool_forward(
        cuda.to_device(a.x), cuda.to_device(a.rois), out, a.spatial_scale, a.aligned
    )
    return out.copy_to_host()


def prroi_pool_backward(x, rois, grad_output, output_size, spatial_scale=1.0, aligned=False):
    """Gradients of PrRoIPool to the input and to the boxes: ``(grad_x, grad_rois)``, with
    ``grad_rois[:, 0]`` (the batch index) 0 (see :func:`refimpl.ops.python.prroi_pool_backward`)."""
    a = check_roi_args(
        x, rois, output_size, spatial_scale, aligned=aligned, grad_output=grad_output
    )
    _require_device()
    if a.grad_output.size == 0:
        return np.zeros_like(a.x), np.zeros_like(a.rois)
    grad_x = cuda.to_device(np.zeros_like(a.x))
    grad_rois = cuda.to_device(np.zeros_like(a.rois))
    launch_prroi_pool_backward(
        cuda.to_device(a.x),
        cuda.to_device(a.rois),
        cuda.to_device(a.grad_output),
        grad_x,
        grad_rois,
        a.spatial_scale,
        a.aligned,
    )
    return grad_x.copy_to_host(), grad_rois.copy_to_host()


def box_iou(boxes1, boxes2):
    """Intersection over union of every pair: [N, M] (0 / 0 = NaN, as torchvision)."""
    boxes1 = check_boxes("boxes1", boxes1)
    boxes2 = check_boxes("boxes2", boxes2).astype(boxes1.dtype)
    _require_device()
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
    _require_device()
    if boxes.shape[0] == 0:
        return np.zeros(0, np.int64)
    order = np.argsort(-scores, kind="stable")
    mask = cuda.device_array(nms_mask_shape(boxes.shape[0]), np.uint64)
    launch_nms_mask(cuda.to_device(np.ascontiguousarray(boxes[order])), mask, threshold)
    return order[reduce_nms_mask(mask.copy_to_host())].astype(np.int64)


__all__ = [
    "MAX_BLOCKS",
    "NMS_TILE",
    "PRROI_MAX_THREADS",
    "PRROI_THREADS",
    "THREADS_PER_BLOCK",
    "box_iou",
    "launch_box_iou",
    "launch_nms_mask",
    "launch_prroi_pool_backward",
    "launch_prroi_pool_forward",
    "launch_roi_align_backward",
    "launch_roi_align_forward",
    "launch_roi_pool_backward",
    "launch_roi_pool_backward_from_argmax",
    "launch_roi_pool_forward",
    "launch_roi_pool_forward_with_argmax",
    "launch_roi_warp_backward",
    "launch_roi_warp_forward",
    "nms",
    "nms_mask_shape",
    "prroi_pool_backward",
    "prroi_pool_forward",
    "reduce_nms_mask",
    "roi_align_backward",
    "roi_align_forward",
    "roi_pool_backward",
    "roi_pool_backward_from_argmax",
    "roi_pool_forward",
    "roi_pool_forward_with_argmax",
    "roi_warp_backward",
    "roi_warp_forward",
]
