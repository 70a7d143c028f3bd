"""The operators' CPU kernels: the ``"numba"`` backend's NumPy functions on zero-copy NumPy
views of the tensors.

Each helper takes the backend function to run (``cpu_backend().roi_warp_forward``, ...) and
the operator's own parameters after the pooled size, in the backend interface's order
(refimpl.ops's table), so that one helper serves every RoI operator. float16/bfloat16 are
computed in float32 and cast back; the result is a new tensor (the backends allocate it).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from types import ModuleType

import numpy as np
import torch
from torch import Tensor

from .checks import (
    NUMPY_DTYPES,
    check_argmax,
    check_float_tensor,
    check_pooled_sizes,
    check_roi_tensors,
    check_same_device,
    compute_dtype,
)

# The backend the CPU kernels run: "numba" (shipped). Set it to "python" (the definition) or
# "numpy" to debug a kernel against; without numba the kernels fall back to "python".
CPU_BACKEND = "numba"


@functools.cache
def cpu_backend() -> ModuleType:
    """The CPU backend module, imported (and its kernels compiled) when a kernel first runs,
    not when the operators are registered; cached, so a failed import is not retried."""
    from refimpl.ops import BACKENDS

    try:
        return BACKENDS[CPU_BACKEND]
    except ImportError as err:
        warnings.warn(
            f"refimpl.ops: the {CPU_BACKEND!r} backend cannot be imported ({err}); "
            "the CPU kernels fall back to the (slow) 'python' backend",
            RuntimeWarning,
            stacklevel=4,
        )
        return BACKENDS["python"]


def as_numpy(t: Tensor, dtype: torch.dtype) -> np.ndarray:
    # detach: .numpy() refuses tensors that require grad; .to/.contiguous are no-ops (no copy)
    # when the tensor already has the dtype and layout.
    return t.detach().to(dtype).contiguous().numpy()


def _shape_only(shape: tuple[int, ...], dtype: torch.dtype) -> np.ndarray:
    # The average modes and RoIPool's scatter never read the input's values, only its shape
    # (which the NumPy interface takes from x). A large np.zeros is calloc'ed: no fill.
    return np.zeros(tuple(shape), NUMPY_DTYPES[dtype])


def empty_output(input: Tensor, rois: Tensor, pooled: tuple[int, int]) -> Tensor:
    """``[K, C, PH, PW]`` with nothing to compute (K = 0; any N, as torchvision)."""
    return input.new_zeros((rois.shape[0], input.shape[1], *pooled))


def roi_forward(
    fn: Callable[..., np.ndarray],
    input: Tensor,
    rois: Tensor,
    pooled: tuple[int, int],
    *params,
) -> Tensor:
    """``fn(x, rois, pooled, *params)``: a RoI operator's output."""
    check_roi_tensors(input, rois)
    check_pooled_sizes(pooled)
    if rois.shape[0] == 0:
        return empty_output(input, rois, pooled)
    dtype = compute_dtype(input.dtype)
    y = fn(as_numpy(input, dtype), as_numpy(rois, dtype), pooled, *params)
    return torch.from_numpy(y).to(input.dtype)


def roi_backward(
    fn: Callable[..., np.ndarray],
    grad: Tensor,
    input: Tensor | None,
    rois: Tensor,
    input_shape: tuple[int, int, int, int],
    pooled: tuple[int, int],
    *params,
) -> Tensor:
    """``fn(x, rois, grad, pooled, *params)``: the input gradient; ``input`` None where the
    operator's backward needs only its shape (the average modes)."""
    check_float_tensor("grad", grad, ndim=4)
    check_same_device("grad", grad, {"input": input, "rois": rois})
    check_pooled_sizes(pooled)
    dtype = compute_dtype(grad.dtype)
    if rois.shape[0] == 0:
        return grad.new_zeros(input_shape)
    x = _shape_only(input_shape, dtype) if input is None else as_numpy(input, dtype)
    grad_x = fn(x, as_numpy(rois, dtype), as_numpy(grad, dtype), pooled, *params)
    return torch.from_numpy(grad_x).to(grad.dtype)


def roi_pool_forward(
    input: Tensor, rois: Tensor, pooled: tuple[int, int], spatial_scale: float
) -> tuple[Tensor, Tensor]:
    """RoIPool: ``(output, argmax)``, argmax int64 (flat plane index, -1: an empty bin)."""
    check_roi_tensors(input, rois)
    check_pooled_sizes(pooled)
    if rois.shape[0] == 0:
        y = empty_output(input, rois, pooled)
        return y, torch.full(y.shape, -1, dtype=torch.int64)
    dtype = compute_dtype(input.dtype)
    y, argmax = cpu_backend().roi_pool_forward_with_argmax(
        as_numpy(input, dtype), as_numpy(rois, dtype), pooled, spatial_scale
    )
    return torch.from_numpy(y).to(input.dtype), torch.from_numpy(argmax)


def roi_pool_backward(
    grad: Tensor,
    rois: Tensor,
    argmax: Tensor,
    input_shape: tuple[int, int, int, int],
    pooled: tuple[int, int],
    spatial_scale: float,
) -> Tensor:
    """RoIPool's input gradient: a scatter through the forward's argmax (the backend checks
    its range while it scatters)."""
    check_float_tensor("grad", grad, ndim=4)
    check_argmax(argmax, grad)
    check_same_device("grad", grad, {"rois": rois})
    check_pooled_sizes(pooled)
    if rois.shape[0] == 0:
        return grad.new_zeros(input_shape)
    dtype = compute_dtype(grad.dtype)
    grad_x = cpu_backend().roi_pool_backward_from_argmax(
        _shape_only(input_shape, dtype),
        as_numpy(rois, dtype),
        as_numpy(grad, dtype),
        argmax.detach().contiguous().numpy(),
        pooled,
        spatial_scale,
    )
    return torch.from_numpy(grad_x).to(grad.dtype)


def prroi_pool_backward(
    grad: Tensor, input: Tensor, rois: Tensor, pooled: tuple[int, int], *params
) -> tuple[Tensor, Tensor]:
    """PrRoIPool's two gradients: ``(grad_input, grad_rois)`` in grad's and rois' dtypes."""
    check_float_tensor("grad", grad, ndim=4)
    check_roi_tensors(input, rois)
    check_same_device("grad", grad, {"input": input, "rois": rois})
    check_pooled_sizes(pooled)
    if rois.shape[0] == 0:
        return grad.new_zeros(input.shape), torch.zeros_like(rois)
    dtype = compute_dtype(grad.dtype)
    grad_x, grad_rois = cpu_backend().prroi_pool_backward(
        as_numpy(input, dtype), as_numpy(rois, dtype), as_numpy(grad, dtype), pooled, *params
    )
    return torch.from_numpy(grad_x).to(grad.dtype), torch.from_numpy(grad_rois).to(rois.dtype)
