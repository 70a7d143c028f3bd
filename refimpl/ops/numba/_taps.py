"""Separable pooling: every bin a weighted sum of row taps times column taps.

A bilinear sample's weight on pixel ``(h, w)`` is a y weight times an x weight (Mask R-CNN
sec. 3), and avg RoIAlign sums a regular grid of samples, so a bin's average is
``sum_i wy_i * sum_j wx_j * x[row_i, col_j]``: each bin keeps the list of (row, weight)
"taps" of its samples along y, duplicates merged and ``1 / count`` folded in, and likewise
(col, weight) along x (typically 3-4 taps per axis for 2x2 samples). PrRoIPool (IoU-Net
sec. 3.3) is separable the same way, its taps being tent integrals, and runs on the same two
kernels. A table of taps is ``(pixels [K, P, cap] int32, weights [K, P, cap], counts [K, P])``.
"""

from __future__ import annotations

import numba
from numba import njit, prange

from ._compile import PJIT, thread_scratch
from ._layout import load_channels_last, put_block, store_channels_first


def taps_forward(x_cl, batch, width, taps_y, taps_x, out):
    """``out [K, C, PH*PW]``: every bin is a weighted sum of taps (rows x columns).

    ``x_cl`` is ``[N, H*W, C]``; RoIs are independent, so the ``prange`` runs over them.
    """
    n_bins, channels = out.shape[2], out.shape[1]
    scratch = thread_scratch((n_bins, channels), x_cl.dtype)  # one RoI's output, channels-last
    _taps_forward(x_cl, batch, width, taps_y, taps_x, scratch, out)


@njit(**PJIT)
def _taps_forward(x_cl, batch, width, taps_y, taps_x, scratch, out):
    ty_pix, ty_w, ty_n = taps_y
    tx_pix, tx_w, tx_n = taps_x
    n_rois, channels, n_bins = out.shape
    pooled_w = tx_n.shape[1]
    for k in prange(n_rois):
        image = x_cl[batch[k]]
        acc = scratch[numba.get_thread_id()]  # this RoI's output, channels-last
        acc[:] = 0
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
        store_channels_first(acc, out[k])


def taps_backward(grad, batch, width, taps_y, taps_x, grad_blocks, grad_x):
    """Scatter ``grad [K, C, PH*PW]`` into ``grad_x [N, C, H*W]`` with the forward's taps.

    Race-free: iteration ``blk`` of the ``prange`` owns the channel block ``blk``. It
    accumulates all RoIs into its own channels-last buffer ``grad_blocks[blk]``, then writes
    those channels of ``grad_x``, which no other iteration touches.
    """
    scratch = thread_scratch((grad.shape[2], grad_blocks.shape[3]), grad.dtype)
    _taps_backward(grad, batch, width, taps_y, taps_x, scratch, grad_blocks, grad_x)


@njit(**PJIT)
def _taps_backward(grad, batch, width, taps_y, taps_x, scratch, grad_blocks, grad_x):
    ty_pix, ty_w, ty_n = taps_y
    tx_pix, tx_w, tx_n = taps_x
    n_rois, _, n_bins = grad.shape
    n_blocks, bc = grad_blocks.shape[0], grad_blocks.shape[3]
    pooled_w = tx_n.shape[1]
    for blk in prange(n_blocks):
        grad_cl = grad_blocks[blk]
        grad_cl[:] = 0
        g_cl = scratch[numba.get_thread_id()]
        for k in range(n_rois):
            image = grad_cl[batch[k]]
            load_channels_last(grad[k], blk * bc, g_cl)
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
        put_block(grad_cl, blk * bc, grad_x)
