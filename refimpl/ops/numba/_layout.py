"""Memory layout for the CPU kernels: NCHW <-> channels-last copies and the channel blocks a
backward is partitioned into.

Channels innermost: a kernel reading a pixel reads its ``C`` contiguous values, and the
channel loop is a SIMD loop. The forwards copy ``x`` to ``[N, H*W, C]`` once per call; each
backward thread copies its own block of channels (:func:`take_block`) and writes it back
(:func:`put_block`), so that no two threads write the same memory.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from ._compile import JIT, PJIT

TILE = 16  # transpose tile: 16 x 16 values stay in L1 even for power-of-two strides


@njit(**PJIT)
def _transpose_last2(a, out):
    """``out[n, s, r] = a[n, r, s]`` for 3-D arrays, in cache-friendly tiles, in parallel."""
    n_img, rows, cols = a.shape
    tiles_r = (rows + TILE - 1) // TILE
    tiles_c = (cols + TILE - 1) // TILE
    for t in prange(n_img * tiles_r * tiles_c):
        n = t // (tiles_r * tiles_c)
        r0 = (t // tiles_c) % tiles_r * TILE
        c0 = t % tiles_c * TILE
        for s in range(c0, min(cols, c0 + TILE)):
            for r in range(r0, min(rows, r0 + TILE)):
                out[n, s, r] = a[n, r, s]


def to_channels_last(x: np.ndarray) -> np.ndarray:
    """``[N, C, H, W] -> [N, H * W, C]``: a pixel's channels contiguous."""
    n, c, h, w = x.shape
    out = np.empty((n, h * w, c), x.dtype)
    _transpose_last2(x.reshape(n, c, h * w), out)
    return out


@njit(**JIT)
def take_block(x3, c0, out):
    """``out[n, p, c] = x3[n, c0 + c, p]``: channels ``c0 ..`` of ``[N, C, H*W]``, channels-last
    (a backward thread's private copy of its channel block)."""
    n_img, hw, bc = out.shape
    for n in range(n_img):
        for p0 in range(0, hw, TILE):
            for c in range(bc):
                for p in range(p0, min(hw, p0 + TILE)):
                    out[n, p, c] = x3[n, c0 + c, p]


@njit(**JIT)
def put_block(block, c0, x3):
    """The inverse of :func:`take_block`: ``x3[n, c0 + c, p] = block[n, p, c]``."""
    n_img, hw, bc = block.shape
    for n in range(n_img):
        for p0 in range(0, hw, TILE):
            for c in range(bc):
                for p in range(p0, min(hw, p0 + TILE)):
                    x3[n, c0 + c, p] = block[n, p, c]


@njit(**JIT)
def store_channels_first(acc, out):
    """``out[c, p] = acc[p, c]``: one RoI's channels-last result into its NCHW output.
    (Reading along channels and writing with a stride is the faster order here, 2-4x.)"""
    for p in range(acc.shape[0]):
        for c in range(acc.shape[1]):
            out[c, p] = acc[p, c]


@njit(**JIT)
def load_channels_last(grad, c0, out):
    """``out[p, c] = grad[c0 + c, p]``: one RoI's gradient block, channels-last.
    (Writing along channels and reading with a stride is the faster order here, 4-5x.)"""
    for p in range(out.shape[0]):
        for c in range(out.shape[1]):
            out[p, c] = grad[c0 + c, p]


def channel_blocks(channels: int) -> int:
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


def block_buffer(x: np.ndarray) -> np.ndarray:
    """Scratch for a backward: one channels-last ``[N, H*W, C/blocks]`` buffer per block.

    Allocated here by NumPy, whose freed memory the next call reuses, rather than inside
    the kernel, where every call would fault in fresh pages (about 2 ms per 8 MB here).
    """
    n, channels, height, width = x.shape
    n_blocks = channel_blocks(channels)
    return np.empty((n_blocks, n, height * width, channels // n_blocks), x.dtype)
