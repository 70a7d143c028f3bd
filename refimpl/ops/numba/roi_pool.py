"""RoIPool (Fast R-CNN sec. 2.1, eq. 4) on the CPU: the max of each quantized bin, and its
backward, either recomputing the argmax or scattering through the one the forward saved
(as torchvision's operator does)."""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from ..geometry import MAX_FLOOR
from ..validate import argmax_range_error, check_argmax, check_roi_args
from ._compile import PJIT, pool_bin, pool_box, roi_work, thread_scratch, threads_for
from ._layout import (
    block_buffer,
    load_channels_last,
    put_block,
    store_channels_first,
    take_block,
    to_channels_last,
)


@njit(**PJIT)
def _pool_forward(F, x_cl, rois, batch, scale, height, width, scratch, out, argmax):
    """``out [K, C, PH, PW]``: the max of each quantized bin (Fast R-CNN sec. 2.1), and
    ``argmax``: the flat pixel index ``y * W + x`` of the first maximum (-1: empty bin).
    ``scratch``: (best, arg), :func:`thread_scratch` of ``(PH*PW, C)``."""
    n_rois, channels, pooled_h, pooled_w = out.shape
    for k in prange(n_rois):
        image = x_cl[batch[k]]
        start_y, start_x, bin_h, bin_w = pool_box(
            F, rois[k, 1], rois[k, 2], rois[k, 3], rois[k, 4], scale, pooled_h, pooled_w
        )
        best, arg = scratch[0][numba.get_thread_id()], scratch[1][numba.get_thread_id()]
        best[:] = 0  # empty bins give 0
        arg[:] = -1
        for ph in range(pooled_h):
            h_lo, h_hi = pool_bin(F, ph, bin_h, start_y, height)
            for pw in range(pooled_w):
                w_lo, w_hi = pool_bin(F, pw, bin_w, start_x, width)
                if h_hi <= h_lo or w_hi <= w_lo:
                    continue
                m = best[ph * pooled_w + pw]
                a = arg[ph * pooled_w + pw]
                # torchvision's running max: from -FLT_MAX, ">" keeps the first maximum and
                # never takes a NaN (a bin of only NaN: -FLT_MAX, argmax -1)
                m[:] = MAX_FLOOR
                a[:] = -1
                for yy in range(h_lo, h_hi):
                    for xx in range(w_lo, w_hi):
                        index = yy * width + xx
                        pixel = image[index]
                        for c in range(channels):
                            better = pixel[c] > m[c]
                            m[c] = pixel[c] if better else m[c]
                            a[c] = index if better else a[c]
        store_channels_first(best, out[k].reshape(channels, pooled_h * pooled_w))
        store_channels_first(arg, argmax[k].reshape(channels, pooled_h * pooled_w))


@njit(**PJIT)
def _pool_scatter(batch, argmax, grad, grad_x):
    """``grad_x[b, c, argmax] += grad`` for every bin: the backward when the forward's argmax
    is at hand. Race-free: each thread owns whole channels (planes of every image).

    Returns how many indices lie outside ``[-1, H * W)``: they are skipped (no write outside
    the plane) and the caller raises, which spares two validation passes over the argmax."""
    n_rois, channels, pooled_h, pooled_w = grad.shape
    plane_size = grad_x.shape[2]
    bad = 0
    for c in prange(channels):
        for k in range(n_rois):
            plane = grad_x[batch[k], c]
            for ph in range(pooled_h):
                for pw in range(pooled_w):
                    index = argmax[k, c, ph, pw]
                    if index >= 0 and index < plane_size:
                        plane[index] += grad[k, c, ph, pw]
                    elif index != -1:
                        bad += 1
    return bad


@njit(**PJIT)
def _pool_backward(
    F, x, rois, batch, scale, height, width, grad, scratch, x_blocks, grad_blocks, grad_x
):
    """``grad_x[argmax] += grad`` per bin (Fast R-CNN eq. 4), the argmax recomputed.
    Race-free by channel blocks, as the RoIAlign backward. ``scratch``: (best, arg, g_cl),
    :func:`thread_scratch` of ``(bc,)``, ``(bc,)`` and ``(PH*PW, bc)``."""
    n_rois, _, pooled_h, pooled_w = grad.shape
    n_blocks, bc = grad_blocks.shape[0], grad_blocks.shape[3]
    for blk in prange(n_blocks):
        tid = numba.get_thread_id()
        best, g_cl = scratch[0][tid], scratch[2][tid]
        arg = scratch[1][tid]  # flat pixel index yy * width + xx
        x_cl = x_blocks[blk]
        take_block(x, blk * bc, x_cl)
        grad_cl = grad_blocks[blk]
        grad_cl[:] = 0
        for k in range(n_rois):
            image = x_cl[batch[k]]
            g_image = grad_cl[batch[k]]
            load_channels_last(grad[k].reshape(-1, pooled_h * pooled_w), blk * bc, g_cl)
            start_y, start_x, bin_h, bin_w = pool_box(
                F, rois[k, 1], rois[k, 2], rois[k, 3], rois[k, 4], scale, pooled_h, pooled_w
            )
            for ph in range(pooled_h):
                h_lo, h_hi = pool_bin(F, ph, bin_h, start_y, height)
                for pw in range(pooled_w):
                    w_lo, w_hi = pool_bin(F, pw, bin_w, start_x, width)
                    if h_hi <= h_lo or w_hi <= w_lo:
                        continue
                    best[:] = MAX_FLOOR  # as the forward
                    arg[:] = -1
                    for yy in range(h_lo, h_hi):
                        for xx in range(w_lo, w_hi):
                            index = yy * width + xx
                            pixel = image[index]
                            for c in range(bc):
                                better = pixel[c] > best[c]
                                best[c] = pixel[c] if better else best[c]
                                arg[c] = index if better else arg[c]
                    g = g_cl[ph * pooled_w + pw]
                    for c in range(bc):
                        if arg[c] >= 0:  # (-1: nothing above MAX_FLOOR, no gradient)
                            g_image[arg[c], c] += g[c]
        put_block(grad_cl, blk * bc, grad_x)


# --- the backend interface -----------------------------------------------------------------


def roi_pool_forward(x, rois, output_size, spatial_scale=1.0):
    """RoIPool (Fast R-CNN sec. 2.1): max over each quantized bin; an empty bin gives 0."""
    return roi_pool_forward_with_argmax(x, rois, output_size, spatial_scale)[0]


def roi_pool_forward_with_argmax(x, rois, output_size, spatial_scale=1.0):
    """:func:`roi_pool_forward` and the argmax: ``(y, argmax)``, ``argmax [K, C, PH, PW]``
    int64 flat indices ``y * W + x`` into each image plane (-1 for an empty bin).

    The torch op saves the argmax, as torchvision does, so its backward is a pure scatter
    (:func:`roi_pool_backward_from_argmax`).
    """
    a = check_roi_args(x, rois, output_size, spatial_scale)
    with threads_for(roi_work(a)):
        F = a.float_type
        n_rois, (_, channels, height, width) = a.rois.shape[0], a.x.shape
        out = np.empty((n_rois, channels, a.pooled_h, a.pooled_w), a.x.dtype)
        argmax = np.empty(out.shape, np.int64)
        if n_rois:
            x_cl = to_channels_last(a.x)
            n_bins = a.pooled_h * a.pooled_w
            scratch = (
                thread_scratch((n_bins, channels), a.x.dtype),
                thread_scratch((n_bins, channels), np.int64),
            )
            scale = F(a.spatial_scale)
            _pool_forward(F, x_cl, a.rois, a.batch, scale, height, width, scratch, out, argmax)
        return out, argmax


def roi_pool_backward_from_argmax(x, rois, grad_output, argmax, output_size, spatial_scale=1.0):
    """The RoIPool backward given the forward's argmax: ``grad_x[argmax] += grad_output``."""
    a = check_roi_args(x, rois, output_size, spatial_scale, grad_output=grad_output)
    n, channels, height, width = a.x.shape
    argmax = check_argmax(argmax, a.grad_output.shape, height * width, check_range=False)
    grad_x = np.zeros_like(a.x)
    with threads_for(roi_work(a)):
        if a.rois.shape[0]:
            bad = _pool_scatter(
                a.batch,
                np.ascontiguousarray(argmax),
                a.grad_output,
                grad_x.reshape(n, channels, height * width),
            )
            if bad:
                raise argmax_range_error(height * width)
    return grad_x


def roi_pool_backward(x, rois, grad_output, output_size, spatial_scale=1.0):
    """The gradient of each bin goes to its argmax pixel (Fast R-CNN eq. 4)."""
    a = check_roi_args(x, rois, output_size, spatial_scale, grad_output=grad_output)
    with threads_for(roi_work(a)):
        if a.rois.shape[0] == 0:
            return np.zeros_like(a.x)
        F = a.float_type
        n, channels, height, width = a.x.shape
        x3 = a.x.reshape(n, channels, height * width)
        grad_x = np.empty_like(a.x)
        x_blocks, grad_blocks = block_buffer(a.x), block_buffer(a.x)
        bc = grad_blocks.shape[3]
        scratch = (
            thread_scratch((bc,), a.x.dtype),
            thread_scratch((bc,), np.int64),
            thread_scratch((a.pooled_h * a.pooled_w, bc), a.x.dtype),
        )
        _pool_backward(
            F,
            x3,
            a.rois,
            a.batch,
            F(a.spatial_scale),
            height,
            width,
            a.grad_output,
            scratch,
            x_blocks,
            grad_blocks,
            grad_x.reshape(n, channels, height * width),
        )
        return grad_x
