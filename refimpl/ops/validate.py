"""Input checks shared by every backend, run once before any kernel.

Numba and CUDA kernels do not bounds-check, so everything a kernel trusts (ranks, shapes,
batch indices, finite coordinates, positive sizes) is established here, with an error that
names the offending argument.
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import numpy as np

POOL_MODES = ("avg", "max")
# The memory layouts of the CUDA kernels: NCHW ([N, C, H, W]) and channels-last ([N, H, W, C]).
LAYOUTS = ("nchw", "channels_last")
FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
# Larger coordinates lose integer precision in float32 and overflow the kernels' int sizes.
MAX_COORD = float(2**24)
# Bounds checked before any allocation. 1024 bins a side is far past any detector's (7, 14,
# 28) and keeps PH * PW * 8 bytes per RoI and channel at 8 MiB; 1024 samples a side (a
# million per bin) is far past a pixel-accurate grid, and keeps every kernel's sample index
# and loop count within int32 (2**63 used to pool to zeros, 2**32 + 1 to hang).
MAX_OUTPUT_SIZE = 1024
MAX_SAMPLING_RATIO = 1024


class RoIArgs(NamedTuple):
    """Validated, normalized arguments of a RoI operator."""

    x: np.ndarray  # [N, C, H, W], C-contiguous, float32 or float64
    rois: np.ndarray  # [K, 5] in x's dtype, C-contiguous; column 0 holds integral values
    batch: np.ndarray  # [K] int64: rois[:, 0] as indices, all in [0, N)
    pooled_h: int
    pooled_w: int
    spatial_scale: float  # a Python float; backends cast it to x's dtype
    sampling_ratio: int
    aligned: bool
    pool_mode: str
    grad_output: np.ndarray | None  # [K, C, PH, PW] in x's dtype, when checking a backward

    @property
    def float_type(self) -> type:
        """The NumPy scalar type of the arithmetic (torchvision computes in the input dtype)."""
        return self.x.dtype.type


def _check_float_array(name: str, a, ndim: int | None = None) -> np.ndarray:
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")
    if a.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must have dtype float32 or float64, got {a.dtype}")
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {a.shape}")
    return a


def _check_int(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    return int(v)


def check_output_size(output_size) -> tuple[int, int]:
    """`output_size` is an int or a pair of ints, each in ``[1, MAX_OUTPUT_SIZE]``."""
    if isinstance(output_size, (tuple, list)):
        if len(output_size) != 2:
            raise ValueError(f"output_size must be an int or a pair, got {output_size!r}")
        ph, pw = (_check_int("output_size", v) for v in output_size)
    else:
        ph = pw = _check_int("output_size", output_size)
    if ph <= 0 or pw <= 0:
        raise ValueError(f"output_size must be positive, got {output_size!r}")
    if ph > MAX_OUTPUT_SIZE or pw > MAX_OUTPUT_SIZE:
        raise ValueError(
            f"output_size must be at most {MAX_OUTPUT_SIZE} bins a side, got {output_size!r}"
        )
    return ph, pw


def check_sampling_ratio(sampling_ratio) -> int:
    """`sampling_ratio` is an int, at most ``MAX_SAMPLING_RATIO`` (``<= 0``: adaptive)."""
    sampling_ratio = _check_int("sampling_ratio", sampling_ratio)
    if sampling_ratio > MAX_SAMPLING_RATIO:
        raise ValueError(
            f"sampling_ratio must be at most {MAX_SAMPLING_RATIO} samples a side "
            f"(<= 0: adaptive), got {sampling_ratio}"
        )
    return sampling_ratio


def check_spatial_scale(spatial_scale) -> float:
    if isinstance(spatial_scale, bool) or not isinstance(spatial_scale, numbers.Real):
        raise TypeError(f"spatial_scale must be a real number, got {type(spatial_scale).__name__}")
    s = float(spatial_scale)
    if not math.isfinite(s) or s <= 0:
        raise ValueError(f"spatial_scale must be positive and finite, got {spatial_scale!r}")
    return s


def check_pool_mode(pool_mode) -> str:
    if pool_mode not in POOL_MODES:
        raise ValueError(f"pool_mode must be one of {POOL_MODES}, got {pool_mode!r}")
    return pool_mode


def check_layout(layout) -> str:
    """``layout`` is "nchw" or "channels_last" (the CUDA kernels' two memory layouts)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    return layout


def _check_finite(name: str, a: np.ndarray) -> None:
    if a.size and not np.isfinite(a).all():
        raise ValueError(f"{name} must hold finite values (found NaN or infinity)")


def check_rois(
    rois, n_images: int, dtype: np.dtype, spatial_scale: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """`rois` is [K, 5]: (batch_index, x1, y1, x2, y2), finite, integral batch indices."""
    _check_float_array("rois", rois)
    if rois.ndim != 2 or rois.shape[1] != 5:
        raise ValueError(f"rois must have shape [K, 5], got {rois.shape}")
    _check_finite("rois", rois)
    index = rois[:, 0]
    if (index != np.floor(index)).any():
        raise ValueError("rois[:, 0] (the batch index) must hold integers")
    if index.size and (index.min() < 0 or index.max() >= n_images):
        raise ValueError(
            f"rois[:, 0] (the batch index) must lie in [0, {n_images}), "
            f"got values in [{index.min():g}, {index.max():g}]"
        )
    if np.abs(rois[:, 1:]).max(initial=0.0) * spatial_scale > MAX_COORD:
        raise ValueError(
            f"rois coordinates times spatial_scale must lie within +-{MAX_COORD:g} feature pixels"
        )
    return np.ascontiguousarray(rois, dtype=dtype), index.astype(np.int64)


def check_roi_args(
    x,
    rois,
    output_size,
    spatial_scale=1.0,
    sampling_ratio=-1,
    aligned=False,
    pool_mode="avg",
    grad_output=None,
) -> RoIArgs:
    """Validate the arguments of roi_align / roi_pool / roi_warp (forward or backward)."""
    _check_float_array("x", x, ndim=4)
    if x.shape[2] == 0 or x.shape[3] == 0:
        raise ValueError(f"x must have a non-empty spatial extent, got shape {x.shape}")
    # An empty batch (N = 0) is valid, as in torchvision: it can only come with no RoIs (any
    # batch index is out of range) and gives an empty [0, C, PH, PW] output.
    x = np.ascontiguousarray(x)
    scale = check_spatial_scale(spatial_scale)
    rois, batch = check_rois(rois, x.shape[0], x.dtype, scale)
    ph, pw = check_output_size(output_size)
    sampling_ratio = check_sampling_ratio(sampling_ratio)
    if not isinstance(aligned, (bool, np.bool_)):
        raise TypeError(f"aligned must be a bool, got {type(aligned).__name__}")
    pool_mode = check_pool_mode(pool_mode)
    if grad_output is not None:
        _check_float_array("grad_output", grad_output)
        expected = (rois.shape[0], x.shape[1], ph, pw)
        if grad_output.shape != expected:
            raise ValueError(f"grad_output must have shape {expected}, got {grad_output.shape}")
        _check_finite("grad_output", grad_output)
        grad_output = np.ascontiguousarray(grad_output, dtype=x.dtype)
    return RoIArgs(
        x, rois, batch, ph, pw, scale, sampling_ratio, bool(aligned), pool_mode, grad_output
    )


def check_argmax(argmax, shape: tuple, plane_size: int, check_range: bool = True) -> np.ndarray:
    """RoIPool's saved argmax: int64 of the gradient's ``shape``, flat indices ``y * W + x``
    into an image plane, in ``[-1, plane_size)`` (-1: an empty bin). Checked before a
    backward scatters through it: an index outside the plane would write outside grad_x.
    ``check_range=False`` leaves the range to a kernel that skips and counts bad indices
    while it scatters (then raises :func:`argmax_range_error`): one pass instead of three."""
    if not isinstance(argmax, np.ndarray) or argmax.shape != tuple(shape):
        raise ValueError(f"argmax must be an array of shape {tuple(shape)}")
    if argmax.dtype != np.int64:
        raise TypeError(f"argmax must have dtype int64, got {argmax.dtype}")
    if check_range and argmax.size and (argmax.min() < -1 or argmax.max() >= plane_size):
        raise argmax_range_error(plane_size)
    return argmax


def argmax_range_error(plane_size: int) -> ValueError:
    return ValueError(f"argmax must lie in [-1, {plane_size})")


def check_boxes(name: str, boxes) -> np.ndarray:
    """`boxes` is [N, 4] (x1, y1, x2, y2), floating, finite."""
    _check_float_array(name, boxes)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{name} must have shape [N, 4], got {boxes.shape}")
    _check_finite(name, boxes)
    return np.ascontiguousarray(boxes)


def check_nms_args(boxes, scores, iou_threshold) -> tuple[np.ndarray, np.ndarray, float]:
    boxes = check_boxes("boxes", boxes)
    _check_float_array("scores", scores, ndim=1)
    if scores.shape[0] != boxes.shape[0]:
        raise ValueError(
            f"scores must have one entry per box: {scores.shape[0]} scores, {boxes.shape[0]} boxes"
        )
    _check_finite("scores", scores)
    if isinstance(iou_threshold, bool) or not isinstance(iou_threshold, numbers.Real):
        raise TypeError(f"iou_threshold must be a real number, got {type(iou_threshold).__name__}")
    if not math.isfinite(float(iou_threshold)):
        raise ValueError(f"iou_threshold must be finite, got {iou_threshold!r}")
    return boxes, np.ascontiguousarray(scores, dtype=boxes.dtype), float(iou_threshold)
