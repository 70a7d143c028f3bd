"""The ``"numpy"`` backend: the operators of :mod:`refimpl.ops.python`, vectorized with NumPy.

This is what the NumPy lessons build. The loop over RoIs stays (every RoI has its own box,
sampling grid and window of the feature map), but everything inside one RoI is array
arithmetic: all bins, all sampling points and all channels at once.

* RoIAlign, average (Mask R-CNN sec. 3) is *separable*, so one RoI is two small matrix
  products, ``A @ X @ B.T`` (see :func:`_interp_matrix`); its backward is ``A.T @ G @ B``.
* RoIAlign / RoIWarp, max: the maximum is not separable. The four corners of all bilinear
  samples are gathered at once with fancy indexing, bin by bin (:func:`_by_bin`), from a
  channels-last copy of the input, then reduced per bin.
* RoIPool (Fast R-CNN sec. 2.1): the same gather, of each bin's pixels padded to the widest
  bin with a sentinel of -inf, then ``max`` per bin.
* The max modes' backward needs the FIRST maximum of each bin (the loops' strict ``>``):
  see :func:`_first_index`. Gradients are scattered with ``np.add.at``: unlike
  ``grad[idx] += v`` it adds once per occurrence of a repeated index.

Exactness. The geometry (box -> bins -> sampling points -> bilinear weights) is the same
sequence of floating-point operations as :mod:`refimpl.ops.geometry`, in the input dtype and
in torchvision's order, so the sample coordinates and weights are bit-identical to the
python backend's; only the order of the final sums differs (rounding level). Two NumPy traps
keep float32 from silently becoming float64: an *integer array* times a float32 scalar is
float64 (hence ``np.arange(n).astype(F)``), and so is anything times an ``np.float64``
scalar. A float32 array times a Python float stays float32 (NumPy 2).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from . import geometry as g
from .validate import RoIArgs, check_argmax, check_boxes, check_nms_args, check_roi_args

# --- RoIAlign / RoIWarp geometry, one RoI at a time ----------------------------------------


class Bilinear1d(NamedTuple):
    """One axis of bilinear interpolation at many coordinates (all arrays of one shape)."""

    inside: np.ndarray  # bool: within one pixel of the map (outside: value 0, no gradient)
    low: np.ndarray  # int64 pixel index below (0 where outside)
    high: np.ndarray  # int64 pixel index above (== low at the clamped border)
    w_low: np.ndarray  # weight of `low`, in the input dtype (0 where outside)
    w_high: np.ndarray  # weight of `high`


def _sample_coords(F, start, bin_size, pooled: int, grid: int) -> np.ndarray:
    """[pooled, grid]: :func:`geometry.sample_coord` for every bin ``p`` and sample ``i``.

    The same float operations in the same order, all in ``F``:
    ``start + F(p) * bin + F(i + 0.5) * bin / F(grid)``.
    """
    p = np.arange(pooled).astype(F)  # F(p): int array * F scalar would be float64
    i = (np.arange(grid) + 0.5).astype(F)  # F(i + 0.5)
    return (start + p * bin_size)[:, None] + (i * bin_size / F(grid))[None, :]


def _roi_samples(a: RoIArgs, box, aligned: bool) -> tuple[np.ndarray, np.ndarray, object]:
    """The sampling points of one RoI (Mask R-CNN sec. 3): ``ys [PH, gh]``, ``xs [PW, gw]``, count.

    Bin ``(ph, pw)`` averages the ``gh * gw`` points ``(ys[ph, iy], xs[pw, ix])``; the grid is
    regular, so the coordinates along each axis are enough. ``box`` is (x1, y1, x2, y2) in the
    input's coordinates (times ``spatial_scale`` gives feature coordinates).
    """
    F = a.float_type
    x1, y1, x2, y2 = box
    start_y, start_x, bin_h, bin_w, grid_h, grid_w, count = g.align_box(
        F, x1, y1, x2, y2, F(a.spatial_scale), aligned, a.pooled_h, a.pooled_w, a.sampling_ratio
    )
    ys = _sample_coords(F, start_y, bin_h, a.pooled_h, grid_h)
    xs = _sample_coords(F, start_x, bin_w, a.pooled_w, grid_w)
    return ys, xs, count


def _bilinear_1d(F, v: np.ndarray, size: int) -> Bilinear1d:
    """:func:`geometry.bilinear_1d` on an array of coordinates (torchvision's rules).

    More than one pixel outside: not inside. Within one pixel: clamped, so the border pixel
    is repeated. At or beyond the last pixel: ``low == high == size - 1`` with all the weight.
    """
    inside = ~((v < -1.0) | (v > size))
    v = np.where(v <= 0, F(0), v)
    low = v.astype(np.int64)  # v >= 0 now, so truncation is floor
    at_border = low >= size - 1
    low = np.where(at_border, size - 1, low)
    high = np.where(at_border, low, low + 1)
    v = np.where(at_border, low.astype(F), v)
    w_high = v - low.astype(F)
    w_low = F(1) - w_high
    # Outside samples read no pixel: index 0 with weight 0, as the scalar version returns.
    zero = F(0)
    return Bilinear1d(
        inside,
        np.where(inside, low, 0),
        np.where(inside, high, 0),
        np.where(inside, w_low, zero),
        np.where(inside, w_high, zero),
    )


# --- RoIAlign, average: separable, two matrix products per RoI ----------------------------


def _interp_matrix(F, s: Bilinear1d) -> tuple[np.ndarray, int] | None:
    """The interpolation matrix of one axis over the window of pixels the samples touch.

    RoIAlign's average is separable. A sample's bilinear weight on pixel ``(h, w)`` is a
    product ``wy(h) * wx(w)``, and the bin sums over a regular grid ``iy x ix``, so

        out[c, ph, pw] = sum_h sum_w A[ph, h] * x[c, h, w] * B[pw, w] / count

    where ``A[ph, h]`` sums the y-weights of bin row ``ph``'s samples on pixel row ``h`` (a
    sample outside contributes a zero weight) and ``B`` likewise for x. Per RoI and channel
    that is ``A @ X @ B.T``: two small matrix products instead of ``4 * PH * PW * gh * gw``
    scalar reads. The backward is the transpose, ``A.T @ G @ B``.

    ``s`` holds [P, grid] arrays. Returns ``(M, first)``: ``M[p, j]`` is the weight of pixel
    ``first + j``, for the pixels between the lowest and highest one a sample reads; None
    when no sample is inside the map.
    """
    if not s.inside.any():
        return None
    first = int(s.low[s.inside].min())
    last = int(s.high[s.inside].max())
    m = np.zeros((s.low.shape[0], last - first + 1), F)
    bins = np.broadcast_to(np.arange(s.low.shape[0])[:, None], s.low.shape)[s.inside]
    # np.add.at, not m[...] += w: several samples (and low == high at the border) can hit
    # the same pixel, and each must add its weight.
    np.add.at(m, (bins, s.low[s.inside] - first), s.w_low[s.inside])
    np.add.at(m, (bins, s.high[s.inside] - first), s.w_high[s.inside])
    return m, first


def _support_matrix(s: Bilinear1d, first: int, n_pixels: int) -> np.ndarray:
    """[P, n_pixels] bool: which pixels ``first + j`` bin ``p``'s inside samples read, with
    any weight. A NaN pixel makes every such bin NaN, even at weight 0 (0 * NaN is NaN, as
    in the python backend and torchvision's interpolation, which read all four corners)."""
    m = np.zeros((s.low.shape[0], n_pixels), bool)
    bins = np.broadcast_to(np.arange(s.low.shape[0])[:, None], s.low.shape)[s.inside]
    m[bins, s.low[s.inside] - first] = True
    m[bins, s.high[s.inside] - first] = True
    return m


def _spread_nan(out: np.ndarray, window: np.ndarray, rows, cols) -> np.ndarray:
    """``out [C, PH, PW]`` computed from ``window [C, h, w]`` with its NaN pixels read as 0,
    made NaN where a bin reads a NaN pixel: ``rows [PH, h]`` and ``cols [PW, w]`` say which
    pixels each bin row and column reads (the matrix products alone would spread a NaN to
    every bin of the RoI: 0 * NaN in every product)."""
    nan = np.isnan(window).astype(np.float64)
    touched = (rows.astype(np.float64) @ nan @ cols.astype(np.float64).T) > 0
    out[touched] = np.nan
    return out


def _avg_matrices(a: RoIArgs, box, aligned: bool):
    """``(A, y0, B, x0, count)`` of one RoI, or None when it reads no pixel."""
    F = a.float_type
    height, width = a.x.shape[2:]
    ys, xs, count = _roi_samples(a, box, aligned)
    rows = _interp_matrix(F, _bilinear_1d(F, ys, height))
    cols = _interp_matrix(F, _bilinear_1d(F, xs, width))
    if rows is None or cols is None:
        return None  # an empty grid, or every sample outside: output 0, no gradient
    return (*rows, *cols, count)


# --- max modes: channels last, gather every bin's samples, reduce -----------------------


def _channels_last(x: np.ndarray, pad=None) -> np.ndarray:
    """``x [N, C, H, W]`` as ``[N, H, W, C]``, optionally with one more row and column of ``pad``.

    The max modes gather scattered pixels. Channels last, one pixel's C values are
    contiguous, so a gather copies rows of C values instead of C separate scalars: several
    times faster, for one transposed copy of the input per call.
    """
    n, c, h, w = x.shape
    if pad is None:
        return np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    out = np.full((n, h + 1, w + 1, c), pad, x.dtype)
    out[:, :h, :w] = x.transpose(0, 2, 3, 1)
    return out


def _by_bin(per_row: np.ndarray, per_col: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Broadcast ``[PH, n_h]`` and ``[PW, n_w]`` arrays to ``[PH, PW, n_h, n_w]``.

    Indexing ``plane[H, W, C]`` with the two results gathers ``[PH, PW, n_h, n_w, C]``:
    bin by bin, each bin's entries in row-major order, so that a reshape to
    ``[PH, PW, n_h * n_w, C]`` puts everything a bin reduces over on one axis.
    """
    return per_row[:, None, :, None], per_col[None, :, None, :]


def _first_index(mask: np.ndarray, axis: int) -> np.ndarray:
    """Index of the first True along ``axis`` (the last index if there is none).

    The same as ``mask.argmax(axis)``, but NumPy's argmax makes one call per slice, which is
    slow when the axis is short and the slices many. Instead, position ``i`` scores
    ``n - i`` where the mask is True and 0 elsewhere: the first True scores highest, and a
    ``max`` reduction is a single fast pass (small unsigned ints: little memory traffic).
    """
    n = mask.shape[axis]
    score = (n - np.arange(n)).astype(np.min_scalar_type(n))
    score = score.reshape([n if d == axis else 1 for d in range(mask.ndim)])
    return np.minimum(n - (mask * score).max(axis=axis), n - 1)


def _argmax_in_bin(v: np.ndarray, n_h: int, n_w: int) -> tuple[np.ndarray, np.ndarray]:
    """Where the maximum of each bin of ``v [PH, PW, n_h * n_w, C]`` first occurs.

    The first in row-major order, as the loops' strict ``>`` keeps the first of equal
    values. Returns ``(row, col)``, each [PH, PW, C]: indices into the bins' rows
    ``[PH, n_h]`` and columns ``[PW, n_w]`` flattened, so that ``a.take(row)`` reads a
    ``[PH, n_h]`` array ``a`` at every winner (1-D indexing: much faster than ``a[ph, iy]``).
    """
    pooled_h, pooled_w = v.shape[:2]
    iy, ix = np.divmod(_first_index(v == v.max(axis=2, keepdims=True), axis=2), n_w)
    row = np.arange(pooled_h)[:, None, None] * n_h + iy
    col = np.arange(pooled_w)[None, :, None] * n_w + ix
    return row, col


def _above_floor(F, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The max modes' rule (torchvision's RoIPool, :data:`geometry.MAX_FLOOR`) on values
    ``v [..., n, C]`` reduced over axis -2: ``(masked, won)``, the values with those that can
    never win (NaN, at most -FLT_MAX) set to -inf, and whether anything won ``[..., C]``."""
    valid = v > F(g.MAX_FLOOR)  # False for NaN
    return np.where(valid, v, F(-np.inf)), valid.any(axis=-2)


def _scatter_add(grad: np.ndarray, b: int, y: np.ndarray, x: np.ndarray, values) -> None:
    """``grad[b, y, x, c] += values[..., c]`` on a channels-last gradient, repeats adding up.

    ``y``, ``x`` and ``values`` are [..., C]. ``np.add.at`` (unlike ``+=``) adds once per
    occurrence of a repeated index; on flat 1-D indices it takes its fast path.
    """
    height, width, n_channels = grad.shape[1:]
    flat = ((b * height + y) * width + x) * n_channels + np.arange(n_channels)
    np.add.at(grad.reshape(-1), flat.ravel(), np.broadcast_to(values, flat.shape).ravel())


def _max_samples(F, plane: np.ndarray, sy: Bilinear1d, sx: Bilinear1d) -> np.ndarray:
    """Every bilinear sample of one RoI in every channel, bin by bin: [PH, PW, gh * gw, C].

    ``plane`` is [H, W, C] (channels last); ``sy`` holds [PH, gh] arrays and ``sx``
    [PW, gw]. Four gathers, one per corner, read all samples at once; a sample outside the
    map is 0.
    """
    (pooled_h, grid_h), (pooled_w, grid_w) = sy.low.shape, sx.low.shape
    y_lo, x_lo = _by_bin(sy.low, sx.low)
    y_hi, x_hi = _by_bin(sy.high, sx.high)
    wy_lo, wx_lo = _by_bin(sy.w_low, sx.w_low)
    wy_hi, wx_hi = _by_bin(sy.w_high, sx.w_high)
    # torchvision's order: w1 * v1 + w2 * v2 + w3 * v3 + w4 * v4, with w = wy * wx
    value = (
        (wy_lo * wx_lo)[..., None] * plane[y_lo, x_lo]
        + (wy_lo * wx_hi)[..., None] * plane[y_lo, x_hi]
        + (wy_hi * wx_lo)[..., None] * plane[y_hi, x_lo]
        + (wy_hi * wx_hi)[..., None] * plane[y_hi, x_hi]
    )
    inside_y, inside_x = _by_bin(sy.inside, sx.inside)
    value = np.where((inside_y & inside_x)[..., None], value, F(0))
    return value.reshape(pooled_h, pooled_w, grid_h * grid_w, plane.shape[-1])


# --- RoIAlign / RoIWarp drivers ----------------------------------------------------------


def _align_forward(a: RoIArgs, boxes: np.ndarray, aligned: bool) -> np.ndarray:
    F = a.float_type
    height, width = a.x.shape[2:]
    out = np.zeros((boxes.shape[0], a.x.shape[1], a.pooled_h, a.pooled_w), a.x.dtype)
    if a.pool_mode == "avg":
        for k, box in enumerate(boxes):
            m = _avg_matrices(a, box, aligned)
            if m is not None:  # else nothing read: 0
                rows, y0, cols, x0, count = m
                window = a.x[a.batch[k], :, y0 : y0 + rows.shape[1], x0 : x0 + cols.shape[1]]
                if not np.isnan(window).any():
                    out[k] = rows @ window @ cols.T / count
                    continue
                ys, xs, _ = _roi_samples(a, box, aligned)
                support_y = _support_matrix(_bilinear_1d(F, ys, height), y0, rows.shape[1])
                support_x = _support_matrix(_bilinear_1d(F, xs, width), x0, cols.shape[1])
                clean = np.where(np.isnan(window), F(0), window)
                out[k] = _spread_nan(rows @ clean @ cols.T / count, window, support_y, support_x)
        return out
    x = _channels_last(a.x)
    for k, box in enumerate(boxes):
        ys, xs, _ = _roi_samples(a, box, aligned)
        if ys.size and xs.size:  # else an empty grid: 0
            sy, sx = _bilinear_1d(F, ys, height), _bilinear_1d(F, xs, width)
            masked, won = _above_floor(F, _max_samples(F, x[a.batch[k]], sy, sx))
            best = np.where(won, masked.max(axis=2), F(g.MAX_FLOOR))
            out[k] = best.transpose(2, 0, 1)
    return out


def _align_backward(a: RoIArgs, boxes: np.ndarray, aligned: bool) -> np.ndarray:
    """avg: every sample sends ``grad / count * weight`` to its four pixels, i.e. ``A.T G B``.
    max: the winning sample sends ``grad * weight`` to its four pixels (nothing if outside)."""
    F = a.float_type
    height, width = a.x.shape[2:]
    if a.pool_mode == "avg":
        grad_x = np.zeros_like(a.x)
        for k, box in enumerate(boxes):
            m = _avg_matrices(a, box, aligned)
            if m is not None:
                rows, y0, cols, x0, count = m
                # A window's pixels are distinct, so a plain += suffices; RoIs add in turn.
                window = grad_x[a.batch[k], :, y0 : y0 + rows.shape[1], x0 : x0 + cols.shape[1]]
                window += rows.T @ (a.grad_output[k] / count) @ cols
        return grad_x
    x = _channels_last(a.x)
    grad_x = np.zeros_like(x)  # channels last, as x
    for k, box in enumerate(boxes):
        ys, xs, _ = _roi_samples(a, box, aligned)
        if ys.size == 0 or xs.size == 0:
            continue
        b = a.batch[k]
        sy, sx = _bilinear_1d(F, ys, height), _bilinear_1d(F, xs, width)
        masked, won = _above_floor(F, _max_samples(F, x[b], sy, sx))
        row, col = _argmax_in_bin(masked, *ys.shape[1:], *xs.shape[1:])
        # [PH, PW, C]; a bin where nothing won (all NaN) sends no gradient
        grad = np.where(won, a.grad_output[k].transpose(1, 2, 0), F(0))
        # The winners' four corners, one scatter each; an outside winner has zero weights.
        y_corners = [
            (sy.low.take(row), sy.w_low.take(row)),
            (sy.high.take(row), sy.w_high.take(row)),
        ]
        x_corners = [
            (sx.low.take(col), sx.w_low.take(col)),
            (sx.high.take(col), sx.w_high.take(col)),
        ]
        for y, wy in y_corners:
            for x_, wx in x_corners:
                _scatter_add(grad_x, b, y, x_, grad * (wy * wx))
    return np.ascontiguousarray(grad_x.transpose(0, 3, 1, 2))


def _warp_boxes(a: RoIArgs) -> np.ndarray:
    """RoIWarp's one quantization, per RoI (cheap scalar work): integer feature coordinates."""
    F = a.float_type
    scale = F(a.spatial_scale)
    boxes = [g.warp_box(F, *row, scale) for row in a.rois[:, 1:]]
    return np.array(boxes, dtype=a.x.dtype).reshape(-1, 4)


# --- RoIPool: quantized bins, max per bin -------------------------------------------------


def _pool_bin_edges(F, pooled: int, bin_size, start: int, size: int):
    """:func:`geometry.pool_bin` for every bin at once: ``lo, hi`` int arrays of shape [P]."""
    p = np.arange(pooled + 1).astype(F)  # F(p) for p = 0 .. P (bin p ends at F(p + 1))
    lo = np.floor(p[:-1] * bin_size).astype(np.int64) + start
    hi = np.ceil(p[1:] * bin_size).astype(np.int64) + start
    return np.clip(lo, 0, size), np.clip(hi, 0, size)


def _bin_pixels(lo: np.ndarray, hi: np.ndarray, sentinel: int) -> np.ndarray:
    """Each bin's pixel indices, padded to the widest bin with ``sentinel``: [P, n].

    Bins differ in size by a pixel or so, so a rectangular block wastes little and lets one
    fancy-indexing step read every bin at once.
    """
    n = max(int((hi - lo).max()), 0)
    idx = lo[:, None] + np.arange(n)
    return np.where(idx < hi[:, None], idx, sentinel)


class _PoolBins(NamedTuple):
    """The pixels of every bin of one RoI (Fast R-CNN sec. 2.1), gathered for every channel."""

    pixels: np.ndarray  # [PH, PW, n_h * n_w, C]; padding reads -inf
    rows: np.ndarray  # [PH, n_h] pixel rows of each bin row (padding: H)
    cols: np.ndarray  # [PW, n_w] pixel columns of each bin column (padding: W)
    empty: np.ndarray  # [PH, PW] bins without pixels (output 0, argmax -1, no gradient)


def _pool_bins(a: RoIArgs, padded: np.ndarray, k: int) -> _PoolBins | None:
    """The bins of RoI ``k``, or None when all are empty.

    ``padded`` is ``a.x`` channels last with one more row and column of -inf: the padding
    of each bin's block reads them and never wins a max. A bin's first pixel is always a
    real one, so the first maximum is a real pixel even when it is -inf.
    """
    F = a.float_type
    height, width = a.x.shape[2:]
    _, x1, y1, x2, y2 = a.rois[k]
    start_y, start_x, bin_h, bin_w = g.pool_box(
        F, x1, y1, x2, y2, F(a.spatial_scale), a.pooled_h, a.pooled_w
    )
    h_lo, h_hi = _pool_bin_edges(F, a.pooled_h, bin_h, start_y, height)
    w_lo, w_hi = _pool_bin_edges(F, a.pooled_w, bin_w, start_x, width)
    rows = _bin_pixels(h_lo, h_hi, sentinel=height)
    cols = _bin_pixels(w_lo, w_hi, sentinel=width)
    if rows.size == 0 or cols.size == 0:
        return None
    pixels = padded[a.batch[k]][_by_bin(rows, cols)]
    pixels = pixels.reshape(a.pooled_h, a.pooled_w, rows.shape[1] * cols.shape[1], -1)
    empty = (h_hi <= h_lo)[:, None] | (w_hi <= w_lo)[None, :]
    return _PoolBins(pixels, rows, cols, empty)


# --- the backend interface -----------------------------------------------------------------


def roi_align_forward(
    x, rois, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False, pool_mode="avg"
):
    """RoIAlign (Mask R-CNN sec. 3): average (or max) of bilinear samples in each bin."""
    a = check_roi_args(x, rois, output_size, spatial_scale, sampling_ratio, aligned, pool_mode)
    return _align_forward(a, a.rois[:, 1:], a.aligned)


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
    """The gradient of RoIAlign with respect to ``x`` (bilinear-weighted scatter)."""
    a = check_roi_args(
        x, rois, output_size, spatial_scale, sampling_ratio, aligned, pool_mode, grad_output
    )
    return _align_backward(a, a.rois[:, 1:], a.aligned)


def roi_warp_forward(x, rois, output_size, spatial_scale=1.0, sampling_ratio=-1, pool_mode="max"):
    """RoIWarp: quantize the box once, then sample bilinearly (Mask R-CNN Table 2c)."""
    a = check_roi_args(x, rois, output_size, spatial_scale, sampling_ratio, False, pool_mode)
    boxes = _warp_boxes(a)  # integer feature coordinates: sample them at scale 1
    return _align_forward(a._replace(spatial_scale=1.0), boxes, False)


def roi_warp_backward(
    x, rois, grad_output, output_size, spatial_scale=1.0, sampling_ratio=-1, pool_mode="max"
):
    """The gradient of RoIWarp with respect to ``x``."""
    a = check_roi_args(
        x, rois, output_size, spatial_scale, sampling_ratio, False, pool_mode, grad_output
    )
    boxes = _warp_boxes(a)
    return _align_backward(a._replace(spatial_scale=1.0), boxes, False)


def roi_pool_forward(x, rois, output_size, spatial_scale=1.0):
    """RoIPool (Fast R-CNN sec. 2.1): max over each quantized bin; an empty bin gives 0."""
    return roi_pool_forward_with_argmax(x, rois, output_size, spatial_scale)[0]


def roi_pool_forward_with_argmax(x, rois, output_size, spatial_scale=1.0):
    """:func:`roi_pool_forward` and the flat index ``row * W + col`` of each maximum in its
    image plane: ``(y, argmax)``, argmax int64 [K, C, PH, PW], -1 for an empty bin."""
    a = check_roi_args(x, rois, output_size, spatial_scale)
    F = a.float_type
    out = np.zeros((a.rois.shape[0], a.x.shape[1], a.pooled_h, a.pooled_w), a.x.dtype)
    argmax = np.full(out.shape, -1, np.int64)
    padded = _channels_last(a.x, pad=-np.inf)
    width = a.x.shape[3]
    for k in range(a.rois.shape[0]):
        bins = _pool_bins(a, padded, k)
        if bins is not None:
            masked, won = _above_floor(F, bins.pixels)
            row, col = _argmax_in_bin(masked, bins.rows.shape[1], bins.cols.shape[1])
            empty = bins.empty[..., None]
            best = np.where(won, masked.max(axis=2), F(g.MAX_FLOOR))
            out[k] = np.where(empty, 0, best).transpose(2, 0, 1)
            flat = bins.rows.take(row) * width + bins.cols.take(col)
            argmax[k] = np.where(empty | ~won, -1, flat).transpose(2, 0, 1)
    return out, argmax


def roi_pool_backward_from_argmax(x, rois, grad_output, argmax, output_size, spatial_scale=1.0):
    """:func:`roi_pool_backward` through the forward's saved ``argmax``: one scatter."""
    a = check_roi_args(x, rois, output_size, spatial_scale, grad_output=grad_output)
    n, channels, height, width = a.x.shape
    argmax = check_argmax(argmax, a.grad_output.shape, height * width)
    grad_x = np.zeros(n * channels * height * width, a.x.dtype)
    keep = argmax >= 0
    # flat index into grad_x [N, C, H, W] of every bin's winner; bins share winners: add.at
    plane = a.batch[:, None, None, None] * channels + np.arange(channels)[:, None, None]
    np.add.at(grad_x, (plane * (height * width) + argmax)[keep], a.grad_output[keep])
    return grad_x.reshape(a.x.shape)


def roi_pool_backward(x, rois, grad_output, output_size, spatial_scale=1.0):
    """The gradient of each bin goes to its argmax pixel (Fast R-CNN eq. 4)."""
    a = check_roi_args(x, rois, output_size, spatial_scale, grad_output=grad_output)
    padded = _channels_last(a.x, pad=-np.inf)
    grad_x = np.zeros_like(padded)  # channels last, as padded
    for k in range(a.rois.shape[0]):
        bins = _pool_bins(a, padded, k)
        if bins is not None:
            masked, won = _above_floor(a.float_type, bins.pixels)
            row, col = _argmax_in_bin(masked, bins.rows.shape[1], bins.cols.shape[1])
            # Bins overlap (floor / ceil), so two bins can share an argmax pixel: np.add.at.
            # An empty bin's "argmax" is a padding pixel: its gradient is cropped below; a
            # bin where nothing won (all NaN) sends none.
            grad = np.where(won, a.grad_output[k].transpose(1, 2, 0), 0)  # [PH, PW, C]
            _scatter_add(grad_x, a.batch[k], bins.rows.take(row), bins.cols.take(col), grad)
    height, width = a.x.shape[2:]
    return np.ascontiguousarray(grad_x[:, :height, :width].transpose(0, 3, 1, 2))


# --- boxes ---------------------------------------------------------------------------------


def _intersection(F, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Overlap areas of boxes ``a`` and ``b`` (broadcast), as :func:`geometry.box_intersection`."""
    w = np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0])
    h = np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1])
    return np.maximum(w, F(0)) * np.maximum(h, F(0))


def _area(boxes: np.ndarray) -> np.ndarray:
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def box_iou(boxes1, boxes2):
    """Intersection over union of every pair: [N, M] (0 / 0 = NaN, as torchvision)."""
    boxes1 = check_boxes("boxes1", boxes1)
    boxes2 = check_boxes("boxes2", boxes2).astype(boxes1.dtype)
    F = boxes1.dtype.type
    inter = _intersection(F, boxes1[:, None, :], boxes2[None, :, :])
    with np.errstate(invalid="ignore", divide="ignore"):
        return inter / (_area(boxes1)[:, None] + _area(boxes2)[None, :] - inter)


def nms(boxes, scores, iou_threshold):
    """Greedy non-maximum suppression: keep the best remaining box, drop every box whose IoU
    with it is strictly greater than the threshold, repeat. Scores are sorted stably, so
    ties keep the lower index first."""
    boxes, scores, threshold = check_nms_args(boxes, scores, iou_threshold)
    F = boxes.dtype.type
    areas = _area(boxes)
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    with np.errstate(invalid="ignore", divide="ignore"):
        while order.size:
            best, rest = order[0], order[1:]
            keep.append(int(best))
            inter = _intersection(F, boxes[best], boxes[rest])
            iou = inter / (areas[rest] + areas[best] - inter)
            # torchvision compares the float IoU with a *double* threshold; NumPy would round
            # the Python float to float32 instead. NaN (0 / 0) is not > anything: kept.
            order = rest[~(iou.astype(np.float64) > threshold)]
    return np.array(keep, dtype=np.int64)


# --- Precise RoI Pooling (IoU-Net, Jiang et al., ECCV 2018, sec. 3.3) ----------------------
#
# The integral of the bilinear map over a bin is separable too: with Iy[p, i] the integral
# of pixel row i's tent over bin row p (and Ix likewise), the bin integrals are Iy X Ix^T,
# the same shape of computation as avg RoIAlign with A and B, only exact.


def _tent_antiderivative(u: np.ndarray) -> np.ndarray:
    """Vectorized :func:`geometry.tent_antiderivative`, in u's dtype."""
    one = u.dtype.type(1)
    left = (u + one) * (u + one) / u.dtype.type(2)
    right = one - (one - u) * (one - u) / u.dtype.type(2)
    return np.where(u <= -1, 0, np.where(u <= 0, left, np.where(u <= 1, right, one))).astype(
        u.dtype
    )


def _prroi_edges(F, start, bin_size, pooled: int) -> np.ndarray:
    """The pooled + 1 bin edges ``start + p * bin`` on one axis, in F."""
    return start + np.arange(pooled + 1).astype(F) * bin_size


def _tent_integrals(edges: np.ndarray, size: int) -> np.ndarray:
    """[P, size]: the integral of each pixel's tent over each bin [edges[p], edges[p + 1]]."""
    pixels = np.arange(size).astype(edges.dtype)
    antiderivative = _tent_antiderivative(edges[:, None] - pixels[None, :])
    return antiderivative[1:] - antiderivative[:-1]


def _tent_support_matrix(edges: np.ndarray, size: int) -> np.ndarray:
    """[P, size] bool: the pixels :func:`geometry.tent_support` gives each bin (those the
    python backend reads, some at weight 0: a NaN there makes the bin NaN)."""
    m = np.zeros((edges.shape[0] - 1, size), bool)
    for p in range(edges.shape[0] - 1):
        lo, hi = g.tent_support(edges[p], edges[p + 1], size)
        m[p, lo:hi] = True
    return m


def _tent_values(edges: np.ndarray, size: int) -> np.ndarray:
    """[P + 1, size]: each pixel's tent at each bin edge (the map's weights along the edge)."""
    pixels = np.arange(size).astype(edges.dtype)
    return np.maximum(edges.dtype.type(1) - np.abs(edges[:, None] - pixels[None, :]), 0)


def _prroi_geometry(a: RoIArgs, k: int):
    F = a.float_type
    _, x1, y1, x2, y2 = a.rois[k]
    start_y, start_x, bin_h, bin_w = g.prroi_box(
        F, x1, y1, x2, y2, F(a.spatial_scale), a.aligned, a.pooled_h, a.pooled_w
    )
    return (
        _prroi_edges(F, start_y, bin_h, a.pooled_h),
        _prroi_edges(F, start_x, bin_w, a.pooled_w),
        g.prroi_area(F, bin_h, bin_w),
    )


def prroi_pool_forward(x, rois, output_size, spatial_scale=1.0, aligned=False):
    """PrRoIPool: the exact mean of the bilinearly interpolated map over each bin."""
    a = check_roi_args(x, rois, output_size, spatial_scale, aligned=aligned)
    F = a.float_type
    height, width = a.x.shape[2:]
    y = np.zeros((a.rois.shape[0], a.x.shape[1], a.pooled_h, a.pooled_w), a.x.dtype)
    for k in range(a.rois.shape[0]):
        ey, ex, area = _prroi_geometry(a, k)
        if area <= 0:
            continue
        iy, ix = _tent_integrals(ey, height), _tent_integrals(ex, width)
        plane = a.x[a.batch[k]]
        if not np.isnan(plane).any():
            y[k] = iy @ plane @ ix.T / area
            continue
        clean = np.where(np.isnan(plane), F(0), plane)
        support = _tent_support_matrix(ey, height), _tent_support_matrix(ex, width)
        y[k] = _spread_nan(iy @ clean @ ix.T / area, plane, *support)
    return y


def prroi_pool_backward(x, rois, grad_output, output_size, spatial_scale=1.0, aligned=False):
    """Gradients to the input (Iy^T G Ix) and to the box (boundary integrals along the bin
    edges, see :func:`refimpl.ops.python.prroi_pool_backward`): ``(grad_x, grad_rois)``."""
    a = check_roi_args(
        x, rois, output_size, spatial_scale, aligned=aligned, grad_output=grad_output
    )
    F = a.float_type
    scale = F(a.spatial_scale)
    height, width = a.x.shape[2:]
    grad_x = np.zeros_like(a.x)
    grad_rois = np.zeros_like(a.rois)
    fy = np.arange(a.pooled_h + 1).astype(F) / F(a.pooled_h)  # edge p sits at y1 + fy[p] * h
    fx = np.arange(a.pooled_w + 1).astype(F) / F(a.pooled_w)
    for k in range(a.rois.shape[0]):
        ey, ex, area = _prroi_geometry(a, k)
        if area <= 0:
            continue
        b = a.batch[k]
        plane = a.x[b]
        g_out = a.grad_output[k] / area  # [C, PH, PW]
        iy, ix = _tent_integrals(ey, height), _tent_integrals(ex, width)
        # a NaN pixel a bin reads (at any weight) makes that bin's output NaN, hence every
        # edge derivative of the RoI (python backend); the input gradient never reads x
        nan_read = False
        if np.isnan(plane).any():
            support = _tent_support_matrix(ey, height), _tent_support_matrix(ex, width)
            nan_read = bool(np.isnan(_spread_nan(np.zeros(g_out.shape), plane, *support)).any())
            plane = np.where(np.isnan(plane), F(0), plane)
        ty, tx = _tent_values(ey, height), _tent_values(ex, width)
        grad_x[b] += iy.T @ g_out @ ix
        out = iy @ plane @ ix.T / area  # [C, PH, PW]
        bin_h, bin_w = ey[1:] - ey[:-1], ex[1:] - ex[:-1]
        # Integrals of the map along every horizontal edge over each bin column: [C, PH+1, PW]
        along_y = ty @ plane @ ix.T
        along_x = iy @ plane @ tx.T  # [C, PH, PW+1]
        # dLoss/d(edge), the bin below an edge seeing it as its top (-) and above as bottom (+)
        d_y = np.zeros((a.pooled_h + 1,), a.x.dtype)
        d_y[:-1] -= np.einsum("cpq,cpq->p", g_out, along_y[:, :-1] - out * bin_w[None, None, :])
        d_y[1:] += np.einsum("cpq,cpq->p", g_out, along_y[:, 1:] - out * bin_w[None, None, :])
        d_x = np.zeros((a.pooled_w + 1,), a.x.dtype)
        d_x[:-1] -= np.einsum("cpq,cpq->q", g_out, along_x[:, :, :-1] - out * bin_h[None, :, None])
        d_x[1:] += np.einsum("cpq,cpq->q", g_out, along_x[:, :, 1:] - out * bin_h[None, :, None])
        grad_rois[k, 1] = scale * np.sum(d_x * (1 - fx))
        grad_rois[k, 3] = scale * np.sum(d_x * fx)
        grad_rois[k, 2] = scale * np.sum(d_y * (1 - fy))
        grad_rois[k, 4] = scale * np.sum(d_y * fy)
        if nan_read:
            grad_rois[k, 1:] = np.nan
    return grad_x, grad_rois
