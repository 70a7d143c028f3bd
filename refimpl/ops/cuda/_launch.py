"""The host side of every launch: grid sizes, and the checks a launch can afford.

A launch function takes *device* arrays (numba device arrays, or anything with
``__cuda_array_interface__`` such as a torch CUDA tensor) and checks only what is cheap on
the host: shapes, dtypes, contiguity, scalar parameters, never the arrays' values. The
caller must have validated the data (finite coordinates, integral batch indices in range,
the sampling grid's size; see :mod:`refimpl.ops.validate`).
"""

from __future__ import annotations

import numpy as np
from numba import cuda

from ..validate import FLOAT_DTYPES, check_layout

THREADS_PER_BLOCK = 256
# A grid-stride loop lets the grid stay small: an H100 holds 132 SMs x 8 resident blocks of
# 256 threads = 1056 blocks; 4096 blocks (about four waves) keeps every SM busy and bounds
# the launch. Tests lower it to exercise the stride.
MAX_BLOCKS = 4096


def launch_size(n: int) -> tuple[int, int]:
    """(blocks, threads) for ``n`` work items in a grid-stride loop.

    Small problems get a smaller block (a warp multiple): the same result, less idle work.
    """
    threads = min(THREADS_PER_BLOCK, 32 * ((n + 31) // 32))
    blocks = min(MAX_BLOCKS, (n + threads - 1) // threads)
    return blocks, threads


def require_device() -> None:
    """The NumPy interface needs a GPU or the simulator; a launch on device arrays has one."""
    if not cuda.is_available():
        raise RuntimeError(
            "the 'cuda' backend needs a CUDA GPU, or the CUDA simulator: set "
            "NUMBA_ENABLE_CUDASIM=1 in the environment before numba is imported"
        )


def device(a, name: str):
    """``a`` as a numba device array: numba's own pass through; anything else exposing
    ``__cuda_array_interface__`` (a torch CUDA tensor) is wrapped without a copy."""
    if hasattr(a, "copy_to_host") and hasattr(a, "shape") and hasattr(a, "dtype"):
        return a  # a numba device array (or the simulator's stand-in)
    if hasattr(a, "__cuda_array_interface__") and hasattr(cuda, "as_cuda_array"):
        return cuda.as_cuda_array(a)
    raise TypeError(
        f"{name} must be a device array (numba device array or an object with "
        f"__cuda_array_interface__), got {type(a).__name__}"
    )


def check_shape(name: str, a, shape: tuple) -> None:
    if tuple(a.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(a.shape)}")


def check_dtype(name: str, a, dtype) -> None:
    if np.dtype(a.dtype) != np.dtype(dtype):
        raise TypeError(f"{name} must have dtype {np.dtype(dtype)}, got {np.dtype(a.dtype)}")


def check_contiguous(name: str, a) -> None:
    # Outputs are written element by element and accumulated atomically: overlapping
    # memory (e.g. a broadcast view) would race, so insist on a plain C-ordered buffer.
    if not a.is_c_contiguous():
        raise ValueError(f"{name} must be C-contiguous")


def check_sampling_ratio(sampling_ratio) -> int:
    if isinstance(sampling_ratio, bool) or not isinstance(sampling_ratio, (int, np.integer)):
        raise TypeError(f"sampling_ratio must be an int, got {type(sampling_ratio).__name__}")
    return int(sampling_ratio)


def roi_arrays(x, rois, out, out_name: str, layout: str = "nchw", x_name: str = "x"):
    """Device views of x, rois and the pooled array; their shapes and dtypes agree. "nchw":
    x [N, C, H, W], out [K, C, PH, PW]; "channels_last": x [N, H, W, C], out [K, PH, PW, C].
    ``x_name``: the name errors give x (``grad_x`` when it stands in for x)."""
    channels_last = check_layout(layout) == "channels_last"
    x = device(x, x_name)
    rois = device(rois, "rois")
    out = device(out, out_name)
    x_dims, out_dims, axis = ("[N, C, H, W]", "C, PH, PW", 1)
    if channels_last:
        x_dims, out_dims, axis = ("[N, H, W, C]", "PH, PW, C", 3)
    if len(x.shape) != 4:
        raise ValueError(f"{x_name} must have shape {x_dims}, got {tuple(x.shape)}")
    if np.dtype(x.dtype) not in FLOAT_DTYPES:
        raise TypeError(f"{x_name} must have dtype float32 or float64, got {np.dtype(x.dtype)}")
    if len(rois.shape) != 2 or rois.shape[1] != 5:
        raise ValueError(f"rois must have shape [K, 5], got {tuple(rois.shape)}")
    check_dtype("rois", rois, x.dtype)
    if len(out.shape) != 4 or out.shape[0] != rois.shape[0] or out.shape[axis] != x.shape[axis]:
        dims = out_dims.replace("C", f"C={x.shape[axis]}")
        raise ValueError(
            f"{out_name} must have shape [K={rois.shape[0]}, {dims}], got {tuple(out.shape)}"
        )
    check_dtype(out_name, out, x.dtype)
    return x, rois, out


def grad_x_array(grad_x, x):
    """grad_x as a device array of x's shape and dtype, C-contiguous (it is accumulated into)."""
    grad_x = device(grad_x, "grad_x")
    check_shape("grad_x", grad_x, x.shape)
    check_dtype("grad_x", grad_x, x.dtype)
    check_contiguous("grad_x", grad_x)
    return grad_x
