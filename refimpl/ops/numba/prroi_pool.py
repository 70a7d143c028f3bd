"""Precise RoI Pooling (IoU-Net, Jiang et al., ECCV 2018, sec. 3.3) on the CPU: the exact
integral of the bilinearly interpolated map over each bin, divided by its area, and its
gradients to the input and to the box.

The integral is separable like avg RoIAlign, with tent integrals as the taps, so the forward
and the input gradient run on :mod:`._taps`. The box gradient (Leibniz's rule per bin edge,
see the python backend) needs the map's integrals along the bin edges: its own kernel.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from ..validate import check_roi_args
from ._compile import (
    JIT,
    PJIT,
    prroi_area,
    prroi_box,
    roi_work,
    tent,
    tent_integral,
    tent_support,
    thread_scratch,
    threads_for,
)
from ._layout import block_buffer, to_channels_last
from ._taps import taps_backward, taps_forward


@njit(**JIT)
def _prroi_boxes(F, boxes, scale, aligned, pooled_h, pooled_w):
    """:func:`geometry.prroi_box` for every RoI: ``start_y, start_x, bin_h, bin_w`` arrays."""
    n_rois = boxes.shape[0]
    out = np.empty((4, n_rois), boxes.dtype)
    for k in range(n_rois):
        sy, sx, bh, bw = prroi_box(
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


@njit(**JIT)
def _areas(F, bin_h, bin_w):
    """:func:`geometry.prroi_area` of every RoI's bins."""
    area = np.empty_like(bin_h)
    for k in range(area.shape[0]):
        area[k] = prroi_area(F, bin_h[k], bin_w[k])
    return area


@njit(**JIT)
def _prroi_edges(F, start, bin_size, pooled):
    """The bin edges along one axis, ``edges[k, e] = start + e * bin`` for e = 0 .. pooled,
    as the python backend computes them (bin p spans edges p and p + 1)."""
    edges = np.empty((start.shape[0], pooled + 1), start.dtype)
    for k in range(start.shape[0]):
        for e in range(pooled + 1):
            edges[k, e] = start[k] + F(e) * bin_size[k]
    return edges


@njit(**JIT)
def _prroi_taps(F, edges, size, norm):
    """Along one axis, per RoI and bin, the pixels whose tents overlap the bin and the tent
    integrals over it (divided by ``norm[k]``), as :mod:`._taps`' tables; ``norm[k] <= 0``
    (a zero-area RoI) gives no taps at all."""
    n_rois, pooled = edges.shape[0], edges.shape[1] - 1
    cap = 1
    for k in range(n_rois):
        for p in range(pooled):
            lo, hi = tent_support(edges[k, p], edges[k, p + 1], size)
            cap = max(cap, hi - lo)
    pixels = np.zeros((n_rois, pooled, cap), np.int32)
    weights = np.zeros((n_rois, pooled, cap), edges.dtype)
    counts = np.zeros((n_rois, pooled), np.int32)
    for k in range(n_rois):
        if not norm[k] > 0:
            continue
        for p in range(pooled):
            lo, hi = tent_support(edges[k, p], edges[k, p + 1], size)
            for t in range(hi - lo):
                pixels[k, p, t] = lo + t
                weights[k, p, t] = tent_integral(F, edges[k, p], edges[k, p + 1], lo + t) / norm[k]
            counts[k, p] = hi - lo
    return pixels, weights, counts


@njit(**JIT)
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
            lo, hi = tent_support(t, t, size)
            for i in range(lo, hi):
                pixels[k, e, i - lo] = i
                weights[k, e, i - lo] = tent(F, t - F(i))
            counts[k, e] = hi - lo
    return pixels, weights, counts


@njit(**JIT)
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


@njit(**PJIT)
def _prroi_box_backward(
    F, x_cl, grad, batch, width, scale, edges_y, edges_x, area, tables, scratch, grad_rois
):
    """The gradient to the box corners, ``grad_rois [K, 5]`` (zeros on entry): Leibniz's
    rule per bin edge (see the python backend), then the chain rule to the corners. RoIs are
    independent: ``prange``. ``scratch``: :func:`thread_scratch` of ``(5, C)``."""
    int_y, int_x, edge_y, edge_x = tables  # tent integrals per bin, tent values per edge
    n_rois, channels, pooled_h, pooled_w = grad.shape
    one, zero = F(1), F(0)
    for k in prange(n_rois):
        if not area[k] > 0:
            continue  # a zero-area bin pools to 0 and has no gradient
        image = x_cl[batch[k]]
        buffers = scratch[numba.get_thread_id()]
        out, edge_sum = buffers[4], buffers[:4]
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


def _geometry(a):
    """PrRoIPool's bin edges along y and x (``[K, P + 1]``) and bin areas (``[K]``)."""
    F = a.float_type
    start_y, start_x, bin_h, bin_w = _prroi_boxes(
        F,
        np.ascontiguousarray(a.rois[:, 1:]),
        F(a.spatial_scale),
        a.aligned,
        a.pooled_h,
        a.pooled_w,
    )
    edges_y = _prroi_edges(F, start_y, bin_h, a.pooled_h)
    edges_x = _prroi_edges(F, start_x, bin_w, a.pooled_w)
    return edges_y, edges_x, _areas(F, bin_h, bin_w)


# --- the backend interface -----------------------------------------------------------------


def prroi_pool_forward(x, rois, output_size, spatial_scale=1.0, aligned=False):
    """PrRoIPool (IoU-Net sec. 3.3): the exact integral of the bilinearly interpolated map
    over each bin, divided by its area. Separable like avg RoIAlign, with tent integrals as
    the taps, so it runs on the RoIAlign kernel."""
    a = check_roi_args(x, rois, output_size, spatial_scale, aligned=aligned)
    with threads_for(roi_work(a)):
        F = a.float_type
        n_rois, (_, channels, height, width) = a.rois.shape[0], a.x.shape
        out = np.empty((n_rois, channels, a.pooled_h, a.pooled_w), a.x.dtype)
        if n_rois == 0:
            return out
        edges_y, edges_x, area = _geometry(a)
        taps_y = _prroi_taps(F, edges_y, height, area)  # 1 / area folded into the y taps
        taps_x = _prroi_taps(F, edges_x, width, np.ones_like(area))
        x_cl = to_channels_last(a.x)
        out3 = out.reshape(n_rois, channels, a.pooled_h * a.pooled_w)
        taps_forward(x_cl, a.batch, width, taps_y, taps_x, out3)
        return out


def prroi_pool_backward(x, rois, grad_output, output_size, spatial_scale=1.0, aligned=False):
    """Gradients of PrRoIPool to the input and to the box: ``(grad_x, grad_rois)``."""
    a = check_roi_args(
        x, rois, output_size, spatial_scale, aligned=aligned, grad_output=grad_output
    )
    with threads_for(roi_work(a)):
        F = a.float_type
        n_rois, (n, channels, height, width) = a.rois.shape[0], a.x.shape
        if n_rois == 0:
            return np.zeros_like(a.x), np.zeros_like(a.rois)
        edges_y, edges_x, area = _geometry(a)
        ones = np.ones_like(area)
        # to the input: the forward's weights, scattered as the RoIAlign backward does
        taps_y = _prroi_taps(F, edges_y, height, area)
        taps_x = _prroi_taps(F, edges_x, width, ones)
        grad_x = np.empty_like(a.x)
        grad = a.grad_output.reshape(n_rois, channels, a.pooled_h * a.pooled_w)
        grad_x3 = grad_x.reshape(n, channels, height * width)
        taps_backward(grad, a.batch, width, taps_y, taps_x, block_buffer(a.x), grad_x3)
        # to the box: unnormalized integrals and the tent values along the bin edges
        tables = (
            _prroi_taps(F, edges_y, height, ones),
            taps_x,
            _prroi_edge_taps(F, edges_y, height),
            _prroi_edge_taps(F, edges_x, width),
        )
        grad_rois = np.zeros((n_rois, 5), a.x.dtype)
        _prroi_box_backward(
            F,
            to_channels_last(a.x),
            a.grad_output,
            a.batch,
            width,
            F(a.spatial_scale),
            edges_y,
            edges_x,
            area,
            tables,
            thread_scratch((5, channels), a.x.dtype),
            grad_rois,
        )
        return grad_x, grad_rois
