"""RoIAlign (Mask R-CNN sec. 3) on the GPU: forward and backward, avg and max, in either
memory layout ("nchw" or "channels_last"). RoIWarp (:mod:`.roi_warp`) runs on these kernels
with ``quantize``: its box rounded to integer feature coordinates first.

Forward: one thread per output element ``(k, c, ph, pw)``, as torchvision's CUDA kernel.
Consecutive threads take consecutive ``pw`` (NCHW) or ``c`` (channels-last), so a warp
writes a contiguous run of the output. Every thread recomputes its RoI's geometry from the
box: a few flops, cheaper than a second pass and a buffer.

Backward: one thread per ``grad_output`` element, scattering into ``grad_x`` with atomic
adds. Why atomics, not a gather (one thread per input pixel summing what reaches it): a
pixel would have to search all K RoIs of its image and, for each, the bins whose samples
touch it (work ~ N*C*H*W*K, mostly wasted on RoIs that miss the pixel), whereas the scatter
does exactly the forward's work. The RoIs of a detector spread over the image, so few
threads hit the same pixel at once and atomics rarely contend; float32 and float64 atomic
adds are native on sm_60+. This is also what torchvision's CUDA kernel does. The price: the
summation order varies between runs, so the result is not bitwise deterministic.

Channels-last: a warp's 32 threads share one RoI bin and take 32 consecutive channels (FPN
has 256), so each bilinear corner the warp reads is one coalesced 128-byte transaction of
an [N, H, W, C] map, fully used, and the warp writes a contiguous run of the output. In NCHW
a warp's lanes take consecutive pw (then ph) of one plane: samples a bin width apart over
several rows, several cache lines per read, mostly wasted. In the backward the warp's 32
atomic adds go to 32 consecutive addresses, where in NCHW neighbouring bins of a small RoI
share corner pixels and their atomics serialize. Same arithmetic and iteration order in
both layouts: the forwards are bitwise equal, the max mode picks the same first maximum.
"""

from __future__ import annotations

import functools
import math
from types import SimpleNamespace

import numpy as np
from numba import cuda

from ..geometry import MAX_FLOOR
from ..validate import check_pool_mode, check_roi_args, check_spatial_scale
from ._device import (
    align_box,
    at,
    bilinear,
    bilinear_scatter,
    dims,
    put,
    sample_coord,
    unravel,
    warp_box,
)
from ._launch import (
    check_contiguous,
    check_sampling_ratio,
    grad_x_array,
    launch_size,
    require_device,
    roi_arrays,
)


@cuda.jit(device=True)
def _roi_grid(F, rois, k, spatial_scale, aligned, quantize, pooled_h, pooled_w, sampling_ratio):
    """The bins and sampling grid of RoI ``k`` (:func:`geometry.align_box`).

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
        x1, y1, x2, y2 = warp_box(F, x1, y1, x2, y2, scale)
        scale = F(1.0)
    return align_box(F, x1, y1, x2, y2, scale, aligned, pooled_h, pooled_w, sampling_ratio)


@cuda.jit(device=True)
def _max_sample(F, x, b, c, ph, pw, grid, h, w, channels_last):
    """The bin's largest sample: ``(value, iy, ix)``, ``iy = -1`` for an empty grid.
    ``grid``: ``(start_y, start_x, bin_h, bin_w, grid_h, grid_w)`` from :func:`_roi_grid`.

    An outside sample counts as 0; the first maximum wins (``>``), iterating iy then ix,
    from ``MAX_FLOOR`` (torchvision's RoIPool rule: a NaN never wins; only NaN: -FLT_MAX,
    ``iy = -1``). The backward calls this too, recomputing the argmax from ``x``.
    """
    start_y, start_x, bin_h, bin_w, grid_h, grid_w = grid
    best = F(0.0) if grid_h * grid_w == 0 else F(MAX_FLOOR)
    best_iy = -1
    best_ix = -1
    for iy in range(grid_h):
        y = sample_coord(F, start_y, bin_h, ph, iy, grid_h)
        for ix in range(grid_w):
            xx = sample_coord(F, start_x, bin_w, pw, ix, grid_w)
            v = bilinear(F, x, b, c, y, xx, h, w, channels_last)
            if v > best:
                best = v
                best_iy = iy
                best_ix = ix
    return best, best_iy, best_ix


@functools.cache
def _kernels(dtype: np.dtype, layout: str) -> SimpleNamespace:  # noqa: C901  (the forward and backward kernels it compiles; each is under the limit)
    """``forward`` and ``backward`` for float32 or float64 and one memory layout, compiled on
    first launch (``F`` and ``CHANNELS_LAST`` are closed over: constants of the code)."""
    F = np.dtype(dtype).type
    CHANNELS_LAST = layout == "channels_last"

    @cuda.jit
    def forward(x, rois, out, spatial_scale, sampling_ratio, aligned, max_mode, quantize):
        """One thread per output element (k, c, ph, pw): avg or max of the bin's samples."""
        n_images, channels, height, width = dims(x, CHANNELS_LAST)
        n_rois, _, pooled_h, pooled_w = dims(out, CHANNELS_LAST)
        total = n_rois * channels * pooled_h * pooled_w
        for idx in range(cuda.grid(1), total, cuda.gridsize(1)):
            k, c, ph, pw = unravel(idx, channels, pooled_h, pooled_w, CHANNELS_LAST)
            b = int(rois[k, 0])
            if b < 0 or b >= n_images:  # guard only: validation has excluded this
                put(out, k, c, ph, pw, F(0.0), CHANNELS_LAST)
                continue
            start_y, start_x, bin_h, bin_w, grid_h, grid_w, count = _roi_grid(
                F, rois, k, spatial_scale, aligned, quantize, pooled_h, pooled_w, sampling_ratio
            )
            if max_mode:
                grid = (start_y, start_x, bin_h, bin_w, grid_h, grid_w)
                value, _, _ = _max_sample(F, x, b, c, ph, pw, grid, height, width, CHANNELS_LAST)
                put(out, k, c, ph, pw, value, CHANNELS_LAST)
            else:
                acc = F(0.0)
                for iy in range(grid_h):
                    y = sample_coord(F, start_y, bin_h, ph, iy, grid_h)
                    for ix in range(grid_w):
                        xx = sample_coord(F, start_x, bin_w, pw, ix, grid_w)
                        acc += bilinear(F, x, b, c, y, xx, height, width, CHANNELS_LAST)
                put(out, k, c, ph, pw, acc / count, CHANNELS_LAST)  # an empty grid: 0 / 1

    @cuda.jit
    def backward(
        x, rois, grad_out, grad_x, spatial_scale, sampling_ratio, aligned, max_mode, quantize
    ):
        """One thread per grad_output element, scattering with atomic adds (module doc)."""
        n_images, channels, height, width = dims(x, CHANNELS_LAST)
        n_rois, _, pooled_h, pooled_w = dims(grad_out, CHANNELS_LAST)
        total = n_rois * channels * pooled_h * pooled_w
        for idx in range(cuda.grid(1), total, cuda.gridsize(1)):
            k, c, ph, pw = unravel(idx, channels, pooled_h, pooled_w, CHANNELS_LAST)
            b = int(rois[k, 0])
            if b < 0 or b >= n_images:
                continue
            start_y, start_x, bin_h, bin_w, grid_h, grid_w, count = _roi_grid(
                F, rois, k, spatial_scale, aligned, quantize, pooled_h, pooled_w, sampling_ratio
            )
            grad = at(grad_out, k, c, ph, pw, CHANNELS_LAST)
            if max_mode:
                # The gradient of a max goes, undivided, to the winning sample only.
                grid = (start_y, start_x, bin_h, bin_w, grid_h, grid_w)
                _, best_iy, best_ix = _max_sample(
                    F, x, b, c, ph, pw, grid, height, width, CHANNELS_LAST
                )
                if best_iy >= 0:
                    y = sample_coord(F, start_y, bin_h, ph, best_iy, grid_h)
                    xx = sample_coord(F, start_x, bin_w, pw, best_ix, grid_w)
                    bilinear_scatter(F, grad_x, b, c, y, xx, height, width, grad, CHANNELS_LAST)
            else:
                share = grad / count
                for iy in range(grid_h):
                    y = sample_coord(F, start_y, bin_h, ph, iy, grid_h)
                    for ix in range(grid_w):
                        xx = sample_coord(F, start_x, bin_w, pw, ix, grid_w)
                        bilinear_scatter(
                            F, grad_x, b, c, y, xx, height, width, share, CHANNELS_LAST
                        )

    return SimpleNamespace(forward=forward, backward=backward)


# --- launches on device arrays ---------------------------------------------------------------


def _scalars(params, quantize: bool) -> tuple:
    """The kernels' scalar arguments from ``(spatial_scale, sampling_ratio, aligned,
    pool_mode)``, checked; numpy scalars so that the simulator computes as the GPU does."""
    spatial_scale, sampling_ratio, aligned, pool_mode = params
    return (
        np.float64(check_spatial_scale(spatial_scale)),
        np.int64(check_sampling_ratio(sampling_ratio)),
        bool(aligned),
        check_pool_mode(pool_mode) == "max",
        bool(quantize),
    )


def sampled_forward(arrays, params, *, quantize: bool, layout: str, stream):
    """RoIAlign's forward kernel on ``arrays = (x, rois, out)`` with ``params =
    (spatial_scale, sampling_ratio, aligned, pool_mode)``; ``quantize``: RoIWarp."""
    x, rois, out = roi_arrays(*arrays, "out", layout)
    check_contiguous("out", out)
    scalars = _scalars(params, quantize)
    n = math.prod(out.shape)
    if n:
        blocks, threads = launch_size(n)
        _kernels(np.dtype(x.dtype), layout).forward[blocks, threads, stream](x, rois, out, *scalars)
    return out


def sampled_backward(arrays, params, *, quantize: bool, layout: str, stream):
    """The backward of :func:`sampled_forward`: ``arrays = (x, rois, grad_out, grad_x)``."""
    x, rois, grad_out, grad_x = arrays
    x, rois, grad_out = roi_arrays(x, rois, grad_out, "grad_out", layout)
    grad_x = grad_x_array(grad_x, x)
    scalars = _scalars(params, quantize)
    n = math.prod(grad_out.shape)
    if n:
        blocks, threads = launch_size(n)
        _kernels(np.dtype(x.dtype), layout).backward[blocks, threads, stream](
            x, rois, grad_out, grad_x, *scalars
        )
    return grad_x


def launch_forward(
    x,
    rois,
    out,
    spatial_scale,
    sampling_ratio,
    aligned,
    pool_mode="avg",
    *,
    layout="nchw",
    stream=0,
):
    """Launch RoIAlign's forward on device arrays; returns ``out``.

    ``layout="nchw"``: ``x`` [N, C, H, W], ``out`` [K, C, PH, PW]; ``"channels_last"``:
    ``x`` [N, H, W, C], ``out`` [K, PH, PW, C] (a torch caller:
    ``x.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1)``, no copy when the
    features already are channels-last). ``x`` (any strides) and ``rois`` [K, 5]
    (batch_index, x1, y1, x2, y2) are of one dtype, float32 or float64; ``out`` of that
    dtype, C-contiguous, is overwritten (its shape gives the output size).
    ``spatial_scale`` > 0, ``sampling_ratio`` int (<= 0: adaptive), ``aligned`` bool,
    ``pool_mode`` "avg" | "max". The caller must have validated the *values* (as
    :func:`refimpl.ops.validate.check_rois` and :func:`~refimpl.ops.validate.check_sampling_grid`
    do): finite coordinates within +-2**24 feature pixels, integral batch indices in [0, N),
    a bounded sampling grid. Asynchronous on ``stream`` (a numba stream, or 0 for the
    default stream; for torch, ``cuda.external_stream(torch.cuda.current_stream().cuda_stream)``).
    """
    params = (spatial_scale, sampling_ratio, aligned, pool_mode)
    return sampled_forward((x, rois, out), params, quantize=False, layout=layout, stream=stream)


def launch_backward(
    x,
    rois,
    grad_out,
    grad_x,
    spatial_scale,
    sampling_ratio,
    aligned,
    pool_mode="avg",
    *,
    layout="nchw",
    stream=0,
):
    """Launch RoIAlign's backward on device arrays; returns ``grad_x``.

    Arguments as :func:`launch_forward`, plus ``grad_out`` (the output's shape, any strides,
    e.g. a permuted view of an NCHW gradient) and ``grad_x`` (x's shape, C-contiguous), both
    of x's dtype. ``grad_x`` is **accumulated into** with atomic adds: pass it zeroed. ``x``
    is read only in max mode (the argmax is recomputed): in avg mode ``grad_x`` may stand in
    for it (its shape and dtype are what is needed).
    """
    params = (spatial_scale, sampling_ratio, aligned, pool_mode)
    arrays = (x, rois, grad_out, grad_x)
    return sampled_backward(arrays, params, quantize=False, layout=layout, stream=stream)


# --- the backend interface: NumPy arrays in and out -----------------------------------------


def sampled_on_host(a, quantize: bool) -> np.ndarray:
    """RoIAlign (or, ``quantize``, RoIWarp) with validated arguments ``a``: copy in, launch
    the forward (``a.grad_output`` None) or the backward, copy out."""
    require_device()
    n_rois, channels = a.rois.shape[0], a.x.shape[1]
    params = (a.spatial_scale, a.sampling_ratio, a.aligned, a.pool_mode)
    kw = {"quantize": quantize, "layout": "nchw", "stream": 0}
    if a.grad_output is None:
        shape = (n_rois, channels, a.pooled_h, a.pooled_w)
        if math.prod(shape) == 0:
            return np.zeros(shape, a.x.dtype)
        out = cuda.device_array(shape, a.x.dtype)
        sampled_forward((cuda.to_device(a.x), cuda.to_device(a.rois), out), params, **kw)
        return out.copy_to_host()
    if a.grad_output.size == 0:
        return np.zeros_like(a.x)
    grad_x = cuda.to_device(np.zeros_like(a.x))
    arrays = (cuda.to_device(a.x), cuda.to_device(a.rois), cuda.to_device(a.grad_output), grad_x)
    sampled_backward(arrays, params, **kw)
    return grad_x.copy_to_host()


def roi_align_forward(
    x, rois, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False, pool_mode="avg"
):
    """RoIAlign (Mask R-CNN sec. 3): average (or max) of bilinear samples in each bin."""
    a = check_roi_args(x, rois, output_size, spatial_scale, sampling_ratio, aligned, pool_mode)
    return sampled_on_host(a, quantize=False)


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
    a = check_roi_args(
        x, rois, output_size, spatial_scale, sampling_ratio, aligned, pool_mode, grad_output
    )
    return sampled_on_host(a, quantize=False)
