"""The ``"numba"`` backend: compiled CPU kernels (``numba.njit``, ``prange``), same results.

The semantics are those of :mod:`refimpl.ops.python` (torchvision's kernels); only the
order of the work changes, for speed:

1. **Geometry once per RoI.** Box -> bins -> sampling points -> bilinear weights come from
   :mod:`refimpl.ops.geometry` (compiled here, never re-derived), computed in the input's
   dtype ``F`` and stored in small tables before any channel is touched.
2. **Separable RoIAlign (avg).** A sample is inside when it is inside on both axes, and its
   bilinear weight is a y weight times an x weight (Mask R-CNN sec. 3), so a bin's average is
   ``sum_i wy_i * sum_j wx_j * x[row_i, col_j] / count``. Each bin keeps the list of
   (row, weight) "taps" of its samples along y, duplicates merged and ``1 / count`` folded
   in, and likewise (col, weight) along x: typically 3-4 taps per axis for 2x2 samples.
   PrRoIPool (IoU-Net sec. 3.3) is separable the same way, its taps being tent integrals,
   and runs on the same kernels.
3. **Channels innermost.** The forward copies ``x`` to channels-last ``[N, H*W, C]``, so a
   tap reads ``C`` contiguous values and the channel loop is a SIMD loop.
4. **Parallel and race-free.** Forward kernels ``prange`` over RoIs (each writes only its own
   output). Backward kernels scatter into pixels that many RoIs share, so they ``prange``
   over blocks of channels instead: a thread owns a block of channels for all RoIs. It
   copies its channels of ``x`` channels-last (the max modes need them), accumulates into
   its own channels-last gradient block, and finally writes those channels of ``grad_x``:
   no two threads ever write the same memory, and every gradient element is accumulated in
   the same order (RoI, bin, tap) whatever the number of threads, so the results are
   bitwise reproducible. (Per-thread copies of the whole gradient plus a reduction would
   also be race-free, but cost memory per thread and a reduction whose rounding depends on
   the thread count.)
5. **Small inputs on one thread** (:data:`PARALLEL_MIN_WORK`): waking threads costs more
   than they save there.

The max modes (RoIAlign max, RoIWarp, RoIPool) are not separable: they keep a running
max (and, for the backward, argmax) per channel, still with channels innermost, and compute
each sample's value exactly as the python backend does, so they agree with it bitwise.

Numba caches the compiled kernels on disk (``cache=True``). Numba's cache is keyed on this
file only: after editing ``geometry.py``, touch this file (or clear ``__pycache__``) so the
kernels recompile.
"""

from __future__ import annotations

import contextlib

import numba
import numpy as np
from numba import njit, prange

from . import geometry as g
from .validate import (
    RoIArgs,
    argmax_range_error,
    check_argmax,
    check_boxes,
    check_nms_args,
    check_roi_args,
)

# error_model="numpy": float division by zero gives inf/NaN as in C (box_iou's 0 / 0 = NaN)
# instead of raising, and the kernels carry no division checks.
_JIT = {"cache": True, "error_model": "numpy"}
_PJIT = {**_JIT, "parallel": True}


# The shared scalar geometry, compiled (not cached on its own: each kernel's cache holds it).
# Numba (LLVM) inlines these small functions into the kernels.
_G = g.compile_all(njit(error_model="numpy"))
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

_TILE = 16  # transpose tile: 16 x 16 values stay in L1 even for power-of-two strides


# --- layout: NCHW <-> channels-last ----------------------------------------------------------


@njit(**_PJIT)
def _transpose_last2(a, out):
    """``out[n, s, r] = a[n, r, s]`` for 3-D arrays, in cache-friendly tiles, in parallel."""
    n_img, rows, cols = a.shape
    tiles_r = (rows + _TILE - 1) // _TILE
    tiles_c = (cols + _TILE - 1) // _TILE
    for t in prange(n_img * tiles_r * tiles_c):
        n = t // (tiles_r * tiles_c)
        r0 = (t // tiles_c) % tiles_r * _TILE
        c0 = t % tiles_c * _TILE
        for s in range(c0, min(cols, c0 + _TILE)):
            for r in range(r0, min(rows, r0 + _TILE)):
                out[n, s, r] = a[n, r, s]


def _to_channels_last(x: np.ndarray) -> np.ndarray:
    """``[N, C, H, W] -> [N, H * W, C]``: a pixel's channels contiguous."""
    n, c, h, w = x.shape
    out = np.empty((n, h * w, c), x.dtype)
    _transpose_last2(x.reshape(n, c, h * w), out)
    return out


@njit(**_JIT)
def _take_block(x3, c0, out):
    """``out[n, p, c] = x3[n, c0 + c, p]``: channels ``c0 ..`` of ``[N, C, H*W]``, channels-last
    (a backward thread's private copy of its channel block)."""
    n_img, hw, bc = out.shape
    for n in range(n_img):
        for p0 in range(0, hw, _TILE):
            for c in range(bc):
                for p in range(p0, min(hw, p0 + _TILE)):
                    out[n, p, c] = x3[n, c0 + c, p]


@njit(**_JIT)
def _put_block(block, c0, x3):
    """The inverse of :func:`_take_block`: ``x3[n, c0 + c, p] = block[n, p, c]``."""
    n_img, hw, bc = block.shape
    for n in range(n_img):
        for p0 in range(0, hw, _TILE):
            for c in range(bc):
                for p in range(p0, min(hw, p0 + _TILE)):
                    x3[n, c0 + c, p] = block[n, p, c]


def _channel_blocks(channels: int) -> int:
    """How many channel blocks a backward splits into: one per thread where ``channels``
    divides evenly (fewer blocks mean less per-RoI work repeated per block).

    Only the speed depends on it: every gradient element is summed in the same order
    whatever the blocks (there is no reassociation across channels), so results are bitwise
    the same for any number of threads.
    """
    for n_blocks in range(min(numba.get_num_threads(), channels), 0, -1):
        if channels % n_blocks == 0:
            return n_blocks
    return 1


def _block_buffer(x: np.ndarray) -> np.ndarray:
    """Scratch for a backward: one channels-last ``[N, H*W, C/blocks]`` buffer per block.

    Allocated here by NumPy, whose freed memory the next call reuses, rather than inside
    the kernel, where every call would fault in fresh pages (about 2 ms per 8 MB here).
    """
    n, channels, height, width = x.shape
    n_blocks = _channel_blocks(channels)
    return np.empty((n_blocks, n, height * width, channels // n_blocks), x.dtype)


# --- geometry tables, computed once per RoI ---------------------------------------------------


@njit(**_JIT)
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
        sy, sx, bh, bw, gh, gw, cnt = _align_box(
            F, x1, y1, x2, y2, scale, aligned, pooled_h, pooled_w, sampling_ratio
        )
        start_y[k], start_x[k], bin_h[k], bin_w[k] = sy, sx, bh, bw
        grid_h[k], grid_w[k], count[k] = gh, gw, cnt
    return start_y, start_x, bin_h, bin_w, grid_h, grid_w, count


@njit(**_JIT)
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


@njit(**_JIT)
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
                v = _sample_coord(F, start[k], bin_size[k], p, i, grid[k])
                inside, lo, hi, w_lo, w_hi = _bilinear_1d(F, v, size)
                if inside:  # a sample outside on one axis is 0 whatever the other axis says
                    n = _add_tap(pixels[k, p], weights[k, p], slot, n, lo, w_lo)
                    n = _add_tap(pixels[k, p], weights[k, p], slot, n, hi, w_hi)
            for t in range(n):
                slot[pixels[k, p, t]] = -1
                weights[k, p, t] /= norm[k]
            counts[k, p] = n
    return pixels, weights, counts


@njit(**_JIT)
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
                v = _sample_coord(F, start[k], bin_size[k], p, i, grid[k])
                inside, lo, hi, wl, wh = _bilinear_1d(F, v, size)
                if inside:
                    low[k, p, i], high[k, p, i] = lo, hi
                    w_low[k, p, i], w_high[k, p, i] = wl, wh
    return low, high, w_low, w_high


@njit(**_JIT)
def _warp_boxes(F, rois, scale):
    """RoIWarp's one quantization (:func:`geometry.warp_box`) of every box: [K, 4]."""
    boxes = np.empty((rois.shape[0], 4), rois.dtype)
    for k in range(rois.shape[0]):
        x1, y1, x2, y2 = _warp_box(F, rois[k, 1], rois[k, 2], rois[k, 3], rois[k, 4], scale)
        boxes[k, 0], boxes[k, 1], boxes[k, 2], boxes[k, 3] = x1, y1, x2, y2
    return boxes


# --- RoIAlign, average (and RoIWarp avg) -----------------------------------------------------


@njit(**_JIT)
def _store_channels_first(acc, out):
    """``out[c, p] = acc[p, c]``: one RoI's channels-last result into its NCHW output.
    (Reading along channels and writing with a stride is the faster order here, 2-4x.)"""
    for p in range(acc.shape[0]):
        for c in range(acc.shape[1]):
            out[c, p] = acc[p, c]


@njit(**_JIT)
def _load_channels_last(grad, c0, out):
    """``out[p, c] = grad[c0 + c, p]``: one RoI's gradient block, channels-last.
    (Writing along channels and reading with a stride is the faster order here, 4-5x.)"""
    for p in range(out.shape[0]):
        for c in range(out.shape[1]):
            out[p, c] = grad[c0 + c, p]


@njit(**_PJIT)
def _align_avg_forward(x_cl, batch, width, taps_y, taps_x, out):
    """``out [K, C, PH*PW]``: every bin is a weighted sum of taps (rows x columns).

    ``x_cl`` is ``[N, H*W, C]``; ``taps_y``/``taps_x`` are :func:`_avg_taps`' tables.
    """
    ty_pix, ty_w, ty_n = taps_y
    tx_pix, tx_w, tx_n = taps_x
    n_rois, channels, n_bins = out.shape
    pooled_w = tx_n.shape[1]
    for k in prange(n_rois):
        image = x_cl[batch[k]]
        acc = np.zeros((n_bins, channels), x_cl.dtype)  # this RoI's output, channels-last
        for b in range(n_bins):
            ph, pw = b // pooled_w, b % pooled_w
            a = acc[b]
            for i in range(ty_n[k, ph]):
                row = ty_pix[k, ph, i] * width
                w_y = ty_w[k, ph, i]
                for j in range(tx_n[k, pw]):
                    w = w_y * tx_w[k, pw, j]
                    pixel = image[row + tx_pix[k, pw, j]]
                    for c in range(channels):  # contiguous: a SIMD loop
                        a[c] += w * pixel[c]
        _store_channels_first(acc, out[k])


@njit(**_PJIT)
def _align_avg_backward(grad, batch, width, taps_y, taps_x, grad_blocks, grad_x):
    """Scatter ``grad [K, C, PH*PW]`` into ``grad_x [N, C, H*W]`` with the forward's taps.

    Race-free: iteration ``blk`` of the ``prange`` owns the channel block ``blk``. It
    accumulates all RoIs into its own channels-last buffer ``grad_blocks[blk]``, then writes
    those channels of ``grad_x``, which no other iteration touches.
    """
    ty_pix, ty_w, ty_n = taps_y
    tx_pix, tx_w, tx_n = taps_x
    n_rois, _, n_bins = grad.shape
    n_blocks, bc = grad_blocks.shape[0], grad_blocks.shape[3]
    pooled_w = tx_n.shape[1]
    for blk in prange(n_blocks):
        grad_cl = grad_blocks[blk]
        grad_cl[:] = 0
        g_cl = np.empty((n_bins, bc), grad.dtype)
        for k in range(n_rois):
            image = grad_cl[batch[k]]
            _load_channels_last(grad[k], blk * bc, g_cl)
            for b in range(n_bins):
                ph, pw = b // pooled_w, b % pooled_w
                g = g_cl[b]
                for i in range(ty_n[k, ph]):
                    row = ty_pix[k, ph, i] * width
                    w_y = ty_w[k, ph, i]
                    for j in range(tx_n[k, pw]):
                        w = w_y * tx_w[k, pw, j]
                        pixel = image[row + tx_pix[k, pw, j]]
                        for c in range(bc):
                            pixel[c] += w * g[c]
        _put_block(grad_cl, blk * bc, grad_x)


# --- RoIAlign max (and RoIWarp max) ---------------------------------------------------------


@njit(**_JIT)
def _bin_samples(k, ph, pw, n_samples, grid_w, samples_y, samples_x, width, corners, weights):
    """The samples of bin (ph, pw) of RoI k: ``corners[s]`` the 4 flat pixel indices
    ``y * width + x`` (-1 where the sample is outside), ``weights[s]`` their bilinear weights,
    in the python backend's order: (low, low), (low, high), (high, low), (high, high)."""
    y_lo, y_hi, wy_lo, wy_hi = samples_y
    x_lo, x_hi, wx_lo, wx_hi = samples_x
    for s in range(n_samples):
        iy, ix = s // grid_w, s % grid_w
        ylo, yhi, xlo, xhi = y_lo[k, ph, iy], y_hi[k, ph, iy], x_lo[k, pw, ix], x_hi[k, pw, ix]
        if ylo < 0 or xlo < 0:
            corners[s, :] = -1
            continue
        corners[s, 0], corners[s, 1] = ylo * width + xlo, ylo * width + xhi
        corners[s, 2], corners[s, 3] = yhi * width + xlo, yhi * width + xhi
        wyl, wyh, wxl, wxh = wy_lo[k, ph, iy], wy_hi[k, ph, iy], wx_lo[k, pw, ix], wx_hi[k, pw, ix]
        weights[s, 0], weights[s, 1] = wyl * wxl, wyl * wxh
        weights[s, 2], weights[s, 3] = wyh * wxl, wyh * wxh


@njit(**_JIT)
def _sample_values(image, corners, weights, out):
    """The bilinear value of one sample for every channel of ``image [H*W, c]``, into ``out``.

    The same expression, in the same order, as the python backend: bitwise equal values,
    hence the same argmax. An outside sample is 0.
    """
    if corners[0] < 0:
        out[:] = 0
        return
    w1, w2, w3, w4 = weights[0], weights[1], weights[2], weights[3]
    v1, v2, v3, v4 = image[corners[0]], image[corners[1]], image[corners[2]], image[corners[3]]
    for c in range(out.shape[0]):
        out[c] = w1 * v1[c] + w2 * v2[c] + w3 * v3[c] + w4 * v4[c]


@njit(**_PJIT)
def _align_max_forward(x_cl, batch, width, grid_h, grid_w, samples_y, samples_x, out):
    """``out [K, C, PH*PW]``: the largest sample of each bin, per channel (first one on ties).

    ``samples_y``/``samples_x``: the (low, high, w_low, w_high) tables of :func:`_max_samples`.
    """
    n_rois, channels, n_bins = out.shape
    pooled_w = samples_x[0].shape[1]
    max_samples = samples_y[0].shape[2] * samples_x[0].shape[2]
    for k in prange(n_rois):
        image = x_cl[batch[k]]
        n_samples = grid_h[k] * grid_w[k]
        corners = np.empty((max_samples, 4), np.int64)
        weights = np.empty((max_samples, 4), x_cl.dtype)
        best = np.zeros((n_bins, channels), x_cl.dtype)  # an empty grid pools to 0
        value = np.empty(channels, x_cl.dtype)
        for b in range(n_bins):
            ph, pw = b // pooled_w, b % pooled_w
            _bin_samples(
                k, ph, pw, n_samples, grid_w[k], samples_y, samples_x, width, corners, weights
            )
            m = best[b]
            for s in range(n_samples):
                _sample_values(image, corners[s], weights[s], value)
                if s == 0:
                    m[:] = value
                else:
                    for c in range(channels):
                        m[c] = value[c] if value[c] > m[c] else m[c]
        _store_channels_first(best, out[k])


@njit(**_PJIT)
def _align_max_backward(
    x, grad, batch, width, grid_h, grid_w, samples_y, samples_x, x_blocks, grad_blocks, grad_x
):
    """The gradient of each bin goes to the 4 pixels of its winning sample, times their
    bilinear weights (no 1/count). Race-free by channel blocks, as the avg backward; each
    block also takes its own channels-last copy of ``x [N, C, H*W]`` into ``x_blocks[blk]``."""
    n_rois, _, n_bins = grad.shape
    n_blocks, bc = grad_blocks.shape[0], grad_blocks.shape[3]
    pooled_w = samples_x[0].shape[1]
    max_samples = samples_y[0].shape[2] * samples_x[0].shape[2]
    for blk in prange(n_blocks):
        corners = np.empty((max_samples, 4), np.int64)
        weights = np.empty((max_samples, 4), x.dtype)
        best = np.empty(bc, x.dtype)
        arg = np.zeros(bc, np.int32)
        value = np.empty(bc, x.dtype)
        g_cl = np.empty((n_bins, bc), grad.dtype)
        x_cl = x_blocks[blk]
        _take_block(x, blk * bc, x_cl)
        grad_cl = grad_blocks[blk]
        grad_cl[:] = 0
        for k in range(n_rois):
            n_samples = grid_h[k] * grid_w[k]
            if n_samples == 0:
                continue  # an empty grid: output 0, no gradient
            image = x_cl[batch[k]]
            g_image = grad_cl[batch[k]]
            _load_channels_last(grad[k], blk * bc, g_cl)
            for b in range(n_bins):
                ph, pw = b // pooled_w, b % pooled_w
                _bin_samples(
                    k, ph, pw, n_samples, grid_w[k], samples_y, samples_x, width, corners, weights
                )
                # recompute the forward's argmax, channels innermost
                for s in range(n_samples):
                    _sample_values(image, corners[s], weights[s], value)
                    if s == 0:
                        best[:] = value
                        arg[:] = 0
                    else:
                        for c in range(bc):
                            better = value[c] > best[c]
                            best[c] = value[c] if better else best[c]
                            arg[c] = s if better else arg[c]
                # scatter, per channel, to the 4 corners of its winning sample (python's order)
                g = g_cl[b]
                for c in range(bc):
                    s = arg[c]
                    if corners[s, 0] < 0:
                        continue  # an outside sample won (all samples <= 0): no gradient
                    for corner in range(4):
                        g_image[corners[s, corner], c] += g[c] * weights[s, corner]
        _put_block(grad_cl, blk * bc, grad_x)


# --- RoIPool ---------------------------------------------------------------------------------


@njit(**_PJIT)
def _pool_forward(F, x_cl, rois, batch, scale, height, width, out, argmax):
    """``out [K, C, PH, PW]``: the max of each quantized bin (Fast R-CNN sec. 2.1), and
    ``argmax``: the flat pixel index ``y * W + x`` of the first maximum (-1: empty bin)."""
    n_rois, channels, pooled_h, pooled_w = out.shape
    for k in prange(n_rois):
        image = x_cl[batch[k]]
        start_y, start_x, bin_h, bin_w = _pool_box(
            F, rois[k, 1], rois[k, 2], rois[k, 3], rois[k, 4], scale, pooled_h, pooled_w
        )
        best = np.zeros((pooled_h * pooled_w, channels), x_cl.dtype)  # empty bins give 0
        arg = np.full((pooled_h * pooled_w, channels), -1, np.int64)
        for ph in range(pooled_h):
            h_lo, h_hi = _pool_bin(F, ph, bin_h, start_y, height)
            for pw in range(pooled_w):
                w_lo, w_hi = _pool_bin(F, pw, bin_w, start_x, width)
                if h_hi <= h_lo or w_hi <= w_lo:
                    continue
                m = best[ph * pooled_w + pw]
                a = arg[ph * pooled_w + pw]
                m[:] = image[h_lo * width + w_lo]  # the first pixel; ">" keeps the first max
                a[:] = h_lo * width + w_lo
                for yy in range(h_lo, h_hi):
                    for xx in range(w_lo, w_hi):
                        index = yy * width + xx
                        pixel = image[index]
                        for c in range(channels):
                            better = pixel[c] > m[c]
                            m[c] = pixel[c] if better else m[c]
                            a[c] = index if better else a[c]
        _store_channels_first(best, out[k].reshape(channels, pooled_h * pooled_w))
        _store_channels_first(arg, argmax[k].reshape(channels, pooled_h * pooled_w))


@njit(**_PJIT)
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


@njit(**_PJIT)
def _pool_backward(F, x, rois, batch, scale, height, width, grad, x_blocks, grad_blocks, grad_x):
    """``grad_x[argmax] += grad`` per bin (Fast R-CNN eq. 4), the argmax recomputed.
    Race-free by channel blocks, as the RoIAlign backward."""
    n_rois, _, pooled_h, pooled_w = grad.shape
    n_blocks, bc = grad_blocks.shape[0], grad_blocks.shape[3]
    for blk in prange(n_blocks):
        best = np.empty(bc, x.dtype)
        arg = np.empty(bc, np.int32)  # flat pixel index yy * width + xx
        g_cl = np.empty((pooled_h * pooled_w, bc), grad.dtype)
        x_cl = x_blocks[blk]
        _take_block(x, blk * bc, x_cl)
        grad_cl = grad_blocks[blk]
        grad_cl[:] = 0
        for k in range(n_rois):
            image = x_cl[batch[k]]
            g_image = grad_cl[batch[k]]
            _load_channels_last(grad[k].reshape(-1, pooled_h * pooled_w), blk * bc, g_cl)
            start_y, start_x, bin_h, bin_w = _pool_box(
                F, rois[k, 1], rois[k, 2], rois[k, 3], rois[k, 4], scale, pooled_h, pooled_w
            )
            for ph in range(pooled_h):
                h_lo, h_hi = _pool_bin(F, ph, bin_h, start_y, height)
                for pw in range(pooled_w):
                    w_lo, w_hi = _pool_bin(F, pw, bin_w, start_x, width)
                    if h_hi <= h_lo or w_hi <= w_lo:
                        continue
                    best[:] = image[h_lo * width + w_lo]
                    arg[:] = h_lo * width + w_lo
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
                        g_image[arg[c], c] += g[c]
        _put_block(grad_cl, blk * bc, grad_x)


# --- Precise RoI Pooling (IoU-Net, Jiang et al., ECCV 2018, sec. 3.3) -----------------------


@njit(**_JIT)
def _prroi_boxes(F, boxes, scale, aligned, pooled_h, pooled_w):
    """:func:`geometry.prroi_box` for every RoI: ``start_y, start_x, bin_h, bin_w`` arrays."""
    n_rois = boxes.shape[0]
    out = np.empty((4, n_rois), boxes.dtype)
    for k in range(n_rois):
        sy, sx, bh, bw = _prroi_box(
            F,
            boxes[k, 0],
            boxes[k, 1],
            boxes[k, 2],
            boxes[k, 3],
            scale,
            aligned,
            pooled_h,
            pooled_w,
        )
        out[0, k], out[1, k], out[2, k], out[3, k] = sy, sx, bh, bw
    return out[0], out[1], out[2], out[3]


@njit(**_JIT)
def _prroi_edges(F, start, bin_size, pooled):
    """The bin edges along one axis, ``edges[k, e] = start + e * bin`` for e = 0 .. pooled,
    as the python backend computes them (bin p spans edges p and p + 1)."""
    edges = np.empty((start.shape[0], pooled + 1), start.dtype)
    for k in range(start.shape[0]):
        for e in range(pooled + 1):
            edges[k, e] = start[k] + F(e) * bin_size[k]
    return edges


@njit(**_JIT)
def _prroi_taps(F, edges, size, norm):
    """Along one axis, per RoI and bin, the pixels whose tents overlap the bin and the tent
    integrals over it (divided by ``norm[k]``), as :func:`_avg_taps`' tables; ``norm[k] <= 0``
    (a zero-area RoI) gives no taps at all."""
    n_rois, pooled = edges.shape[0], edges.shape[1] - 1
    cap = 1
    for k in range(n_rois):
        for p in range(pooled):
            lo, hi = _tent_support(edges[k, p], edges[k, p + 1], size)
            cap = max(cap, hi - lo)
    pixels = np.zeros((n_rois, pooled, cap), np.int32)
    weights = np.zeros((n_rois, pooled, cap), edges.dtype)
    counts = np.zeros((n_rois, pooled), np.int32)
    for k in range(n_rois):
        if not norm[k] > 0:
            continue
        for p in range(pooled):
            lo, hi = _tent_support(edges[k, p], edges[k, p + 1], size)
            for t in range(hi - lo):
                pixels[k, p, t] = lo + t
                weights[k, p, t] = _tent_integral(F, edges[k, p], edges[k, p + 1], lo + t) / norm[k]
            counts[k, p] = hi - lo
    return pixels, weights, counts


@njit(**_JIT)
def _prroi_edge_taps(F, edges, size):
    """Along one axis, per RoI and edge: the tent values at the edge (the map's weights along
    it), the same table layout (at most 2 pixels: a point touches 2 tents)."""
    n_rois, n_edges = edges.shape
    pixels = np.zeros((n_rois, n_edges, 2), np.int32)
    weights = np.zeros((n_rois, n_edges, 2), edges.dtype)
    counts = np.zeros((n_rois, n_edges), np.int32)
    for k in range(n_rois):
        for e in range(n_edges):
            t = edges[k, e]
            lo, hi = _tent_support(t, t, size)
            for i in range(lo, hi):
                pixels[k, e, i - lo] = i
                weights[k, e, i - lo] = _tent(F, t - F(i))
            counts[k, e] = hi - lo
    return pixels, weights, counts


@njit(**_JIT)
def _separable_sum(image, width, k, py, taps_y, px, taps_x, out):
    """``out[c] = sum_ij image[row_i * width + col_j, c] * wy_i * wx_j`` for RoI k, with entry
    ``py`` of the y table and ``px`` of the x table: the python backend's expression and
    order, so that the box gradient (differences of such sums) agrees with it bitwise."""
    ty_pix, ty_w, ty_n = taps_y
    tx_pix, tx_w, tx_n = taps_x
    out[:] = 0
    for i in range(ty_n[k, py]):
        row = ty_pix[k, py, i] * width
        w_y = ty_w[k, py, i]
        for j in range(tx_n[k, px]):
            w_x = tx_w[k, px, j]
            pixel = image[row + tx_pix[k, px, j]]
            for c in range(out.shape[0]):
                out[c] += pixel[c] * w_y * w_x


@njit(**_PJIT)
def _prroi_box_backward(F, x_cl, grad, batch, width, scale, edges_y, edges_x, area, tables):
    """The gradient to the box corners, ``[K, 5]``: Leibniz's rule per bin edge (see the
    python backend), then the chain rule to the corners. RoIs are independent: ``prange``."""
    int_y, int_x, edge_y, edge_x = tables  # tent integrals per bin, tent values per edge
    n_rois, channels, pooled_h, pooled_w = grad.shape
    grad_rois = np.zeros((n_rois, 5), x_cl.dtype)
    one, zero = F(1), F(0)
    for k in prange(n_rois):
        if not area[k] > 0:
            continue  # a zero-area bin pools to 0 and has no gradient
        image = x_cl[batch[k]]
        out = np.empty(channels, x_cl.dtype)
        edge_sum = np.empty((4, channels), x_cl.dtype)
        for ph in range(pooled_h):
            for pw in range(pooled_w):
                # the bin's output and the map's integrals along its 4 edges, all channels
                _separable_sum(image, width, k, ph, int_y, pw, int_x, out)
                _separable_sum(image, width, k, ph, edge_y, pw, int_x, edge_sum[0])  # y0
                _separable_sum(image, width, k, ph + 1, edge_y, pw, int_x, edge_sum[1])  # y1
                _separable_sum(image, width, k, ph, int_y, pw, edge_x, edge_sum[2])  # x0
                _separable_sum(image, width, k, ph, int_y, pw + 1, edge_x, edge_sum[3])  # x1
                extent_x = edges_x[k, pw + 1] - edges_x[k, pw]  # the y edges' length
                extent_y = edges_y[k, ph + 1] - edges_y[k, ph]
                d_y0, d_y1, d_x0, d_x1 = zero, zero, zero, zero
                for c in range(channels):
                    g = grad[k, c, ph, pw]
                    o = out[c] / area[k]
                    d_y0 += g * -one * (edge_sum[0, c] - o * extent_x) / area[k]
                    d_y1 += g * one * (edge_sum[1, c] - o * extent_x) / area[k]
                    d_x0 += g * -one * (edge_sum[2, c] - o * extent_y) / area[k]
                    d_x1 += g * one * (edge_sum[3, c] - o * extent_y) / area[k]
                # edge y0 of bin ph is y1_box + ph / PH * (y2_box - y1_box)
                fy0, fy1 = F(ph) / F(pooled_h), F(ph + 1) / F(pooled_h)
                fx0, fx1 = F(pw) / F(pooled_w), F(pw + 1) / F(pooled_w)
                grad_rois[k, 1] += scale * (d_x0 * (one - fx0) + d_x1 * (one - fx1))
                grad_rois[k, 3] += scale * (d_x0 * fx0 + d_x1 * fx1)
                grad_rois[k, 2] += scale * (d_y0 * (one - fy0) + d_y1 * (one - fy1))
                grad_rois[k, 4] += scale * (d_y0 * fy0 + d_y1 * fy1)
    return grad_rois


# --- boxes -----------------------------------------------------------------------------------


@njit(**_PJIT)
def _box_iou(F, boxes1, boxes2):
    """``iou[i, j]`` in ``F``, the python backend's expression; rows in parallel."""
    iou = np.empty((boxes1.shape[0], boxes2.shape[0]), boxes1.dtype)
    for i in prange(boxes1.shape[0]):
        ax1, ay1, ax2, ay2 = boxes1[i, 0], boxes1[i, 1], boxes1[i, 2], boxes1[i, 3]
        area_a = _box_area(ax1, ay1, ax2, ay2)
        for j in range(boxes2.shape[0]):
            bx1, by1, bx2, by2 = boxes2[j, 0], boxes2[j, 1], boxes2[j, 2], boxes2[j, 3]
            inter = _box_intersection(F, ax1, ay1, ax2, ay2, bx1, by1, bx2, by2)
            iou[i, j] = inter / (area_a + _box_area(bx1, by1, bx2, by2) - inter)
    return iou


@njit(**_JIT)
def _nms(F, boxes, order, threshold):
    """Greedy NMS in score order: each kept box suppresses the later boxes it overlaps by
    more than ``threshold``. The IoU is computed in ``F`` and compared in float64 (a float32
    IoU is promoted, as in torchvision: 0.3 in float32 rounds up and is suppressed at 0.3)."""
    n = order.shape[0]
    areas = np.empty(boxes.shape[0], boxes.dtype)
    for i in range(boxes.shape[0]):
        areas[i] = _box_area(boxes[i, 0], boxes[i, 1], boxes[i, 2], boxes[i, 3])
    suppressed = np.zeros(boxes.shape[0], np.bool_)
    keep = np.empty(n, np.int64)
    n_keep = 0
    for a in range(n):
        i = order[a]
        if suppressed[i]:
            continue
        keep[n_keep] = i
        n_keep += 1
        for b in range(a + 1, n):
            j = order[b]
            if suppressed[j]:
                continue
            inter = _box_intersection(
                F,
                boxes[i, 0],
                boxes[i, 1],
                boxes[i, 2],
                boxes[i, 3],
                boxes[j, 0],
                boxes[j, 1],
                boxes[j, 2],
                boxes[j, 3],
            )
            if inter / (areas[i] + areas[j] - inter) > threshold:
                suppressed[j] = True
    return keep[:n_keep]


# --- drivers ---------------------------------------------------------------------------------


# Below this much work (input plus output elements) a call runs on one thread: waking the
# other threads costs more than they save, and far more on a busy machine. Tests set it to 0
# to run small inputs in parallel.
PARALLEL_MIN_WORK = 1 << 16


@contextlib.contextmanager
def _threads_for(work: int):
    """Run the enclosed kernels on one thread when ``work`` is small (results do not depend
    on the number of threads; only the speed does)."""
    if work >= PARALLEL_MIN_WORK or numba.get_num_threads() == 1:
        yield
        return
    saved = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(saved)


def _roi_work(a: RoIArgs) -> int:
    return a.x.size + a.rois.shape[0] * a.x.shape[1] * a.pooled_h * a.pooled_w


def _roi_boxes(a: RoIArgs) -> np.ndarray:
    return np.ascontiguousarray(a.rois[:, 1:])


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


def _align_forward(a: RoIArgs, boxes: np.ndarray, scale: float, aligned: bool) -> np.ndarray:
    n_rois, channels = boxes.shape[0], a.x.shape[1]
    out = np.empty((n_rois, channels, a.pooled_h, a.pooled_w), a.x.dtype)  # all written
    if n_rois == 0:
        return out
    tables = _sampling(a, boxes, scale, aligned)
    x_cl = _to_channels_last(a.x)
    out3 = out.reshape(n_rois, channels, a.pooled_h * a.pooled_w)
    width = a.x.shape[3]
    if a.pool_mode == "avg":
        _align_avg_forward(x_cl, a.batch, width, *tables, out3)
    else:
        _align_max_forward(x_cl, a.batch, width, *tables, out3)
    return out


def _align_backward(a: RoIArgs, boxes: np.ndarray, scale: float, aligned: bool) -> np.ndarray:
    n, channels, height, width = a.x.shape
    n_rois = boxes.shape[0]
    if n_rois == 0:
        return np.zeros_like(a.x)
    tables = _sampling(a, boxes, scale, aligned)
    grad = a.grad_output.reshape(n_rois, channels, a.pooled_h * a.pooled_w)
    grad_x = np.empty_like(a.x)  # every channel block writes all of its channels
    grad_x3 = grad_x.reshape(n, channels, height * width)
    if a.pool_mode == "avg":
        _align_avg_backward(grad, a.batch, width, *tables, _block_buffer(a.x), grad_x3)
    else:
        x3 = a.x.reshape(n, channels, height * width)
        x_blocks, grad_blocks = _block_buffer(a.x), _block_buffer(a.x)
        _align_max_backward(x3, grad, a.batch, width, *tables, x_blocks, grad_blocks, grad_x3)
    return grad_x


def _warp_quantized(a: RoIArgs) -> np.ndarray:
    F = a.float_type
    return _warp_boxes(F, a.rois, F(a.spatial_scale))


def _prroi_geometry(a: RoIArgs):
    """PrRoIPool's bin edges along y and x (``[K, P + 1]``) and bin areas (``[K]``)."""
    F = a.float_type
    start_y, start_x, bin_h, bin_w = _prroi_boxes(
        F, _roi_boxes(a), F(a.spatial_scale), a.aligned, a.pooled_h, a.pooled_w
    )
    edges_y = _prroi_edges(F, start_y, bin_h, a.pooled_h)
    edges_x = _prroi_edges(F, start_x, bin_w, a.pooled_w)
    return edges_y, edges_x, bin_h * bin_w


# --- the backend interface -----------------------------------------------------------------


def roi_align_forward(
    x, rois, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False, pool_mode="avg"
):
    """RoIAlign (Mask R-CNN sec. 3): average (or max) of bilinear samples in each bin."""
    a = check_roi_args(x, rois, output_size, spatial_scale, sampling_ratio, aligned, pool_mode)
    with _threads_for(_roi_work(a)):
        return _align_forward(a, _roi_boxes(a), a.spatial_scale, a.aligned)


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
    with _threads_for(_roi_work(a)):
        return _align_backward(a, _roi_boxes(a), a.spatial_scale, a.aligned)


def roi_warp_forward(x, rois, output_size, spatial_scale=1.0, sampling_ratio=-1, pool_mode="max"):
    """RoIWarp: quantize the box once, then sample bilinearly (Mask R-CNN Table 2c)."""
    a = check_roi_args(x, rois, output_size, spatial_scale, sampling_ratio, False, pool_mode)
    with _threads_for(_roi_work(a)):
        return _align_forward(a, _warp_quantized(a), 1.0, False)


def roi_warp_backward(
    x, rois, grad_output, output_size, spatial_scale=1.0, sampling_ratio=-1, pool_mode="max"
):
    """Gradient of :func:`roi_warp_forward` with respect to ``x``."""
    a = check_roi_args(
        x, rois, output_size, spatial_scale, sampling_ratio, False, pool_mode, grad_output
    )
    with _threads_for(_roi_work(a)):
        return _align_backward(a, _warp_quantized(a), 1.0, False)


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
    with _threads_for(_roi_work(a)):
        F = a.float_type
        n_rois, (_, channels, height, width) = a.rois.shape[0], a.x.shape
        out = np.empty((n_rois, channels, a.pooled_h, a.pooled_w), a.x.dtype)
        argmax = np.empty(out.shape, np.int64)
        if n_rois:
            x_cl = _to_channels_last(a.x)
            _pool_forward(F, x_cl, a.rois, a.batch, F(a.spatial_scale), height, width, out, argmax)
        return out, argmax


def roi_pool_backward_from_argmax(x, rois, grad_output, argmax, output_size, spatial_scale=1.0):
    """The RoIPool backward given the forward's argmax: ``grad_x[argmax] += grad_output``."""
    a = check_roi_args(x, rois, output_size, spatial_scale, grad_output=grad_output)
    n, channels, height, width = a.x.shape
    argmax = check_argmax(argmax, a.grad_output.shape, height * width, check_range=False)
    grad_x = np.zeros_like(a.x)
    with _threads_for(_roi_work(a)):
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
    with _threads_for(_roi_work(a)):
        if a.rois.shape[0] == 0:
            return np.zeros_like(a.x)
        F = a.float_type
        n, channels, height, width = a.x.shape
        x3 = a.x.reshape(n, channels, height * width)
        grad_x = np.empty_like(a.x)
        scale = F(a.spatial_scale)
        _pool_backward(
            F,
            x3,
            a.rois,
            a.batch,
            scale,
            height,
            width,
            a.grad_output,
            _block_buffer(a.x),
            _block_buffer(a.x),
            grad_x.reshape(n, channels, height * width),
        )
        return grad_x


def box_iou(boxes1, boxes2):
    """Intersection over union of every pair: [N, M] (0 / 0 = NaN, as torchvision)."""
    boxes1 = check_boxes("boxes1", boxes1)
    boxes2 = np.ascontiguousarray(check_boxes("boxes2", boxes2), dtype=boxes1.dtype)
    with _threads_for(boxes1.shape[0] * boxes2.shape[0]):
        return _box_iou(boxes1.dtype.type, boxes1, boxes2)


def nms(boxes, scores, iou_threshold):
    """Greedy non-maximum suppression: visit boxes by decreasing score (stable on ties) and
    drop every later box whose IoU with a kept one is strictly greater than the threshold."""
    boxes, scores, threshold = check_nms_args(boxes, scores, iou_threshold)
    F = boxes.dtype.type
    order = np.argsort(-scores, kind="stable")
    return _nms(F, boxes, order, float(threshold))


def prroi_pool_forward(x, rois, output_size, spatial_scale=1.0, aligned=False):
    """PrRoIPool (IoU-Net sec. 3.3): the exact integral of the bilinearly interpolated map
    over each bin, divided by its area. Separable like avg RoIAlign, with tent integrals as
    the taps, so it runs on the RoIAlign kernel."""
    a = check_roi_args(x, rois, output_size, spatial_scale, aligned=aligned)
    with _threads_for(_roi_work(a)):
        F = a.float_type
        n_rois, (_, channels, height, width) = a.rois.shape[0], a.x.shape
        out = np.empty((n_rois, channels, a.pooled_h, a.pooled_w), a.x.dtype)
        if n_rois == 0:
            return out
        edges_y, edges_x, area = _prroi_geometry(a)
        taps_y = _prroi_taps(F, edges_y, height, area)  # 1 / area folded into the y taps
        taps_x = _prroi_taps(F, edges_x, width, np.ones_like(area))
        x_cl = _to_channels_last(a.x)
        out3 = out.reshape(n_rois, channels, a.pooled_h * a.pooled_w)
        _align_avg_forward(x_cl, a.batch, width, taps_y, taps_x, out3)
        return out


def prroi_pool_backward(x, rois, grad_output, output_size, spatial_scale=1.0, aligned=False):
    """Gradients of PrRoIPool to the input and to the box: ``(grad_x, grad_rois)``."""
    a = check_roi_args(
        x, rois, output_size, spatial_scale, aligned=aligned, grad_output=grad_output
    )
    with _threads_for(_roi_work(a)):
        F = a.float_type
        n_rois, (n, channels, height, width) = a.rois.shape[0], a.x.shape
        if n_rois == 0:
            return np.zeros_like(a.x), np.zeros_like(a.rois)
        edges_y, edges_x, area = _prroi_geometry(a)
        ones = np.ones_like(area)
        # to the input: the forward's weights, scattered as the RoIAlign backward does
        taps_y = _prroi_taps(F, edges_y, height, area)
        taps_x = _prroi_taps(F, edges_x, width, ones)
        grad_x = np.empty_like(a.x)
        grad = a.grad_output.reshape(n_rois, channels, a.pooled_h * a.pooled_w)
        grad_x3 = grad_x.reshape(n, channels, height * width)
        _align_avg_backward(grad, a.batch, width, taps_y, taps_x, _block_buffer(a.x), grad_x3)
        # to the box: unnormalized integrals and the tent values along the bin edges
        tables = (
            _prroi_taps(F, edges_y, height, ones),
            taps_x,
            _prroi_edge_taps(F, edges_y, height),
            _prroi_edge_taps(F, edges_x, width),
        )
        x_cl = _to_channels_last(a.x)
        grad_rois = _prroi_box_backward(
            F,
            x_cl,
            a.grad_output,
            a.batch,
            width,
            F(a.spatial_scale),
            edges_y,
            edges_x,
            area,
            tables,
        )
        return grad_x, grad_rois


__all__ = [
    "box_iou",
    "nms",
    "prroi_pool_backward",
    "prroi_pool_forward",
    "roi_align_backward",
    "roi_align_forward",
    "roi_pool_backward",
    "roi_pool_forward",
    "roi_warp_backward",
    "roi_warp_forward",
]
