"""RoIPool (Fast R-CNN sec. 2.1, eq. 4) on the GPU, in either memory layout.

One thread per output element: the maximum of its quantized bin. Two backwards: one
recomputes each bin's argmax from ``x``; the other, as torchvision's CUDA RoIPool, scatters
through the argmax its forward stored (:func:`launch_forward_with_argmax` /
:func:`launch_backward_from_argmax`), without reading ``x`` or searching the bins again, at
the cost of an int64 array the size of the output kept from forward to backward. The
backwards scatter with atomic adds (bins of one RoI and of different RoIs overlap).
"""

from __future__ import annotations

import functools
import math
from types import SimpleNamespace

import numpy as np
from numba import cuda

from ..geometry import MAX_FLOOR
from ..validate import check_argmax, check_roi_args, check_spatial_scale
from ._device import at, atomic_add, dims, pool_bin, pool_box, put, unravel
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


@cuda.jit(device=True)
def _bin_pixels(F, rois, k, spatial_scale, ph, pw, pooled_h, pooled_w, height, width):
    """The pixel rows ``[h_lo, h_hi)`` and columns ``[w_lo, w_hi)`` of bin ``(ph, pw)`` of
    RoI ``k``: the box rounded to pixels, split by floor and ceil, clipped to the map."""
    start_y, start_x, bin_h, bin_w = pool_box(
        F, rois[k, 1], rois[k, 2], rois[k, 3], rois[k, 4], F(spatial_scale), pooled_h, pooled_w
    )
    h_lo, h_hi = pool_bin(F, ph, bin_h, start_y, height)
    w_lo, w_hi = pool_bin(F, pw, bin_w, start_x, width)
    return h_lo, h_hi, w_lo, w_hi


@cuda.jit(device=True)
def _argmax(F, x, b, c, h_lo, h_hi, w_lo, w_hi, channels_last):
    """The bin's maximum: ``(value, y, x)``, the first maximum in row-major order; ``y = -1``
    (and value 0) for an empty bin. torchvision's running max: from -FLT_MAX (``MAX_FLOOR``),
    a strictly greater value wins, so a NaN never does (only NaN: -FLT_MAX, ``y = -1``)."""
    best = F(0.0) if (h_hi <= h_lo or w_hi <= w_lo) else F(MAX_FLOOR)
    best_y = -1
    best_x = -1
    for yy in range(h_lo, h_hi):
        for xx in range(w_lo, w_hi):
            v = at(x, b, c, yy, xx, channels_last)
            if v > best:
                best = v
                best_y = yy
                best_x = xx
    return best, best_y, best_x


@functools.cache
def _kernels(dtype: np.dtype, layout: str) -> SimpleNamespace:  # noqa: C901  (the forward and backward kernels it compiles; each is under the limit)
    """``forward``, ``forward_argmax``, ``backward`` and ``backward_argmax`` for one dtype and
    layout, compiled on first launch (``F``, ``CHANNELS_LAST`` closed over)."""
    F = np.dtype(dtype).type
    CHANNELS_LAST = layout == "channels_last"

    def forward_kernel(save_argmax):
        """One Python body, two kernels. ``save_argmax`` is closed over, a compile-time
        constant: the plain kernel has no argmax store at all (its launch passes ``out`` as
        a stand-in that is never written), and both share the arithmetic, so their outputs
        are equal."""

        @cuda.jit
        def forward(x, rois, out, argmax, spatial_scale):
            """One thread per output element: the maximum of its quantized bin (0 if empty)
            and, with ``save_argmax``, its flat index ``y * W + x`` (-1 if empty)."""
            n_images, channels, height, width = dims(x, CHANNELS_LAST)
            n_rois, _, pooled_h, pooled_w = dims(out, CHANNELS_LAST)
            total = n_rois * channels * pooled_h * pooled_w
            for idx in range(cuda.grid(1), total, cuda.gridsize(1)):
                k, c, ph, pw = unravel(idx, channels, pooled_h, pooled_w, CHANNELS_LAST)
                b = int(rois[k, 0])
                value = F(0.0)
                best_y = -1
                best_x = -1
                if b >= 0 and b < n_images:  # the guard only: validation has excluded this
                    h_lo, h_hi, w_lo, w_hi = _bin_pixels(
                        F, rois, k, spatial_scale, ph, pw, pooled_h, pooled_w, height, width
                    )
                    value, best_y, best_x = _argmax(
                        F, x, b, c, h_lo, h_hi, w_lo, w_hi, CHANNELS_LAST
                    )
                put(out, k, c, ph, pw, value, CHANNELS_LAST)
                if save_argmax:
                    index = -1  # an empty bin (or a guarded RoI)
                    if best_y >= 0:
                        index = best_y * width + best_x
                    put(argmax, k, c, ph, pw, index, CHANNELS_LAST)

        return forward

    @cuda.jit
    def backward(x, rois, grad_out, grad_x, spatial_scale):
        """One thread per grad_output element: recompute the bin's argmax from x, then an
        atomic add there (Fast R-CNN eq. 4)."""
        n_images, channels, height, width = dims(x, CHANNELS_LAST)
        n_rois, _, pooled_h, pooled_w = dims(grad_out, CHANNELS_LAST)
        total = n_rois * channels * pooled_h * pooled_w
        for idx in range(cuda.grid(1), total, cuda.gridsize(1)):
            k, c, ph, pw = unravel(idx, channels, pooled_h, pooled_w, CHANNELS_LAST)
            b = int(rois[k, 0])
            if b < 0 or b >= n_images:
                continue
            h_lo, h_hi, w_lo, w_hi = _bin_pixels(
                F, rois, k, spatial_scale, ph, pw, pooled_h, pooled_w, height, width
            )
            _, best_y, best_x = _argmax(F, x, b, c, h_lo, h_hi, w_lo, w_hi, CHANNELS_LAST)
            if best_y >= 0:
                grad = at(grad_out, k, c, ph, pw, CHANNELS_LAST)
                atomic_add(grad_x, b, c, best_y, best_x, grad, CHANNELS_LAST)

    @cuda.jit
    def backward_argmax(rois, argmax, grad_out, grad_x):
        """One thread per grad_output element: an atomic add at the forward's saved argmax
        (Fast R-CNN eq. 4), no search and no read of x. The bounds test is a guard only
        (the host validates argmax): a bad index must not write outside its plane."""
        n_images, channels, height, width = dims(grad_x, CHANNELS_LAST)
        n_rois, _, pooled_h, pooled_w = dims(grad_out, CHANNELS_LAST)
        total = n_rois * channels * pooled_h * pooled_w
        for idx in range(cuda.grid(1), total, cuda.gridsize(1)):
            k, c, ph, pw = unravel(idx, channels, pooled_h, pooled_w, CHANNELS_LAST)
            b = int(rois[k, 0])
            a = at(argmax, k, c, ph, pw, CHANNELS_LAST)
            if b < 0 or b >= n_images or a < 0 or a >= height * width:
                continue  # -1: an empty bin, which passes no gradient
            grad = at(grad_out, k, c, ph, pw, CHANNELS_LAST)
            atomic_add(grad_x, b, c, a // width, a % width, grad, CHANNELS_LAST)

    return SimpleNamespace(
        forward=forward_kernel(False),
        forward_argmax=forward_kernel(True),
        backward=backward,
        backward_argmax=backward_argmax,
    )


# --- launches on device arrays ---------------------------------------------------------------


def _argmax_array(argmax, shape: tuple, contiguous: bool):
    """The argmax as a device array: int64 of the pooled array's ``shape``. Only its shape
    and dtype are checked here; its values are the caller's concern."""
    argmax = device(argmax, "argmax")
    check_shape("argmax", argmax, shape)
    check_dtype("argmax", argmax, np.int64)
    if contiguous:
        check_contiguous("argmax", argmax)
    return argmax


def _forward(x, rois, out, argmax, spatial_scale, layout, stream):
    """The forward; with ``argmax`` (not None) the kernel that also stores it."""
    x, rois, out = roi_arrays(x, rois, out, "out", layout)
    check_contiguous("out", out)
    if argmax is not None:
        argmax = _argmax_array(argmax, out.shape, contiguous=True)
    scale = np.float64(check_spatial_scale(spatial_scale))
    n = math.prod(out.shape)
    if n == 0:
        return out, argmax
    blocks, threads = launch_size(n)
    kernels = _kernels(np.dtype(x.dtype), layout)
    if argmax is None:
        # The plain kernel never touches its argmax parameter: out stands in for it.
        kernels.forward[blocks, threads, stream](x, rois, out, out, scale)
    else:
        kernels.forward_argmax[blocks, threads, stream](x, rois, out, argmax, scale)
    return out, argmax


def launch_forward(x, rois, out, spatial_scale, *, layout="nchw", stream=0):
    """Launch RoIPool's forward on device arrays; returns ``out``.

    Shapes, dtypes, ``layout``, ``stream`` and the caller's validation as
    :func:`.roi_align.launch_forward`. No argmax is stored: the backward recomputes it from
    ``x`` (for a stored one, see :func:`launch_forward_with_argmax`).
    """
    return _forward(x, rois, out, None, spatial_scale, layout, stream)[0]


def launch_forward_with_argmax(x, rois, out, argmax, spatial_scale, *, layout="nchw", stream=0):
    """Launch RoIPool's forward storing the argmax; returns ``(out, argmax)``.

    As :func:`launch_forward` (``out`` is bitwise the same), plus ``argmax``: int64 of
    ``out``'s shape, C-contiguous, overwritten with each bin's flat index ``y * W + x`` into
    its image plane (in either layout), the first maximum in row-major order (-1: empty bin).
    """
    return _forward(x, rois, out, argmax, spatial_scale, layout, stream)


def launch_backward(x, rois, grad_out, grad_x, spatial_scale, *, layout="nchw", stream=0):
    """Launch RoIPool's backward, recomputing the argmax from ``x``; returns ``grad_x``.

    As :func:`.roi_align.launch_backward`: ``grad_x`` is accumulated into (pass it zeroed).
    """
    x, rois, grad_out = roi_arrays(x, rois, grad_out, "grad_out", layout)
    grad_x = grad_x_array(grad_x, x)
    scale = np.float64(check_spatial_scale(spatial_scale))
    n = math.prod(grad_out.shape)
    if n:
        blocks, threads = launch_size(n)
        _kernels(np.dtype(x.dtype), layout).backward[blocks, threads, stream](
            x, rois, grad_out, grad_x, scale
        )
    return grad_x


def launch_backward_from_argmax(rois, grad_out, argmax, grad_x, *, layout="nchw", stream=0):
    """Launch RoIPool's backward from the forward's argmax (Fast R-CNN eq. 4); returns
    ``grad_x``: ``grad_x[b, c, argmax // W, argmax % W] += grad_out`` per element.

    ``grad_out`` (the output's shape, any strides) and ``argmax`` (int64, its shape, any
    strides) as the forward gave them; ``rois`` [K, 5] and ``grad_x`` (the input's shape,
    C-contiguous) of grad_out's dtype. ``grad_x`` is **accumulated into** with atomic adds:
    pass it zeroed. The caller must have validated the rois (as
    :func:`.roi_align.launch_forward`) and the argmax values (in ``[-1, H * W)``, as
    :func:`refimpl.ops.validate.check_argmax`); an element whose batch index or argmax is
    out of range is skipped, never written out of bounds.
    """
    # grad_x stands in for x: only its shape is needed (the argmax replaces the search).
    grad_x, rois, grad_out = roi_arrays(grad_x, rois, grad_out, "grad_out", layout, "grad_x")
    check_contiguous("grad_x", grad_x)
    argmax = _argmax_array(argmax, grad_out.shape, contiguous=False)
    n = math.prod(grad_out.shape)
    if n:
        blocks, threads = launch_size(n)
        _kernels(np.dtype(grad_x.dtype), layout).backward_argmax[blocks, threads, stream](
            rois, argmax, grad_out, grad_x
        )
    return grad_x


# --- the backend interface: NumPy arrays in and out -----------------------------------------


def _pool(x, rois, output_size, spatial_scale, save_argmax):
    """RoIPool's forward on NumPy arrays: ``(y, argmax)``, argmax None unless saved."""
    a = check_roi_args(x, rois, output_size, spatial_scale)
    require_device()
    shape = (a.rois.shape[0], a.x.shape[1], a.pooled_h, a.pooled_w)
    if math.prod(shape) == 0:
        argmax = np.full(shape, -1, np.int64) if save_argmax else None
        return np.zeros(shape, a.x.dtype), argmax
    out = cuda.device_array(shape, a.x.dtype)
    argmax = cuda.device_array(shape, np.int64) if save_argmax else None
    x_d, rois_d = cuda.to_device(a.x), cuda.to_device(a.rois)
    _forward(x_d, rois_d, out, argmax, a.spatial_scale, "nchw", 0)
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
    require_device()
    if a.grad_output.size == 0:
        return np.zeros_like(a.x)
    grad_x = cuda.to_device(np.zeros_like(a.x))
    arrays = (cuda.to_device(a.x), cuda.to_device(a.rois), cuda.to_device(a.grad_output))
    launch_backward(*arrays, grad_x, a.spatial_scale)
    return grad_x.copy_to_host()


def roi_pool_backward_from_argmax(x, rois, grad_output, argmax, output_size, spatial_scale=1.0):
    """The RoIPool backward given the forward's argmax: ``grad_x[argmax] += grad_output``.
    ``x`` gives only the shape and dtype (it is not copied to the device)."""
    a = check_roi_args(x, rois, output_size, spatial_scale, grad_output=grad_output)
    _, _, height, width = a.x.shape
    argmax = check_argmax(argmax, a.grad_output.shape, height * width)
    require_device()
    if a.grad_output.size == 0:
        return np.zeros_like(a.x)
    grad_x = cuda.to_device(np.zeros_like(a.x))
    launch_backward_from_argmax(
        cuda.to_device(a.rois),
        cuda.to_device(a.grad_output),
        cuda.to_device(np.ascontiguousarray(argmax)),
        grad_x,
    )
    return grad_x.copy_to_host()
