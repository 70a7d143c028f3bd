"""The backend interface: the functions every backend module has, typed.

Each backend (:data:`BACKENDS`: ``"python"``, ``"numpy"``, ``"numba"``, ``"cuda"``; the names
are the modules' names under :mod:`refimpl.ops`) is a module with exactly these functions on
NumPy arrays, with the same signatures (a test checks them with :func:`inspect.signature`).
Module objects satisfy :class:`Backend` structurally (PEP 544), so ``get_backend("numba")``
is typed, and ``refimpl.ops.numba.roi_align_forward`` can be called directly.

Shapes: ``x [N, C, H, W]`` float32 or float64; ``rois [K, 5]`` rows ``(batch_index, x1, y1,
x2, y2)`` in image coordinates (times ``spatial_scale``: feature coordinates); pooled arrays
``[K, C, PH, PW]`` in x's dtype; ``output_size`` an int or ``(PH, PW)``. Semantics: the python
backend's loops and ``docs/spec/roi-ops.md``. Every function validates its arguments
(:mod:`refimpl.ops.validate`) before any kernel runs.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from types import ModuleType
from typing import Literal, Protocol, cast

import numpy as np

OutputSize = int | tuple[int, int]
PoolMode = Literal["avg", "max"]


class Backend(Protocol):
    """The RoI operators, NMS and box IoU of one backend, on NumPy arrays."""

    def roi_align_forward(
        self,
        x: np.ndarray,
        rois: np.ndarray,
        output_size: OutputSize,
        spatial_scale: float = 1.0,
        sampling_ratio: int = -1,
        aligned: bool = False,
        pool_mode: PoolMode = "avg",
    ) -> np.ndarray:
        """RoIAlign (Mask R-CNN sec. 3): the average (or max) of a regular grid of bilinear
        samples in each bin, no quantization; ``sampling_ratio <= 0``: ``ceil(roi / bins)``
        samples per axis; ``aligned``: the half-pixel offset."""
        ...

    def roi_align_backward(
        self,
        x: np.ndarray,
        rois: np.ndarray,
        grad_output: np.ndarray,
        output_size: OutputSize,
        spatial_scale: float = 1.0,
        sampling_ratio: int = -1,
        aligned: bool = False,
        pool_mode: PoolMode = "avg",
    ) -> np.ndarray:
        """RoIAlign's gradient to ``x``: each sample's share of its bin's gradient, times its
        bilinear weights, on the four pixels it read (max: the winning sample only)."""
        ...

    def roi_pool_forward(
        self, x: np.ndarray, rois: np.ndarray, output_size: OutputSize, spatial_scale: float = 1.0
    ) -> np.ndarray:
        """RoIPool (Fast R-CNN sec. 2.1): the box and its bins quantized to pixels, the max
        of each bin (an empty bin gives 0)."""
        ...

    def roi_pool_backward(
        self,
        x: np.ndarray,
        rois: np.ndarray,
        grad_output: np.ndarray,
        output_size: OutputSize,
        spatial_scale: float = 1.0,
    ) -> np.ndarray:
        """RoIPool's gradient to ``x`` (Fast R-CNN eq. 4): each bin's gradient to its first
        maximum, the argmax recomputed."""
        ...

    def roi_pool_forward_with_argmax(
        self, x: np.ndarray, rois: np.ndarray, output_size: OutputSize, spatial_scale: float = 1.0
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(y, argmax)``: :meth:`roi_pool_forward` and, int64 ``[K, C, PH, PW]``, each bin's
        first maximum as a flat index ``row * W + col`` into its image plane (-1: no winner),
        what a framework saves for the backward (torchvision's RoIPool does)."""
        ...

    def roi_pool_backward_from_argmax(
        self,
        x: np.ndarray,
        rois: np.ndarray,
        grad_output: np.ndarray,
        argmax: np.ndarray,
        output_size: OutputSize,
        spatial_scale: float = 1.0,
    ) -> np.ndarray:
        """RoIPool's gradient to ``x`` through the forward's ``argmax`` (range-checked); ``x``
        gives only the shape and dtype."""
        ...

    def roi_warp_forward(
        self,
        x: np.ndarray,
        rois: np.ndarray,
        output_size: OutputSize,
        spatial_scale: float = 1.0,
        sampling_ratio: int = -1,
        pool_mode: PoolMode = "max",
    ) -> np.ndarray:
        """RoIWarp (Mask R-CNN Table 2c): the box quantized once to integer feature
        coordinates (C rounding, as RoIPool), then RoIAlign of it at scale 1, unaligned."""
        ...

    def roi_warp_backward(
        self,
        x: np.ndarray,
        rois: np.ndarray,
        grad_output: np.ndarray,
        output_size: OutputSize,
        spatial_scale: float = 1.0,
        sampling_ratio: int = -1,
        pool_mode: PoolMode = "max",
    ) -> np.ndarray:
        """RoIWarp's gradient to ``x`` (RoIAlign's, for the quantized box)."""
        ...

    def prroi_pool_forward(
        self,
        x: np.ndarray,
        rois: np.ndarray,
        output_size: OutputSize,
        spatial_scale: float = 1.0,
        aligned: bool = False,
    ) -> np.ndarray:
        """Precise RoI Pooling (IoU-Net, Jiang et al. 2018, sec. 3.3): the exact integral of
        the bilinearly interpolated map over each bin, divided by the bin's area."""
        ...

    def prroi_pool_backward(
        self,
        x: np.ndarray,
        rois: np.ndarray,
        grad_output: np.ndarray,
        output_size: OutputSize,
        spatial_scale: float = 1.0,
        aligned: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(grad_x, grad_rois)``: PrRoIPool's gradients to the input and to the box (IoU-Net
        sec. 3.3, eq. 9-10: Leibniz's rule per bin edge); ``grad_rois[:, 0]`` is 0."""
        ...

    def box_iou(self, boxes1: np.ndarray, boxes2: np.ndarray) -> np.ndarray:
        """IoU of every pair of boxes ``[N, 4] x [M, 4] -> [N, M]`` (x1, y1, x2, y2; area
        without "+1"; 0 / 0 = NaN, as torchvision)."""
        ...

    def nms(self, boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
        """Greedy non-maximum suppression (Fast R-CNN's detector; torchvision ``nms``): int64
        indices of the kept boxes by decreasing score (stable), a box suppressed by a kept
        one when their IoU is strictly greater than ``iou_threshold``."""
        ...


# The functions of the protocol, in its order.
BACKEND_FUNCTIONS: tuple[str, ...] = tuple(
    name for name, value in vars(Backend).items() if callable(value) and not name.startswith("_")
)

BACKEND_MODULES = {
    "python": "refimpl.ops.python",  # plain loops: the definition
    "numpy": "refimpl.ops.numpy",  # vectorized NumPy
    "numba": "refimpl.ops.numba",  # numba njit/prange CPU kernels, one file per op
    "cuda": "refimpl.ops.cuda",  # numba-cuda kernels, one file per op
}


class _Backends(Mapping[str, ModuleType]):
    """A read-only name -> module mapping that imports each backend when first asked for (so
    that e.g. the CUDA simulator can be chosen before numba is imported, and a learner
    without numba can still use ``"python"``)."""

    def __getitem__(self, name: str) -> ModuleType:
        if name not in BACKEND_MODULES:
            raise KeyError(f"unknown backend {name!r}; choose from {sorted(BACKEND_MODULES)}")
        return importlib.import_module(BACKEND_MODULES[name])

    def __iter__(self) -> Iterator[str]:
        return iter(BACKEND_MODULES)

    def __len__(self) -> int:
        return len(BACKEND_MODULES)


BACKENDS: Mapping[str, ModuleType] = _Backends()


def get_backend(name: str) -> Backend:
    """The backend called ``name`` (imported on first use), typed as :class:`Backend`."""
    return cast(Backend, BACKENDS[name])
