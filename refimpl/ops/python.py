"""The ``"python"`` backend: plain loops that read like the papers. Slow; the definition.

Every other backend is tested against this one (and against torchvision's fixtures). The
loops follow the papers' words: for every RoI, every bin, every sampling point, every
channel. Shared geometry (boxes -> bins -> sampling points -> bilinear weights) comes from
:mod:`refimpl.ops.geometry`, the same code the compiled backends run.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from . import geometry as g
from .validate import RoIArgs, check_argmax, check_boxes, check_nms_args, check_roi_args

Corner = tuple[int, int, object]  # (y, x, weight) of one pixel a sample reads
Sample = list[Corner] | None  # the four corners of one sampling point; None when outside


def _bilinear_corners(F, y, x, height: int, width: int) -> Sample:
    """The four (pixel, weight) pairs of bilinear interpolation at (y, x), or None outside."""
    inside_y, y_low, y_high, wy_low, wy_high = g.bilinear_1d(F, y, height)
    inside_x, x_low, x_high, wx_low, wx_high = g.bilinear_1d(F, x, width)
    if not (inside_y and inside_x):
        return None
    return [
        (y_low, x_low, wy_low * wx_low),
        (y_low, x_high, wy_low * wx_high),
        (y_high, x_low, wy_high * wx_low),
        (y_high, x_high, wy_high * wx_high),
    ]


def _sampling_grids(a: RoIArgs, boxes: np.ndarray, aligned: bool) -> Iterator:
    """For every RoI and bin: (k, ph, pw, samples, count), the bin's bilinear sampling points.

    ``boxes`` are [K, 4] in feature coordinates times ``1 / a.spatial_scale`` (as given).
    """
    F = a.float_type
    scale = F(a.spatial_scale)
    height, width = a.x.shape[2:]
    for k in range(boxes.shape[0]):
        x1, y1, x2, y2 = boxes[k]
        start_y, start_x, bin_h, bin_w, grid_h, grid_w, count = g.align_box(
            F, x1, y1, x2, y2, scale, aligned, a.pooled_h, a.pooled_w, a.sampling_ratio
        )
        for ph in range(a.pooled_h):
            for pw in range(a.pooled_w):
                samples = []
                for iy in range(grid_h):
                    y = g.sample_coord(F, start_y, bin_h, ph, iy, grid_h)
                    for ix in range(grid_w):
                        x = g.sample_coord(F, start_x, bin_w, pw, ix, grid_w)
                        samples.append(_bilinear_corners(F, y, x, height, width))
                yield k, ph, pw, samples, count


def _interpolate(plane: np.ndarray, sample: Sample):
    if sample is None:
        return plane.dtype.type(0)
    (y1, x1, w1), (y2, x2, w2), (y3, x3, w3), (y4, x4, w4) = sample
    return w1 * plane[y1, x1] + w2 * plane[y2, x2] + w3 * plane[y3, x3] + w4 * plane[y4, x4]


def _argmax_sample(plane: np.ndarray, samples: list[Sample]) -> int:
    """Index of the largest sample (outside samples count as 0; the first wins ties), -1
    when none is above ``g.MAX_FLOOR`` (NaN never wins: torchvision's RoIPool rule)."""
    F = plane.dtype.type
    best, best_value = -1, F(g.MAX_FLOOR)
    for s, sample in enumerate(samples):
        value = _interpolate(plane, sample)
        if value > best_value:
            best, best_value = s, value
    return best


def _max_value(plane: np.ndarray, samples: list[Sample], best: int):
    """The max mode's output for the winner ``best`` (``g.MAX_FLOOR`` when none won)."""
    if best < 0:
        return plane.dtype.type(g.MAX_FLOOR)
    return _interpolate(plane, samples[best])


def _align_forward(a: RoIArgs, boxes: np.ndarray, aligned: bool) -> np.ndarray:
    F = a.float_type
    y = np.zeros((boxes.shape[0], a.x.shape[1], a.pooled_h, a.pooled_w), a.x.dtype)
    for k, ph, pw, samples, count in _sampling_grids(a, boxes, aligned):
        image = a.x[a.batch[k]]
        for c in range(a.x.shape[1]):
            if not samples:
                continue  # an empty grid pools to 0
            if a.pool_mode == "avg":
                total = F(0)
                for sample in samples:
                    total += _interpolate(image[c], sample)
                y[k, c, ph, pw] = total / count
            else:
                y[k, c, ph, pw] = _max_value(image[c], samples, _argmax_sample(image[c], samples))
    return y


def _align_backward(a: RoIArgs, boxes: np.ndarray, aligned: bool) -> np.ndarray:
    """Bilinear-weighted scatter: each sample sends its share of the bin's gradient to the
    four pixels it read (avg: divided by the sample count; max: the winning sample only)."""
    grad_x = np.zeros_like(a.x)
    for k, ph, pw, samples, count in _sampling_grids(a, boxes, aligned):
        b = a.batch[k]
        for c in range(a.x.shape[1]):
            grad = a.grad_output[k, c, ph, pw]
            if a.pool_mode == "avg":
                chosen = [(sample, grad / count) for sample in samples]
            else:
                best = _argmax_sample(a.x[b, c], samples)  # -1: no winner, no gradient
                chosen = [(samples[best], grad)] if best >= 0 else []
            for sample, share in chosen:
                if sample is None:
                    continue
                for yy, xx, w in sample:
                    grad_x[b, c, yy, xx] += share * w
    return grad_x


def _warp_boxes(a: RoIArgs) -> np.ndarray:
    F = a.float_type
    scale = F(a.spatial_scale)
    boxes = [g.warp_box(F, *row, scale) for row in a.rois[:, 1:]]
    return np.array(boxes, dtype=a.x.dtype).reshape(-1, 4)


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
    a = check_roi_args(
        x, rois, output_size, spatial_scale, sampling_ratio, False, pool_mode, grad_output
    )
    boxes = _warp_boxes(a)
    return _align_backward(a._replace(spatial_scale=1.0), boxes, False)


def _pool_bins(a: RoIArgs) -> Iterator:
    """For every RoI and bin: (k, ph, pw, rows, cols), the bin's quantized pixel ranges."""
    F = a.float_type
    scale = F(a.spatial_scale)
    height, width = a.x.shape[2:]
    for k in range(a.rois.shape[0]):
        _, x1, y1, x2, y2 = a.rois[k]
        start_y, start_x, bin_h, bin_w = g.pool_box(
            F, x1, y1, x2, y2, scale, a.pooled_h, a.pooled_w
        )
        for ph in range(a.pooled_h):
            h_lo, h_hi = g.pool_bin(F, ph, bin_h, start_y, height)
            for pw in range(a.pooled_w):
                w_lo, w_hi = g.pool_bin(F, pw, bin_w, start_x, width)
                yield k, ph, pw, range(h_lo, h_hi), range(w_lo, w_hi)


def _pool_argmax(plane: np.ndarray, rows: range, cols: range) -> tuple[int, int] | None:
    """The first maximum in row-major order; None when no pixel is above ``g.MAX_FLOOR``
    (an empty bin, or only NaN: torchvision's running max from -FLT_MAX, which a NaN never
    beats)."""
    best, best_value = None, plane.dtype.type(g.MAX_FLOOR)
    for yy in rows:
        for xx in cols:
            if plane[yy, xx] > best_value:
                best, best_value = (yy, xx), plane[yy, xx]
    return best


def roi_pool_forward(x, rois, output_size, spatial_scale=1.0):
    """RoIPool (Fast R-CNN sec. 2.1): max over each quantized bin; an empty bin gives 0."""
    return roi_pool_forward_with_argmax(x, rois, output_size, spatial_scale)[0]


def roi_pool_forward_with_argmax(x, rois, output_size, spatial_scale=1.0):
    """:func:`roi_pool_forward` and where each maximum is: ``(y, argmax)``, ``argmax``
    [K, C, PH, PW] int64, the flat index ``row * W + col`` in the image plane (-1: empty
    bin). What a framework saves for the backward, as torchvision's RoIPool does."""
    a = check_roi_args(x, rois, output_size, spatial_scale)
    y = np.zeros((a.rois.shape[0], a.x.shape[1], a.pooled_h, a.pooled_w), a.x.dtype)
    argmax = np.full(y.shape, -1, np.int64)
    width = a.x.shape[3]
    for k, ph, pw, rows, cols in _pool_bins(a):
        for c in range(a.x.shape[1]):
            plane = a.x[a.batch[k], c]
            best = _pool_argmax(plane, rows, cols)
            if best is not None:
                y[k, c, ph, pw] = plane[best]
                argmax[k, c, ph, pw] = best[0] * width + best[1]
            elif len(rows) and len(cols):  # pixels, none above the floor (e.g. all NaN)
                y[k, c, ph, pw] = g.MAX_FLOOR
    return y, argmax


def roi_pool_backward_from_argmax(x, rois, grad_output, argmax, output_size, spatial_scale=1.0):
    """:func:`roi_pool_backward` through the forward's saved ``argmax``: no search."""
    a = check_roi_args(x, rois, output_size, spatial_scale, grad_output=grad_output)
    _, channels, height, width = a.x.shape
    argmax = check_argmax(argmax, a.grad_output.shape, height * width)
    grad_x = np.zeros_like(a.x)
    for k in range(a.rois.shape[0]):
        for c in range(channels):
            for ph in range(a.pooled_h):
                for pw in range(a.pooled_w):
                    i = argmax[k, c, ph, pw]
                    if i >= 0:
                        grad_x[a.batch[k], c, i // width, i % width] += a.grad_output[k, c, ph, pw]
    return grad_x


def roi_pool_backward(x, rois, grad_output, output_size, spatial_scale=1.0):
    """The gradient of each bin goes to its argmax pixel (Fast R-CNN eq. 4)."""
    a = check_roi_args(x, rois, output_size, spatial_scale, grad_output=grad_output)
    grad_x = np.zeros_like(a.x)
    for k, ph, pw, rows, cols in _pool_bins(a):
        b = a.batch[k]
        for c in range(a.x.shape[1]):
            best = _pool_argmax(a.x[b, c], rows, cols)
            if best is not None:
                grad_x[b, c][best] += a.grad_output[k, c, ph, pw]
    return grad_x


def box_iou(boxes1, boxes2):
    """Intersection over union of every pair: [N, M] (0 / 0 = NaN, as torchvision)."""
    boxes1 = check_boxes("boxes1", boxes1)
    boxes2 = check_boxes("boxes2", boxes2).astype(boxes1.dtype)
    F = boxes1.dtype.type
    iou = np.zeros((boxes1.shape[0], boxes2.shape[0]), boxes1.dtype)
    with np.errstate(invalid="ignore", divide="ignore"):
        for i, a in enumerate(boxes1):
            for j, b in enumerate(boxes2):
                inter = g.box_intersection(F, *a, *b)
                iou[i, j] = inter / (g.box_area(*a) + g.box_area(*b) - inter)
    return iou


def nms(boxes, scores, iou_threshold):
    """Greedy non-maximum suppression: visit boxes by decreasing score (stable on ties) and
    drop every later box whose IoU with a kept one is strictly greater than the threshold."""
    boxes, scores, threshold = check_nms_args(boxes, scores, iou_threshold)
    F = boxes.dtype.type
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    with np.errstate(invalid="ignore", divide="ignore"):
        for i in order:
            a = boxes[i]
            suppressed = False
            for j in keep:
                b = boxes[j]
                inter = g.box_intersection(F, *a, *b)
                iou = inter / (g.box_area(*a) + g.box_area(*b) - inter)
                # Compare in float64, as torchvision does: a float32 IoU of 0.3 rounds up
                # and is suppressed at threshold 0.3 (NumPy would round 0.3 to float32 too).
                if float(iou) > threshold:
                    suppressed = True
                    break
            if not suppressed:
                keep.append(int(i))
    return np.array(keep, dtype=np.int64)


# --- Precise RoI Pooling (IoU-Net, Jiang et al., ECCV 2018, sec. 3.3) ----------------------


def _prroi_bins(a: RoIArgs) -> Iterator:
    """For every RoI and bin: (k, ph, pw, (y0, y1, x0, x1), area), the bin as a real interval."""
    F = a.float_type
    scale = F(a.spatial_scale)
    for k in range(a.rois.shape[0]):
        _, x1, y1, x2, y2 = a.rois[k]
        start_y, start_x, bin_h, bin_w = g.prroi_box(
            F, x1, y1, x2, y2, scale, a.aligned, a.pooled_h, a.pooled_w
        )
        for ph in range(a.pooled_h):
            y0, y1_ = start_y + F(ph) * bin_h, start_y + F(ph + 1) * bin_h
            for pw in range(a.pooled_w):
                x0, x1_ = start_x + F(pw) * bin_w, start_x + F(pw + 1) * bin_w
                yield k, ph, pw, (y0, y1_, x0, x1_), g.prroi_area(F, bin_h, bin_w)


def _tent_weights(F, lo, hi, size) -> dict[int, object]:
    """Pixel -> integral of its tent over [lo, hi], for the pixels whose tents overlap it."""
    first, last = g.tent_support(lo, hi, size)
    return {i: g.tent_integral(F, lo, hi, i) for i in range(first, last)}


def _tent_values(F, t, size) -> dict[int, object]:
    """Pixel -> its tent's value at t (the map's weights along a bin edge)."""
    first, last = g.tent_support(t, t, size)
    return {i: g.tent(F, t - F(i)) for i in range(first, last)}


def _separable_sum(plane: np.ndarray, wy: dict, wx: dict):
    total = plane.dtype.type(0)
    for i, a in wy.items():
        for j, b in wx.items():
            total += plane[i, j] * a * b
    return total


def prroi_pool_forward(x, rois, output_size, spatial_scale=1.0, aligned=False):
    """PrRoIPool: the exact integral of the bilinearly interpolated map over each bin,
    divided by the bin's area (a zero-area bin gives 0). No quantization, no sampling."""
    a = check_roi_args(x, rois, output_size, spatial_scale, aligned=aligned)
    F = a.float_type
    height, width = a.x.shape[2:]
    y = np.zeros((a.rois.shape[0], a.x.shape[1], a.pooled_h, a.pooled_w), a.x.dtype)
    for k, ph, pw, (y0, y1, x0, x1), area in _prroi_bins(a):
        if area <= 0:
            continue
        wy, wx = _tent_weights(F, y0, y1, height), _tent_weights(F, x0, x1, width)
        for c in range(a.x.shape[1]):
            y[k, c, ph, pw] = _separable_sum(a.x[a.batch[k], c], wy, wx) / area
    return y


def prroi_pool_backward(x, rois, grad_output, output_size, spatial_scale=1.0, aligned=False):
    """Gradients of PrRoIPool to the input AND to the box: returns ``(grad_x, grad_rois)``.

    The input gradient is the same tent integrals. The box moves the integral's limits, so
    its gradient is a boundary integral of the map along each bin edge (Leibniz's rule),
    minus the change of the bin's area: for the bottom edge ``y1`` of a bin of size
    ``bh x bw``, ``dO/dy1 = (integral of f(y1, x) over the edge - O * bw) / (bh * bw)``.
    ``grad_rois[:, 0]`` (the batch index) is 0.
    """
    a = check_roi_args(
        x, rois, output_size, spatial_scale, aligned=aligned, grad_output=grad_output
    )
    F = a.float_type
    scale = F(a.spatial_scale)
    height, width = a.x.shape[2:]
    grad_x = np.zeros_like(a.x)
    grad_rois = np.zeros_like(a.rois)
    for k, ph, pw, (y0, y1, x0, x1), area in _prroi_bins(a):
        if area <= 0:
            continue
        b = a.batch[k]
        wy, wx = _tent_weights(F, y0, y1, height), _tent_weights(F, x0, x1, width)
        edges = {
            "y0": (_tent_values(F, y0, height), wx),
            "y1": (_tent_values(F, y1, height), wx),
            "x0": (wy, _tent_values(F, x0, width)),
            "x1": (wy, _tent_values(F, x1, width)),
        }
        d_edge = dict.fromkeys(edges, F(0))  # dLoss/d(bin edge), summed over channels
        for c in range(a.x.shape[1]):
            grad = a.grad_output[k, c, ph, pw]
            plane = a.x[b, c]
            for i, wi in wy.items():
                for j, wj in wx.items():
                    grad_x[b, c, i, j] += grad * wi * wj / area
            out = _separable_sum(plane, wy, wx) / area
            for name, (ey, ex) in edges.items():
                sign = F(1) if name.endswith("1") else F(-1)
                extent = (x1 - x0) if name[0] == "y" else (y1 - y0)
                d_edge[name] += grad * sign * (_separable_sum(plane, ey, ex) - out * extent) / area
        # Chain rule to the box corners: edge y0 of bin ph is y1_box + ph/PH * (y2_box - y1_box).
        fy0, fy1 = F(ph) / F(a.pooled_h), F(ph + 1) / F(a.pooled_h)
        fx0, fx1 = F(pw) / F(a.pooled_w), F(pw + 1) / F(a.pooled_w)
        grad_rois[k, 1] += scale * (d_edge["x0"] * (1 - fx0) + d_edge["x1"] * (1 - fx1))
        grad_rois[k, 3] += scale * (d_edge["x0"] * fx0 + d_edge["x1"] * fx1)
        grad_rois[k, 2] += scale * (d_edge["y0"] * (1 - fy0) + d_edge["y1"] * (1 - fy1))
        grad_rois[k, 4] += scale * (d_edge["y0"] * fy0 + d_edge["y1"] * fy1)
    return grad_x, grad_rois
