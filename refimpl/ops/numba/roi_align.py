"""RoIAlign (Mask R-CNN sec. 3) on the CPU: forward and backward, avg and max.

Geometry once per RoI: box -> bins -> sampling points -> bilinear weights come from
:mod:`refimpl.ops.geometry` (compiled, never re-derived), in the input's dtype ``F``, stored
in small per-axis tables before any channel is touched. The average is separable and runs
on :mod:`._taps`; the max is not: it keeps a running max (and, for the backward, argmax) per
channel, channels innermost, each sample's value computed exactly as the python backend
does, so that the two agree bitwise. RoIWarp (:mod:`.roi_warp`) is RoIAlign of its
quantized boxes and runs on :func:`align_forward` / :func:`align_backward`.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from ..geometry import MAX_FLOOR
from ..validate import RoIArgs, check_roi_args
from ._compile import (
    JIT,
    PJIT,
    align_box,
    bilinear_1d,
    roi_work,
    sample_coord,
    thread_scratch,
    threads_for,
)
from ._layout import (
    block_buffer,
    load_channels_last,
    put_block,
    store_channels_first,
    take_block,
    to_channels_last,
)
from ._taps import taps_backward, taps_forward

# --- geometry tables, computed once per RoI ---------------------------------------------------


@njit(**JIT)
def _align_grids(F, boxes, scale, aligned, pooled_h, pooled_w, sampling_ratio):
    """:func:`geometry.align_box` for every RoI, as arrays (one per returned quantity)."""
    n_rois = boxes.shape[0]
    start_y = np.empty(n_rois, boxes.dtype)
    start_x = np.empty(n_rois, boxes.dtype)
    bin_h = np.empty(n_rois, boxes.dtype)
    bin_w = np.empty(n_rois, boxes.dtype)
    count = np.empty(n_rois, boxes.dtype)
    grid_h = np.empty(n_rois, np.int64)
    grid_w = np.empty(n_rois, np.int64)
    for k in range(n_rois):
        x1, y1, x2, y2 = boxes[k, 0], boxes[k, 1], boxes[k, 2], boxes[k, 3]
        sy, sx, bh, bw, gh, gw, cnt = align_box(
            F, x1, y1, x2, y2, scale, aligned, pooled_h, pooled_w, sampling_ratio
        )
        start_y[k], start_x[k], bin_h[k], bin_w[k] = sy, sx, bh, bw
        grid_h[k], grid_w[k], count[k] = gh, gw, cnt
    return start_y, start_x, bin_h, bin_w, grid_h, grid_w, count


@njit(**JIT)
def _add_tap(rows, weights, slot, n, pixel, w):
    """Add weight ``w`` to the tap of ``pixel`` (a new tap if the bin has none yet)."""
    t = slot[pixel]
    if t < 0:
        t = n
        slot[pixel] = n
        rows[n] = pixel
        weights[n] = 0
        n += 1
    weights[t] += w
    return n


@njit(**JIT)
def _avg_taps(F, start, bin_size, grid, norm, pooled, size):
    """Along one axis, for every RoI and bin: the merged (pixel, weight) taps of its samples.

    Returns ``pixels [K, pooled, cap]`` (int32), ``weights [K, pooled, cap]`` (divided by
    ``norm[k]``: the sample count for the y axis, 1 for x) and ``counts [K, pooled]``. A bin's
    samples touch at most ``2 * grid`` pixels, and at most ``size`` distinct ones.
    """
    n_rois = start.shape[0]
    cap = 1
    for k in range(n_rois):
        cap = max(cap, min(2 * grid[k], size))
    pixels = np.zeros((n_rois, pooled, cap), np.int32)
    weights = np.zeros((n_rois, pooled, cap), start.dtype)
    counts = np.zeros((n_rois, pooled), np.int32)
    slot = np.full(size, -1, np.int32)  # slot[pixel]: index of pixel's tap in the current bin
    for k in range(n_rois):
        for p in range(pooled):
            n = 0
            for i in range(grid[k]):
                v = sample_coord(F, start[k], bin_size[k], p, i, grid[k])
                inside, lo, hi, w_lo, w_hi = bilinear_1d(F, v, size)
                if inside:  # a sample outside on one axis is 0 whatever the other axis says
                    n = _add_tap(pixels[k, p], weights[k, p], slot, n, lo, w_lo)
                    n = _add_tap(pixels[k, p], weights[k, p], slot, n, hi, w_hi)
            for t in range(n):
                slot[pixels[k, p, t]] = -1
                weights[k, p, t] /= norm[k]
            counts[k, p] = n
    return pixels, weights, counts


@njit(**JIT)
def _max_samples(F, start, bin_size, grid, pooled, size):
    """Along one axis, for every RoI, bin and sample: ``bilinear_1d`` as arrays.

    Returns ``low, high`` (int32, ``low = -1`` where the sample is outside) and ``w_low,
    w_high``, each ``[K, pooled, max grid]``: the max modes need every sample separately.
    """
    n_rois = start.shape[0]
    cap = 1
    for k in range(n_rois):
        cap = max(cap, grid[k])
    low = np.full((n_rois, pooled, cap), -1, np.int32)
    high = np.full((n_rois, pooled, cap), -1, np.int32)
    w_low = np.zeros((n_rois, pooled, cap), start.dtype)
    w_high = np.zeros((n_rois, pooled, cap), start.dtype)
    for k in range(n_rois):
        for p in range(pooled):
            for i in range(grid[k]):
                v = sample_coord(F, start[k], bin_size[k], p, i, grid[k])
                inside, lo, hi, wl, wh = bilinear_1d(F, v, size)
                if inside:
                    low[k, p, i], high[k, p, i] = lo, hi
                    w_low[k, p, i], w_high[k, p, i] = wl, wh
    return low, high, w_low, w_high


# --- max mode --------------------------------------------------------------------------------


@njit(**JIT)
def _sample(k, ph, pw, s, grid_w, samples_y, samples_x, width):
    """Sample ``s`` of bin (ph, pw) of RoI k: its 4 flat pixel indices ``y * width + x``
    (the first -1 where the sample is outside) and their bilinear weights, in the python
    backend's order: (low, low), (low, high), (high, low), (high, high). Computed where it
    is used: no per-sample table (whose size, the largest grid of any RoI on each axis, could
    not always be allocated)."""
    y_lo, y_hi, wy_lo, wy_hi = samples_y
    x_lo, x_hi, wx_lo, wx_hi = samples_x
    iy, ix = s // grid_w, s % grid_w
    ylo, yhi, xlo, xhi = y_lo[k, ph, iy], y_hi[k, ph, iy], x_lo[k, pw, ix], x_hi[k, pw, ix]
    wyl, wyh, wxl, wxh = wy_lo[k, ph, iy], wy_hi[k, ph, iy], wx_lo[k, pw, ix], wx_hi[k, pw, ix]
    if ylo < 0 or xlo < 0:
        return (-1, -1, -1, -1), (wyl * wxl, wyl * wxh, wyh * wxl, wyh * wxh)
    corners = (ylo * width + xlo, ylo * width + xhi, yhi * width + xlo, yhi * width + xhi)
    return corners, (wyl * wxl, wyl * wxh, wyh * wxl, wyh * wxh)


@njit(**JIT)
def _value(image, corners, weights, c):
    """The bilinear value of one sample in channel ``c`` of ``image [H*W, C]``: the same
    expression, in the same order, as the python backend (bitwise equal values, hence the
    same argmax). An outside sample is 0."""
    if corners[0] < 0:
        return image.dtype.type(0)
    return (
        weights[0] * image[corners[0], c]
        + weights[1] * image[corners[1], c]
        + weights[2] * image[corners[2], c]
        + weights[3] * image[corners[3], c]
    )


@njit(**PJIT)
def _max_forward(x_cl, batch, width, grid_h, grid_w, samples_y, samples_x, scratch, out):
    """``out [K, C, PH*PW]``: the largest sample of each bin, per channel (first one on ties).

    ``samples_y``/``samples_x``: the (low, high, w_low, w_high) tables of :func:`_max_samples`;
    ``scratch``: :func:`thread_scratch` of ``(PH*PW, C)``, one RoI's output channels-last.
    """
    n_rois, channels, n_bins = out.shape
    pooled_w = samples_x[0].shape[1]
    for k in prange(n_rois):
        image = x_cl[batch[k]]
        n_samples = grid_h[k] * grid_w[k]
        best = scratch[numba.get_thread_id()]
        # an empty grid pools to 0; otherwise the running max starts at MAX_FLOOR, which a
        # NaN never beats (torchvision's RoIPool rule)
        best[:] = MAX_FLOOR if n_samples > 0 else 0
        for b in range(n_bins):
            ph, pw = b // pooled_w, b % pooled_w
            m = best[b]
            for s in range(n_samples):
                corners, weights = _sample(k, ph, pw, s, grid_w[k], samples_y, samples_x, width)
                for c in range(channels):
                    value = _value(image, corners, weights, c)
                    m[c] = value if value > m[c] else m[c]
        store_channels_first(best, out[k])


@njit(**PJIT)
def _max_backward(
    x, grad, batch, width, grid_h, grid_w, samples_y, samples_x, scratch, x_blocks, grad_blocks,
    grad_x,
):  # fmt: skip
    """The gradient of each bin goes to the 4 pixels of its winning sample, times their
    bilinear weights (no 1/count). Race-free by channel blocks, as the avg backward; each
    block also takes its own channels-last copy of ``x [N, C, H*W]`` into ``x_blocks[blk]``.
    ``scratch``: (best, arg, g_cl), :func:`thread_scratch` of ``(bc,)``, ``(bc,)`` and
    ``(PH*PW, bc)``."""
    n_rois, _, n_bins = grad.shape
    n_blocks, bc = grad_blocks.shape[0], grad_blocks.shape[3]
    pooled_w = samples_x[0].shape[1]
    best_t, arg_t, g_cl_t = scratch
    for blk in prange(n_blocks):
        tid = numba.get_thread_id()
        best, arg, g_cl = best_t[tid], arg_t[tid], g_cl_t[tid]
        x_cl = x_blocks[blk]
        take_block(x, blk * bc, x_cl)
        grad_cl = grad_blocks[blk]
        grad_cl[:] = 0
        for k in range(n_rois):
            n_samples = grid_h[k] * grid_w[k]
            if n_samples == 0:
                continue  # an empty grid: output 0, no gradient
            image = x_cl[batch[k]]
            g_image = grad_cl[batch[k]]
            load_channels_last(grad[k], blk * bc, g_cl)
            for b in range(n_bins):
                ph, pw = b // pooled_w, b % pooled_w
                # recompute the forward's argmax, channels innermost (-1: nothing won)
                best[:] = MAX_FLOOR
                arg[:] = -1
                for s in range(n_samples):
                    corners, weights = _sample(k, ph, pw, s, grid_w[k], samples_y, samples_x, width)
                    for c in range(bc):
                        value = _value(image, corners, weights, c)
                        better = value > best[c]
                        best[c] = value if better else best[c]
                        arg[c] = s if better else arg[c]
                # scatter, per channel, to the 4 corners of its winning sample (python's order)
                g = g_cl[b]
                for c in range(bc):
                    if arg[c] < 0:
                        continue  # no sample above MAX_FLOOR (all NaN): no gradient
                    corners, weights = _sample(
                        k, ph, pw, arg[c], grid_w[k], samples_y, samples_x, width
                    )
                    if corners[0] < 0:
                        continue  # an outside sample won (all samples <= 0): no gradient
                    for corner in range(4):
                        g_image[corners[corner], c] += g[c] * weights[corner]
        put_block(grad_cl, blk * bc, grad_x)


# --- drivers (RoIWarp's too) -----------------------------------------------------------------


def _sampling(a: RoIArgs, boxes: np.ndarray, scale: float, aligned: bool):
    """Geometry tables for RoIAlign of ``boxes`` (feature coordinates / ``scale``)."""
    F = a.float_type
    height, width = a.x.shape[2:]
    sy, sx, bh, bw, grid_h, grid_w, count = _align_grids(
        F, boxes, F(scale), aligned, a.pooled_h, a.pooled_w, a.sampling_ratio
    )
    if a.pool_mode == "avg":
        taps_y = _avg_taps(F, sy, bh, grid_h, count, a.pooled_h, height)
        taps_x = _avg_taps(F, sx, bw, grid_w, np.ones_like(count), a.pooled_w, width)
        return taps_y, taps_x
    samples_y = _max_samples(F, sy, bh, grid_h, a.pooled_h, height)
    samples_x = _max_samples(F, sx, bw, grid_w, a.pooled_w, width)
    return grid_h, grid_w, samples_y, samples_x


def align_forward(a: RoIArgs, boxes: np.ndarray, scale: float, aligned: bool) -> np.ndarray:
    """RoIAlign's forward of ``boxes [K, 4]`` (times ``scale``: feature coordinates) with the
    validated arguments ``a``; RoIWarp passes its quantized boxes and scale 1."""
    n_rois, channels = boxes.shape[0], a.x.shape[1]
    out = np.empty((n_rois, channels, a.pooled_h, a.pooled_w), a.x.dtype)  # all written
    if n_rois == 0:
        return out
    tables = _sampling(a, boxes, scale, aligned)
    x_cl = to_channels_last(a.x)
    out3 = out.reshape(n_rois, channels, a.pooled_h * a.pooled_w)
    width = a.x.shape[3]
    if a.pool_mode == "avg":
        taps_forward(x_cl, a.batch, width, *tables, out3)
    else:
        scratch = thread_scratch((a.pooled_h * a.pooled_w, channels), a.x.dtype)
        _max_forward(x_cl, a.batch, width, *tables, scratch, out3)
    return out


def align_backward(a: RoIArgs, boxes: np.ndarray, scale: float, aligned: bool) -> np.ndarray:
    """The gradient of :func:`align_forward` with respect to ``x``."""
    n, channels, height, width = a.x.shape
    n_rois = boxes.shape[0]
    if n_rois == 0:
        return np.zeros_like(a.x)
    tables = _sampling(a, boxes, scale, aligned)
    grad = a.grad_output.reshape(n_rois, channels, a.pooled_h * a.pooled_w)
    grad_x = np.empty_like(a.x)  # every channel block writes all of its channels
    grad_x3 = grad_x.reshape(n, channels, height * width)
    if a.pool_mode == "avg":
        taps_backward(grad, a.batch, width, *tables, block_buffer(a.x), grad_x3)
    else:
        x3 = a.x.reshape(n, channels, height * width)
        x_blocks, grad_blocks = block_buffer(a.x), block_buffer(a.x)
        bc = grad_blocks.shape[3]
        scratch = (
            thread_scratch((bc,), a.x.dtype),
            thread_scratch((bc,), np.int64),
            thread_scratch((a.pooled_h * a.pooled_w, bc), a.x.dtype),
        )
        _max_backward(x3, grad, a.batch, width, *tables, scratch, x_blocks, grad_blocks, grad_x3)
    return grad_x


# --- the backend interface -----------------------------------------------------------------


def roi_align_forward(
    x, rois, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False, pool_mode="avg"
):
    """RoIAlign (Mask R-CNN sec. 3): average (or max) of bilinear samples in each bin."""
    a = check_roi_args(x, rois, output_size, spatial_scale, sampling_ratio, aligned, pool_mode)
    with threads_for(roi_work(a)):
        return align_forward(a, np.ascontiguousarray(a.rois[:, 1:]), a.spatial_scale, a.aligned)


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
    """Gradient of :func:`roi_align_forward` with respect to ``x``."""
    a = check_roi_args(
        x, rois, output_size, spatial_scale, sampling_ratio, aligned, pool_mode, grad_output
    )
    with threads_for(roi_work(a)):
        return align_backward(a, np.ascontiguousarray(a.rois[:, 1:]), a.spatial_scale, a.aligned)
