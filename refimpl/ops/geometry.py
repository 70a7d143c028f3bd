"""What every backend shares: box -> bins -> sampling points -> bilinear weights.

Each function here is plain scalar Python, written so that one definition serves all four
backends: the python backend calls it as is, the numba backend compiles it with
``numba.njit`` and the cuda backend with ``numba.cuda.jit(device=True)``.

``F`` is the scalar type of the arithmetic (``np.float32`` or ``np.float64``). torchvision
computes in the input's dtype, and Numba promotes ``int * float32`` to float64, so every
int -> float conversion goes through ``F`` explicitly, in torchvision's operation order;
float32 results then agree with torchvision to rounding, even for large coordinates.

References: Mask R-CNN (He et al., 2017) section 3 "RoIAlign"; Fast R-CNN (Girshick, 2015)
section 2.1 "The RoI pooling layer"; the semantics in ``docs/spec/roi-ops.md``.
"""

from __future__ import annotations

import math
import types


def c_round(v) -> int:
    """C's ``round()``: half away from zero (Python's ``round`` and ``np.round`` are half-even).

    ``floor(|v| + 0.5)`` is wrong for v = 0.49999999999999994 (the sum rounds up), so the
    fraction is compared instead, which is exact.
    """
    a = abs(v)
    r = math.floor(a)
    if a - r >= 0.5:
        r += 1
    return int(r) if v >= 0 else -int(r)


# --- RoIAlign / RoIWarp: continuous boxes, regular sampling grid, bilinear samples ---------


def align_box(F, x1, y1, x2, y2, spatial_scale, aligned, pooled_h, pooled_w, sampling_ratio):
    """Map a box to the feature map and lay out its bins and sampling grid (paper sec. 3).

    Returns ``start_y, start_x, bin_h, bin_w, grid_h, grid_w, count``. ``aligned`` shifts by
    half a pixel so that pixel centres sit at integer + 0.5 (detectron2's fix); without it a
    malformed box is stretched to 1x1 (torchvision's legacy behaviour). With adaptive
    sampling (``sampling_ratio <= 0``) the grid is ``ceil(roi / bins)``; an inverted aligned box
    has a negative size and so an empty grid (output 0), where torchvision's CPU kernel crashes.
    """
    offset = F(0.5) if aligned else F(0.0)
    start_x = x1 * spatial_scale - offset
    start_y = y1 * spatial_scale - offset
    end_x = x2 * spatial_scale - offset
    end_y = y2 * spatial_scale - offset
    roi_w = end_x - start_x
    roi_h = end_y - start_y
    if not aligned:
        roi_w = max(roi_w, F(1.0))
        roi_h = max(roi_h, F(1.0))
    bin_h = roi_h / F(pooled_h)
    bin_w = roi_w / F(pooled_w)
    if sampling_ratio > 0:
        grid_h = sampling_ratio
        grid_w = sampling_ratio
    else:
        grid_h = max(int(math.ceil(roi_h / F(pooled_h))), 0)
        grid_w = max(int(math.ceil(roi_w / F(pooled_w))), 0)
    count = F(max(grid_h * grid_w, 1))
    return start_y, start_x, bin_h, bin_w, grid_h, grid_w, count


def sample_coord(F, start, bin_size, p, i, grid):
    """Coordinate of sample ``i`` (of ``grid``) in bin ``p``: the centre of its sub-cell."""
    return start + F(p) * bin_size + F(i + 0.5) * bin_size / F(grid)


def bilinear_1d(F, v, size):
    """One axis of bilinear interpolation at ``v`` on ``size`` pixels (torchvision's rules).

    Returns ``inside, low, high, w_low, w_high``. A sample more than one pixel outside is not
    ``inside`` (value 0, no gradient); within one pixel, the border pixel is repeated. The 2-D
    weights are products of the 1-D ones, e.g. ``w_low_y * w_low_x`` for the top-left corner,
    and a sample is inside when it is inside on both axes.
    """
    if v < -1.0 or v > size:
        return False, 0, 0, F(0.0), F(0.0)
    if v <= 0:
        v = F(0.0)
    low = int(v)
    if low >= size - 1:
        low = size - 1
        high = size - 1
        v = F(low)
    else:
        high = low + 1
    w_high = v - F(low)
    w_low = F(1.0) - w_high
    return True, low, high, w_low, w_high


# The max modes' running maximum starts here and a value replaces it only when strictly
# greater (torchvision's RoIPool: -FLT_MAX, ``>``): a NaN never wins, and a bin whose values
# are all NaN (or at most -FLT_MAX) gives -FLT_MAX, with no argmax and no gradient. float64
# included, as torchvision.
MAX_FLOOR = -3.4028234663852886e38


# --- RoIPool: two quantizations (box to integers, bins to integers), max per bin ----------


def pool_box(F, x1, y1, x2, y2, spatial_scale, pooled_h, pooled_w):
    """Quantize a box to feature cells (inclusive end) and size its bins (Fast R-CNN 2.1).

    Returns ``start_y, start_x, bin_h, bin_w``; the bins are still real-valued here and are
    quantized per bin by :func:`pool_bin`.
    """
    start_x = c_round(x1 * spatial_scale)
    start_y = c_round(y1 * spatial_scale)
    end_x = c_round(x2 * spatial_scale)
    end_y = c_round(y2 * spatial_scale)
    roi_w = max(end_x - start_x + 1, 1)
    roi_h = max(end_y - start_y + 1, 1)
    bin_h = F(roi_h) / F(pooled_h)
    bin_w = F(roi_w) / F(pooled_w)
    return start_y, start_x, bin_h, bin_w


def pool_bin(F, p, bin_size, start, size):
    """The pixel range ``[lo, hi)`` of bin ``p`` on one axis: floor/ceil, clipped to the map."""
    lo = int(math.floor(F(p) * bin_size)) + start
    hi = int(math.ceil(F(p + 1) * bin_size)) + start
    lo = min(max(lo, 0), size)
    hi = min(max(hi, 0), size)
    return lo, hi


# --- RoIWarp: RoIPool's first quantization, then RoIAlign's sampling ----------------------


def warp_box(F, x1, y1, x2, y2, spatial_scale):
    """Quantize a box once to integer feature coordinates (as RoIPool does, C rounding).

    RoIWarp is then RoIAlign (``aligned=False``) of this box with ``spatial_scale = 1``: the
    paper's Table 2c ablation, one quantization instead of RoIPool's two.
    """
    return (
        F(c_round(x1 * spatial_scale)),
        F(c_round(y1 * spatial_scale)),
        F(c_round(x2 * spatial_scale)),
        F(c_round(y2 * spatial_scale)),
    )


# --- Boxes ---------------------------------------------------------------------------------


def box_area(x1, y1, x2, y2):
    """Area without torchvision's old "+1" convention: ``(x2 - x1) * (y2 - y1)``."""
    return (x2 - x1) * (y2 - y1)


def box_intersection(F, ax1, ay1, ax2, ay2, bx1, by1, bx2, by2):
    """Area of the overlap of two boxes (0 when they are disjoint), in ``F`` arithmetic."""
    w = min(ax2, bx2) - max(ax1, bx1)
    h = min(ay2, by2) - max(ay1, by1)
    return max(w, F(0.0)) * max(h, F(0.0))


# --- Precise RoI Pooling: the exact integral of the bilinear map over each bin ---------------


def tent_antiderivative(F, u):
    """``T(u)``, the integral of the tent ``max(0, 1 - |t|)`` from -inf to ``u``.

    Each pixel contributes a tent in y times a tent in x to the bilinearly interpolated map
    (zero beyond one pixel outside), so every PrRoIPool integral is a sum of
    ``T(b - i) - T(a - i)`` factors (Jiang et al., ECCV 2018, sec. 3.3, eq. 8).
    """
    if u <= -1.0:
        return F(0.0)
    if u <= 0.0:
        return (u + F(1.0)) * (u + F(1.0)) / F(2.0)
    if u <= 1.0:
        return F(1.0) - (F(1.0) - u) * (F(1.0) - u) / F(2.0)
    return F(1.0)


def tent_integral(F, a, b, i):
    """The integral of pixel ``i``'s tent ``max(0, 1 - |t - i|)`` over ``[a, b]``."""
    return tent_antiderivative(F, b - F(i)) - tent_antiderivative(F, a - F(i))


def tent(F, t):
    """The tent ``max(0, 1 - |t|)``: a pixel's weight at distance ``t`` from its centre."""
    return max(F(1.0) - abs(t), F(0.0))


def tent_support(a, b, size):
    """The pixels ``[lo, hi)`` whose tents overlap ``[a, b]``: ``a - 1 < i < b + 1``."""
    lo = max(int(math.floor(a)), 0)
    hi = min(int(math.ceil(b)) + 1, size)
    return lo, max(hi, lo)


def prroi_box(F, x1, y1, x2, y2, spatial_scale, aligned, pooled_h, pooled_w):
    """Map a box to the feature map for PrRoIPool: no quantization and no minimum size.

    Returns ``start_y, start_x, bin_h, bin_w``; an inverted box has zero-size bins (its
    output is 0), as in the reference implementation's ``max(roi_width, 0)``.
    """
    offset = F(0.5) if aligned else F(0.0)
    start_x = x1 * spatial_scale - offset
    start_y = y1 * spatial_scale - offset
    roi_w = max(x2 * spatial_scale - offset - start_x, F(0.0))
    roi_h = max(y2 * spatial_scale - offset - start_y, F(0.0))
    return start_y, start_x, roi_h / F(pooled_h), roi_w / F(pooled_w)


def prroi_area(F, bin_h, bin_w):
    """A PrRoIPool bin's area, the divisor of its integral; 0 below ``MIN_PRROI_AREA``.

    A subnormal-width box (``x2 - x1 = 1e-310``) has a positive area whose integrals
    underflow to 0 while dividing by it gives infinity (0 * inf = NaN in the forward and
    the gradients). Such a bin is treated as a zero-area one, in every backend and dtype:
    output 0, no gradient.
    """
    area = bin_h * bin_w
    if not area >= F(MIN_PRROI_AREA):
        return F(0.0)
    return area


# float32's smallest normal number: 1 / area stays finite in float32 and float64 above it,
# and a bin this small (1e-19 pixels a side) is far below anything an image measures.
MIN_PRROI_AREA = 2.0**-126


# --- compiling the module for a backend ---------------------------------------------------

# Callees before their callers, so that each function is compiled against compiled callees.
_COMPILE_ORDER = (
    "c_round",
    "align_box",
    "sample_coord",
    "bilinear_1d",
    "pool_box",
    "pool_bin",
    "warp_box",
    "box_area",
    "box_intersection",
    "tent_antiderivative",
    "tent_integral",
    "tent",
    "tent_support",
    "prroi_box",
    "prroi_area",
)


def compile_all(jit) -> types.SimpleNamespace:
    """Every function above compiled with ``jit`` (``numba.njit(...)`` or
    ``numba.cuda.jit(device=True)``), as attributes of a namespace.

    A compiled kernel can only call compiled code, but these functions call each other by
    their plain-Python global names (``pool_box`` calls ``c_round``): each is compiled from a
    copy of its code whose globals name the compiled versions instead.
    """
    compiled: dict = {}
    for name in _COMPILE_ORDER:
        fn = globals()[name]
        copy = types.FunctionType(fn.__code__, {**fn.__globals__, **compiled}, name)
        compiled[name] = jit(copy)
    return types.SimpleNamespace(**compiled)
