"""Device functions every CUDA kernel shares: the geometry of :mod:`refimpl.ops.geometry`
compiled for the GPU, element access in either memory layout, bilinear sampling and its
scatter.

Two memory layouts, one kernel body: NCHW (arrays ``[N, C, H, W]`` and ``[K, C, PH, PW]``)
and channels-last (``[N, H, W, C]`` and ``[K, PH, PW, C]``). The accessors take
``channels_last``, a bool the kernel factories derive from their ``layout`` ("nchw" or
"channels_last") and close over: a constant of each compiled kernel, so the compiler keeps
one branch.
"""

from __future__ import annotations

from numba import cuda

from .. import geometry

# Every function of geometry.py (c_round, align_box, sample_coord, bilinear_1d, pool_box,
# pool_bin, warp_box, box_area, box_intersection, tent_antiderivative, tent_integral, tent,
# tent_support, prroi_box, ...) as a device function, bound as a module global: kernels
# call globals, not attributes.
globals().update(vars(geometry.compile_all(cuda.jit(device=True))))


@cuda.jit(device=True)
def at(a, i, c, y, xx, channels_last):
    """Element ``(i, c, y, xx)`` (image or RoI, channel, row, column) of a 4-D array."""
    if channels_last:
        return a[i, y, xx, c]
    return a[i, c, y, xx]


@cuda.jit(device=True)
def put(a, i, c, y, xx, value, channels_last):
    if channels_last:
        a[i, y, xx, c] = value
    else:
        a[i, c, y, xx] = value


@cuda.jit(device=True)
def atomic_add(a, i, c, y, xx, value, channels_last):
    if channels_last:
        cuda.atomic.add(a, (i, y, xx, c), value)
    else:
        cuda.atomic.add(a, (i, c, y, xx), value)


@cuda.jit(device=True)
def dims(a, channels_last):
    """``(N, C, H, W)`` of a 4-D array in either layout."""
    if channels_last:
        return a.shape[0], a.shape[3], a.shape[1], a.shape[2]
    return a.shape[0], a.shape[1], a.shape[2], a.shape[3]


@cuda.jit(device=True)
def unravel(idx, channels, pooled_h, pooled_w, channels_last):
    """Output element ``idx`` as (k, c, ph, pw): of a C-ordered [K, C, PH, PW] array (pw
    fastest), or channels-last, of a C-ordered [K, PH, PW, C] array (c fastest)."""
    if channels_last:
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


@cuda.jit(device=True)
def bilinear(F, x, b, c, y, xx, height, width, channels_last):
    """Bilinear sample of plane ``x[b, c]`` at ``(y, xx)``; 0 more than a pixel outside."""
    inside_y, y_low, y_high, wy_low, wy_high = bilinear_1d(F, y, height)  # noqa: F821
    inside_x, x_low, x_high, wx_low, wx_high = bilinear_1d(F, xx, width)  # noqa: F821
    if not (inside_y and inside_x):
        return F(0.0)
    # Same weights and summation order as the python backend (and torchvision).
    return (
        (wy_low * wx_low) * at(x, b, c, y_low, x_low, channels_last)
        + (wy_low * wx_high) * at(x, b, c, y_low, x_high, channels_last)
        + (wy_high * wx_low) * at(x, b, c, y_high, x_low, channels_last)
        + (wy_high * wx_high) * at(x, b, c, y_high, x_high, channels_last)
    )


@cuda.jit(device=True)
def bilinear_scatter(F, grad_x, b, c, y, xx, height, width, share, channels_last):
    """Add ``share`` times each bilinear weight to the four pixels the sample at (y, xx) read.

    Atomic: other bins and RoIs may write the same pixels concurrently. At the clamped border
    two corners are the same pixel and it receives both weights, as in the forward.
    """
    inside_y, y_low, y_high, wy_low, wy_high = bilinear_1d(F, y, height)  # noqa: F821
    inside_x, x_low, x_high, wx_low, wx_high = bilinear_1d(F, xx, width)  # noqa: F821
    if not (inside_y and inside_x):
        return
    atomic_add(grad_x, b, c, y_low, x_low, share * (wy_low * wx_low), channels_last)
    atomic_add(grad_x, b, c, y_low, x_high, share * (wy_low * wx_high), channels_last)
    atomic_add(grad_x, b, c, y_high, x_low, share * (wy_high * wx_low), channels_last)
    atomic_add(grad_x, b, c, y_high, x_high, share * (wy_high * wx_high), channels_last)
