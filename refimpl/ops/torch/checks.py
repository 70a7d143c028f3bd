"""The torch-level argument checks: types, ranks, dtypes and devices of tensors, and the
Python types of the scalar arguments. Content (finite boxes, batch indices in range) and
the size bounds are refimpl.ops.validate's, shared with the NumPy backends.

Eager only: the public functions call these outside ``torch.jit.script`` (TorchScript's own
types check the arguments there), and the operators' kernels call them always. Each error
is both the ValueError/TypeError we promise and what torchvision raises for the same
mistake (refimpl.ops.errors).
"""

from __future__ import annotations

import numbers

import numpy as np
import torch
from torch import Tensor

from ..errors import TypeRuntimeError, ValueRuntimeError
from ..validate import check_output_size, check_pool_mode, check_spatial_scale
from ..validate import check_sampling_ratio as _check_sampling_ratio

# 16-bit floats are computed in float32 and cast back: the NumPy/Numba backends only have
# float32 and float64.
NUMPY_DTYPES = {torch.float32: np.dtype(np.float32), torch.float64: np.dtype(np.float64)}


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the arithmetic: the tensor's, or float32 for the 16-bit floats.
    (TorchScript-compatible: the public functions call it when scripted.)"""
    if dtype == torch.float16 or dtype == torch.bfloat16:
        return torch.float32
    return dtype


def check_float_tensor(name: str, t: object, ndim: int | None = None) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeRuntimeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeRuntimeError(
            f"{name} must have a floating dtype (float16, bfloat16, float32, float64), "
            f"got {t.dtype}"
        )
    if ndim is not None and t.dim() != ndim:
        raise ValueRuntimeError(f"{name} must have {ndim} dimensions, got shape {list(t.shape)}")
    return t


def check_same_device(reference: str, ref: Tensor, others: dict[str, Tensor | None]) -> None:
    """A CPU tensor next to a CUDA one would dispatch to the CUDA kernel, which would then
    read host memory as device memory: refuse clearly, naming the argument."""
    for name, t in others.items():
        if t is not None and t.device != ref.device:
            raise ValueRuntimeError(
                f"{name} must be on the same device as {reference} ({ref.device}), got {t.device}"
            )


def check_roi_tensors(input: Tensor, rois: Tensor) -> None:
    """What every RoI operator needs of its two tensors, as torchvision's kernels check."""
    check_float_tensor("input", input, ndim=4)
    check_float_tensor("rois", rois, ndim=2)
    if rois.shape[1] != 5:
        raise ValueRuntimeError(f"rois must have shape [K, 5], got {list(rois.shape)}")
    check_same_device("input", input, {"rois": rois})


def check_pooled_sizes(pooled: tuple[int, int]) -> None:
    """The size bounds of refimpl.ops.validate, before an operator allocates or launches:
    an operator can be called directly, past the public function's checks."""
    check_output_size(pooled)


def check_sampling_ratio(sampling_ratio: object) -> int:
    """An int (torchvision's RuntimeError for another type), at most validate's bound."""
    return _check_sampling_ratio(check_int("sampling_ratio", sampling_ratio))


def check_scale(spatial_scale: object) -> float:
    if isinstance(spatial_scale, bool) or not isinstance(spatial_scale, numbers.Real):
        raise TypeRuntimeError(
            f"spatial_scale must be a real number, got {type(spatial_scale).__name__}"
        )
    return check_spatial_scale(spatial_scale)


def check_roi_params(
    output_size: object,
    spatial_scale: object,
    sampling_ratio: object = -1,
    aligned: object = False,
    pool_mode: object = "avg",
) -> tuple[tuple[int, int], float, int, bool, str]:
    """A public RoI function's scalar arguments, normalized: ``(pooled, spatial_scale,
    sampling_ratio, aligned, pool_mode)`` (the defaults stand for arguments it has not)."""
    return (
        check_output_size(output_size),
        check_scale(spatial_scale),
        check_sampling_ratio(sampling_ratio),
        check_bool("aligned", aligned),
        check_pool_mode(pool_mode),
    )


def check_int(name: str, v: object) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeRuntimeError(f"{name} must be an int, got {type(v).__name__}")
    return int(v)


def check_bool(name: str, v: object) -> bool:
    if not isinstance(v, (bool, np.bool_)):
        raise TypeRuntimeError(f"{name} must be a bool, got {type(v).__name__}")
    return bool(v)


def check_argmax(argmax: object, grad: Tensor) -> Tensor:
    """RoIPool's saved argmax, as its backward receives it (the range is the kernel's)."""
    if not isinstance(argmax, Tensor) or argmax.dtype != torch.int64:
        got = argmax.dtype if isinstance(argmax, Tensor) else type(argmax).__name__
        raise TypeRuntimeError(f"argmax must be an int64 torch.Tensor, got {got}")
    if argmax.shape != grad.shape:
        raise ValueRuntimeError(
            f"argmax must have grad's shape {list(grad.shape)}, got {list(argmax.shape)}"
        )
    check_same_device("grad", grad, {"argmax": argmax})
    return argmax


def fx_leaf(fn, args: tuple) -> object | None:
    """Under ``torch.fx.symbolic_trace``, a call whose arguments hold a Proxy (directly or in
    a list): the one graph node ``fn(*args)``, so that the public functions are leaves when
    called from any traced code (``torch.fx.wrap`` covers only calls from the module that
    wraps them). None otherwise. Eager only: the callers skip it in TorchScript."""
    for a in args:
        for item in a if isinstance(a, (list, tuple)) else (a,):
            if isinstance(item, torch.fx.Proxy):
                return item.tracer.create_proxy("call_function", fn, args, {})
    return None
