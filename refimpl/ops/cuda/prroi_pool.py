"""Precise RoI Pooling (IoU-Net, Jiang et al., ECCV 2018, sec. 3.3) on the GPU (NCHW).

Forward: one thread per output element, summing tent integrals over the pixels under its
bin. Backward: one **block per RoI** (a block-stride loop over the RoIs); its threads stride
over the RoI's ``(c, ph, pw)``, scatter the input gradient with atomic adds, and reduce their
contributions to the RoI's four box coordinates in shared memory (see
:func:`launch_backward`).
"""

from __future__ import annotations

import functools
import math
from types import SimpleNamespace

import numpy as np
from numba import cuda

from ..validate import check_roi_args, check_spatial_scale
from . import _launch
from ._device import prroi_area, prroi_box, tent, tent_integral, tent_support, unravel
from ._launch import (
    check_contiguous,
    check_dtype,
    check_shape,
    device,
    grad_x_array,
    launch_size,
    require_device,
    roi_arrays,
)

# The backward: at most this many threads per block (one block per RoI, a power of two for
# the tree reduction); tests lower it to exercise the stride. The shared memory of the
# reduction is sized, at compile time, for MAX_THREADS.
THREADS = 128
MAX_THREADS = 256


@cuda.jit(device=True)
def _bin(F, rois, k, spatial_scale, aligned, pooled_h, pooled_w, ph, pw):
    """Bin ``(ph, pw)`` of RoI ``k`` as real intervals: ``y0, y1, x0, x1`` and the bin's area
    (0 for a zero-size or inverted box, or one below ``geometry.MIN_PRROI_AREA``), as the
    python backend computes them."""
    start_y, start_x, bin_h, bin_w = prroi_box(
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
    return y0, y1, x0, x1, prroi_area(F, bin_h, bin_w)


@cuda.jit(device=True)
def _tent_weight(F, lo, hi, i, point):
    """Pixel ``i``'s weight along one axis: its tent's integral over ``[lo, hi]`` (a bin), or,
    for a ``point`` (a bin edge, ``hi == lo``), its tent's value there."""
    if point:
        return tent(F, lo - F(i))
    return tent_integral(F, lo, hi, i)


@cuda.jit(device=True)
def _tent_sum(F, x, b, c, y_lo, y_hi, y_point, x_lo, x_hi, x_point, height, width):
    """``sum_ij x[b, c, i, j] * wy_i * wx_j`` over the pixels whose tents overlap the
    intervals (or points): the bin's integral of the bilinear map, or its integral along
    one edge. The python backend's expression and summation order."""
    i_lo, i_hi = tent_support(y_lo, y_hi, height)
    j_lo, j_hi = tent_support(x_lo, x_hi, width)
    total = F(0.0)
    for i in range(i_lo, i_hi):
        wy = _tent_weight(F, y_lo, y_hi, i, y_point)
        for j in range(j_lo, j_hi):
            wx = _tent_weight(F, x_lo, x_hi, j, x_point)
            total += x[b, c, i, j] * wy * wx
    return total


@functools.cache
def _kernels(dtype: np.dtype) -> SimpleNamespace:  # noqa: C901  (the forward and backward kernels it compiles; each is under the limit)
    """``forward`` and ``backward`` for float32 or float64 (``F`` closed over)."""
    F = np.dtype(dtype).type

    @cuda.jit
    def forward(x, rois, out, spatial_scale, aligned):
        """One thread per output element (k, c, ph, pw): the exact integral of the bilinear
        map over the bin, a sum of pixel values times tent integrals along y and x (IoU-Net
        sec. 3.3), divided by the bin's area; a zero-area bin gives 0."""
        n_images, channels, height, width = x.shape
        n_rois, _, pooled_h, pooled_w = out.shape
        total = n_rois * channels * pooled_h * pooled_w
        for idx in range(cuda.grid(1), total, cuda.gridsize(1)):
            k, c, ph, pw = unravel(idx, channels, pooled_h, pooled_w, False)
            b = int(rois[k, 0])
            y0, y1, x0, x1, area = _bin(
                F, rois, k, spatial_scale, aligned, pooled_h, pooled_w, ph, pw
            )
            if b < 0 or b >= n_images or not area > F(0.0):
                out[k, c, ph, pw] = F(0.0)
                continue
            integral = _tent_sum(F, x, b, c, y0, y1, False, x0, x1, False, height, width)
            out[k, c, ph, pw] = integral / area

    @cuda.jit
    def backward(x, rois, grad_out, grad_x, grad_rois, spatial_scale, aligned):
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
        partial = cuda.shared.array((MAX_THREADS, 4), dtype=F)
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
                y0, y1, x0, x1, area = _bin(
                    F, rois, k, spatial_scale, aligned, pooled_h, pooled_w, ph, pw
                )
                if not area > F(0.0):
                    continue  # a zero-area bin pools to 0 and passes no gradient
                grad = grad_out[k, c, ph, pw]
                i_lo, i_hi = tent_support(y0, y1, height)
                j_lo, j_hi = tent_support(x0, x1, width)
                for i in range(i_lo, i_hi):
                    wy = tent_integral(F, y0, y1, i)
                    for j in range(j_lo, j_hi):
                        wx = tent_integral(F, x0, x1, j)
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

    return SimpleNamespace(forward=forward, backward=backward)


def launch_forward(x, rois, out, spatial_scale, aligned, *, stream=0):
    """Launch PrRoIPool's forward on NCHW device arrays; returns ``out``.

    Shapes, dtypes, ``stream`` and the caller's validation as
    :func:`.roi_align.launch_forward` (``layout="nchw"``); ``aligned`` shifts the box by half
    a pixel. Every element of ``out`` is written (a zero-area bin writes 0).
    """
    x, rois, out = roi_arrays(x, rois, out, "out")
    check_contiguous("out", out)
    scale = np.float64(check_spatial_scale(spatial_scale))
    n = math.prod(out.shape)
    if n:
        blocks, threads = launch_size(n)
        _kernels(np.dtype(x.dtype)).forward[blocks, threads, stream](
            x, rois, out, scale, bool(aligned)
        )
    return out


def _block_size(per_roi: int) -> int:
    """Threads per block of the backward: a power of two from one warp up to
    :data:`THREADS`, no larger than needed for the RoI's ``C * PH * PW`` elements."""
    limit = min(THREADS, MAX_THREADS)
    threads = 32
    while threads < min(per_roi, limit):
        threads *= 2
    return threads


def launch_backward(x, rois, grad_out, grad_x, grad_rois, spatial_scale, aligned, *, stream=0):
    """Launch PrRoIPool's backward, to the input and to the boxes; returns
    ``(grad_x, grad_rois)``.

    Arguments as :func:`.roi_align.launch_backward` (NCHW), plus ``grad_rois`` [K, 5] of
    rois' dtype, C-contiguous. ``x`` is read (the box gradient integrates the map along the
    bin edges). Both ``grad_x`` and ``grad_rois[:, 1:]`` are **accumulated into**: pass them
    zeroed; ``grad_rois[:, 0]`` (the batch index) is not written. One block per RoI, at
    most ``_launch.MAX_BLOCKS`` blocks (a block-stride loop over the RoIs).
    """
    x, rois, grad_out = roi_arrays(x, rois, grad_out, "grad_out")
    grad_x = grad_x_array(grad_x, x)
    grad_rois = device(grad_rois, "grad_rois")
    check_shape("grad_rois", grad_rois, rois.shape)
    check_dtype("grad_rois", grad_rois, x.dtype)
    check_contiguous("grad_rois", grad_rois)
    scale = np.float64(check_spatial_scale(spatial_scale))
    if math.prod(grad_out.shape) == 0:
        return grad_x, grad_rois
    n_rois, channels, pooled_h, pooled_w = grad_out.shape
    blocks = min(_launch.MAX_BLOCKS, n_rois)
    threads = _block_size(channels * pooled_h * pooled_w)
    _kernels(np.dtype(x.dtype)).backward[blocks, threads, stream](
        x, rois, grad_out, grad_x, grad_rois, scale, bool(aligned)
    )
    return grad_x, grad_rois


# --- the backend interface: NumPy arrays in and out -----------------------------------------


def prroi_pool_forward(x, rois, output_size, spatial_scale=1.0, aligned=False):
    """PrRoIPool: the exact integral of the bilinearly interpolated map over each bin,
    divided by the bin's area (a zero-area bin gives 0). No quantization, no sampling."""
    a = check_roi_args(x, rois, output_size, spatial_scale, aligned=aligned)
    require_device()
    shape = (a.rois.shape[0], a.x.shape[1], a.pooled_h, a.pooled_w)
    if math.prod(shape) == 0:
        return np.zeros(shape, a.x.dtype)
    out = cuda.device_array(shape, a.x.dtype)
    launch_forward(cuda.to_device(a.x), cuda.to_device(a.rois), out, a.spatial_scale, a.aligned)
    return out.copy_to_host()


def prroi_pool_backward(x, rois, grad_output, output_size, spatial_scale=1.0, aligned=False):
    """Gradients of PrRoIPool to the input and to the boxes: ``(grad_x, grad_rois)``, with
    ``grad_rois[:, 0]`` (the batch index) 0 (see :func:`refimpl.ops.python.prroi_pool_backward`)."""
    a = check_roi_args(
        x, rois, output_size, spatial_scale, aligned=aligned, grad_output=grad_output
    )
    require_device()
    if a.grad_output.size == 0:
        return np.zeros_like(a.x), np.zeros_like(a.rois)
    grad_x = cuda.to_device(np.zeros_like(a.x))
    grad_rois = cuda.to_device(np.zeros_like(a.rois))
    launch_backward(
        cuda.to_device(a.x),
        cuda.to_device(a.rois),
        cuda.to_device(a.grad_output),
        grad_x,
        grad_rois,
        a.spatial_scale,
        a.aligned,
    )
    return grad_x.copy_to_host(), grad_rois.copy_to_host()
