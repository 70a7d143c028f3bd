"""The RoI operators as PyTorch operators: ``torch.ops.refimpl.*``, drop-in for torchvision.

Each operator is a ``torch.library.custom_op`` in the ``refimpl`` namespace, so that autograd,
``torch.compile(fullgraph=True)`` and ``torch.export`` treat it like a built-in:

==============================  ==============================================================
``refimpl::roi_align``          RoIAlign (Mask R-CNN sec. 3), plus our ``pool_mode`` "max"
``refimpl::roi_pool``           RoIPool (Fast R-CNN sec. 2.1)
``refimpl::roi_warp``           RoIWarp as the Mask R-CNN ablation uses it (Table 2c)
``refimpl::prroi_pool``         Precise RoI Pooling (IoU-Net, Jiang et al. 2018, sec. 3.3)
``refimpl::*_backward``         their gradients, operators too so that they trace (input
                                only, except PrRoIPool's: input and boxes)
``refimpl::nms``                greedy non-maximum suppression (int64 indices, by score)
``refimpl::box_iou``            IoU of every pair of boxes
==============================  ==============================================================

For each operator there is a CPU kernel (the ``"numba"`` backend's NumPy functions run on
zero-copy NumPy views of the tensors), a CUDA kernel (the ``"cuda"`` backend's numba-cuda
kernels launched on the tensors' memory on torch's current stream), a fake kernel (shapes and
dtypes only, for tracing) and, for the RoI operators, an autograd formula. The public
functions below (``roi_align``, ``roi_pool``, ...) have torchvision's signatures; they check
the arguments, convert a list of boxes to the ``[K, 5]`` RoI format and call the operators.
The exact semantics are in ``docs/spec/roi-ops.md``.

dtypes: float32 and float64 are computed in that dtype, as torchvision does. float16 and
bfloat16 are computed in float32 and the result is cast back (boxes are never rounded to
16 bits: a coordinate such as 800.3 has no float16 value closer than 800.5).
"""

from __future__ import annotations

import contextlib
import functools
import numbers
import warnings
from collections.abc import Sequence
from types import ModuleType

import numpy as np
import torch
from torch import Tensor

from .validate import check_output_size, check_pool_mode, check_rois, check_spatial_scale

__all__ = [
    "batched_nms",
    "box_iou",
    "convert_boxes_to_roi_format",
    "nms",
    "prroi_pool",
    "roi_align",
    "roi_pool",
    "roi_warp",
]

# The one switch for the CPU kernels' backend, read at every call (set it to "python", the
# definition, to debug a kernel against; or "numpy"). "numba" is the shipped choice; when it
# cannot be imported (no numba), the CPU kernels fall back to "python" with a warning.
_CPU_BACKEND = "numba"

# Computed in float32 and cast back: the NumPy/Numba backends only have float32 and float64.
_UPCAST_DTYPES = (torch.float16, torch.bfloat16)
_NUMPY_DTYPES = {torch.float32: np.dtype(np.float32), torch.float64: np.dtype(np.float64)}


@functools.cache
def _backend(name: str) -> ModuleType:
    # Imported here, not at module level: refimpl.ops imports this module, and a backend is
    # only imported (and compiled) when an operator first runs. Cached so that a failed
    # import is not retried at every call.
    from refimpl.ops import BACKENDS

    try:
        return BACKENDS[name]
    except ImportError as err:
        warnings.warn(
            f"refimpl.ops: the {name!r} backend cannot be imported ({err}); "
            "the CPU kernels fall back to the (slow) 'python' backend",
            RuntimeWarning,
            stacklevel=4,
        )
        return BACKENDS["python"]


def _cpu_backend() -> ModuleType:
    return _backend(_CPU_BACKEND)


# --- argument checks (torch level: names, ranks, dtypes, devices) ---------------------------


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in _UPCAST_DTYPES else dtype


def _check_float_tensor(name: str, t, ndim: int | None = None) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(
            f"{name} must have a floating dtype (float16, bfloat16, float32, float64), "
            f"got {t.dtype}"
        )
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")


def _check_same_device(reference: str, ref: Tensor, **others: Tensor | None) -> None:
    # A CPU tensor next to a CUDA one would dispatch to the CUDA kernel, which would then read
    # host memory as device memory: refuse clearly, naming the argument.
    for name, t in others.items():
        if t is not None and t.device != ref.device:
            raise ValueError(
                f"{name} must be on the same device as {reference} ({ref.device}), got {t.device}"
            )


def _check_roi_op(input: Tensor, rois: Tensor) -> None:
    """What every RoI operator needs of its tensors; content (finite values, batch indices in
    range) is checked by refimpl.ops.validate before a kernel runs."""
    _check_float_tensor("input", input, ndim=4)
    _check_float_tensor("rois", rois, ndim=2)
    if rois.shape[1] != 5:
        raise ValueError(f"rois must have shape [K, 5], got {tuple(rois.shape)}")
    _check_same_device("input", input, rois=rois)


def convert_boxes_to_roi_format(boxes: Sequence[Tensor]) -> Tensor:
    """A list of ``Tensor[L_i, 4]`` (one per image) -> ``Tensor[K, 5]`` with the list position
    as the batch index in column 0, as torchvision's ``convert_boxes_to_roi_format``."""
    if len(boxes) == 0:
        return torch.zeros((0, 5))
    rois = []
    for i, b in enumerate(boxes):
        _check_float_tensor(f"boxes[{i}]", b, ndim=2)
        if b.shape[1] != 4:
            raise ValueError(f"boxes[{i}] must have shape [L, 4], got {tuple(b.shape)}")
        _check_same_device("boxes[0]", boxes[0], **{f"boxes[{i}]": b})
        rois.append(torch.cat([torch.full_like(b[:, :1], i), b], dim=1))
    dtype = functools.reduce(torch.promote_types, [b.dtype for b in boxes])
    return torch.cat([r.to(dtype) for r in rois], dim=0)


def _as_rois(boxes, input: Tensor) -> Tensor:
    """``boxes`` as a ``[K, 5]`` RoI tensor on input's device, in input's compute dtype."""
    _check_float_tensor("input", input, ndim=4)
    if isinstance(boxes, (list, tuple)):
        if len(boxes) == 0:
            return input.new_zeros((0, 5), dtype=_compute_dtype(input.dtype))
        for i, b in enumerate(boxes):
            if isinstance(b, Tensor):
                _check_same_device("input", input, **{f"boxes[{i}]": b})
        rois = convert_boxes_to_roi_format(boxes)
    elif isinstance(boxes, Tensor):
        _check_float_tensor("boxes", boxes, ndim=2)
        if boxes.shape[1] != 5:
            raise ValueError(
                f"boxes must be a Tensor[K, 5] or a list of Tensor[L, 4], "
                f"got shape {tuple(boxes.shape)}"
            )
        _check_same_device("input", input, boxes=boxes)
        rois = boxes
    else:
        raise TypeError(
            f"boxes must be a Tensor[K, 5] or a list of Tensor[L, 4], got {type(boxes).__name__}"
        )
    # Coordinates in the arithmetic's dtype: the input's, or float32 for 16-bit inputs.
    return rois.to(_compute_dtype(input.dtype))


def _check_int(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    return int(v)


def _check_bool(name: str, v) -> bool:
    if not isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(v).__name__}")
    return bool(v)


# --- CPU: the NumPy backend on zero-copy views ----------------------------------------------


def _to_numpy(t: Tensor, dtype: torch.dtype) -> np.ndarray:
    # detach: .numpy() refuses tensors that require grad; .to/.contiguous are no-ops (no copy)
    # when the tensor already has the dtype and layout.
    return t.detach().to(dtype).contiguous().numpy()


def _cpu_roi_forward(
    fn: str, input: Tensor, rois: Tensor, output_size: tuple[int, int], *params
) -> Tensor:
    _check_roi_op(input, rois)
    dtype = _compute_dtype(input.dtype)
    y = getattr(_cpu_backend(), fn)(
        _to_numpy(input, dtype), _to_numpy(rois, dtype), output_size, *params
    )
    return torch.from_numpy(y).to(input.dtype)


def _cpu_roi_backward(
    fn: str,
    grad: Tensor,
    input: Tensor | None,
    rois: Tensor,
    input_shape: tuple[int, int, int, int],
    output_size: tuple[int, int],
    *params,
) -> Tensor:
    _check_float_tensor("grad", grad, ndim=4)
    _check_same_device("grad", grad, input=input, rois=rois)
    dtype = _compute_dtype(grad.dtype)
    if input is None:
        # The average modes never read the input's values, only its shape (which the NumPy
        # interface takes from x). A large np.zeros is calloc'ed: lazily zeroed pages, no fill.
        x = np.zeros(tuple(input_shape), _NUMPY_DTYPES[dtype])
    else:
        x = _to_numpy(input, dtype)
    grad_x = getattr(_cpu_backend(), fn)(
        x, _to_numpy(rois, dtype), _to_numpy(grad, dtype), output_size, *params
    )
    return torch.from_numpy(grad_x).to(grad.dtype)


def _cpu_roi_pool_forward(
    input: Tensor, rois: Tensor, output_size: tuple[int, int], spatial_scale
) -> tuple[Tensor, Tensor]:
    """RoIPool on the CPU: ``(output, argmax)``, argmax int64 (flat plane index, -1: empty)."""
    _check_roi_op(input, rois)
    dtype = _compute_dtype(input.dtype)
    y, argmax = _cpu_backend().roi_pool_forward_with_argmax(
        _to_numpy(input, dtype), _to_numpy(rois, dtype), output_size, spatial_scale
    )
    return torch.from_numpy(y).to(input.dtype), torch.from_numpy(argmax)


def _check_argmax_tensor(argmax, grad: Tensor) -> None:
    if not isinstance(argmax, Tensor) or argmax.dtype != torch.int64:
        raise TypeError(
            f"argmax must be an int64 torch.Tensor, got "
            f"{argmax.dtype if isinstance(argmax, Tensor) else type(argmax).__name__}"
        )
    if argmax.shape != grad.shape:
        raise ValueError(
            f"argmax must have grad's shape {tuple(grad.shape)}, got {tuple(argmax.shape)}"
        )
    _check_same_device("grad", grad, argmax=argmax)


def _cpu_roi_pool_backward(
    grad: Tensor,
    rois: Tensor,
    argmax: Tensor,
    input_shape: tuple[int, int, int, int],
    output_size: tuple[int, int],
    spatial_scale,
) -> Tensor:
    """RoIPool's input gradient on the CPU: a scatter through the forward's argmax (its
    range is checked by the backend before any write)."""
    _check_float_tensor("grad", grad, ndim=4)
    _check_argmax_tensor(argmax, grad)
    _check_same_device("grad", grad, rois=rois)
    dtype = _compute_dtype(grad.dtype)
    x = np.zeros(tuple(input_shape), _NUMPY_DTYPES[dtype])  # shape only: calloc'ed, not filled
    grad_x = _cpu_backend().roi_pool_backward_from_argmax(
        x,
        _to_numpy(rois, dtype),
        _to_numpy(grad, dtype),
        argmax.detach().contiguous().numpy(),
        output_size,
        spatial_scale,
    )
    return torch.from_numpy(grad_x).to(grad.dtype)


def _cpu_prroi_backward(
    grad: Tensor, input: Tensor, rois: Tensor, output_size: tuple[int, int], *params
) -> tuple[Tensor, Tensor]:
    """PrRoIPool's two gradients on the CPU: ``(grad_input, grad_rois)``, in grad's and rois'
    dtypes (16-bit: computed in float32)."""
    _check_float_tensor("grad", grad, ndim=4)
    _check_roi_op(input, rois)
    _check_same_device("grad", grad, input=input, rois=rois)
    dtype = _compute_dtype(grad.dtype)
    grad_x, grad_rois = _cpu_backend().prroi_pool_backward(
        _to_numpy(input, dtype),
        _to_numpy(rois, dtype),
        _to_numpy(grad, dtype),
        output_size,
        *params,
    )
    return torch.from_numpy(grad_x).to(grad.dtype), torch.from_numpy(grad_rois).to(rois.dtype)


# --- CUDA: the numba-cuda kernels on torch's memory and stream -------------------------------
#
# numba.cuda is imported only on this path, so that importing this module (and running on a
# machine without CUDA) never touches it. refimpl.ops.cuda's launch functions write into
# arrays that torch allocated, on torch's current stream: ordered with torch's own kernels,
# without copies or host synchronization (except where the host must look at data: the RoI
# validation and NMS's greedy pass).


def _cuda_backend() -> ModuleType:
    from refimpl.ops import BACKENDS

    return BACKENDS["cuda"]


@contextlib.contextmanager
def _numba_cuda(device: torch.device):
    """``(as_array, stream)``: numba views of torch CUDA tensors and torch's current stream
    on ``device``, with ``device`` current for both torch and numba (same primary context)."""
    from numba import cuda

    with torch.cuda.device(device), cuda.gpus[device.index]:
        ptr = torch.cuda.current_stream(device).cuda_stream
        stream = cuda.external_stream(ptr) if ptr else 0  # 0: the legacy default stream

        def as_array(t: Tensor):
            # sync=False: the tensor's producer is torch's current stream, the very stream we
            # launch on, so stream order makes the data ready; sync=True would block the host.
            return cuda.as_cuda_array(t.detach(), sync=False)

        yield as_array, stream


def _cuda_launch(name: str, *args, stream, layout: str = "nchw") -> None:
    """THE adapter to refimpl.ops.cuda's launch API (adjust here, nowhere else).

    Calls ``launch_<name>(*args, stream=stream)``: forwards ``(x, rois, out, *params)``,
    backwards ``(x, rois, grad_out, grad_x, *params)`` with ``grad_x`` zeroed (accumulated
    into), ``box_iou`` ``(boxes1, boxes2, iou)``; ``params`` as the backend interface's.
    ``layout="channels_last"``: ``launch_<name>_nhwc``, the same arguments with x, out,
    grad_out and grad_x as [N, H, W, C] / [K, PH, PW, C].
    """
    suffix = "_nhwc" if layout == "channels_last" else ""
    getattr(_cuda_backend(), f"launch_{name}{suffix}")(*args, stream=stream)


# Which CUDA kernels the RoIAlign / RoIWarp / RoIPool operators launch, read at every call:
# "nchw" (one thread per output element gathering from one channel plane, as torchvision's),
# "channels_last" (threads along the channels of a channels-last copy of the input:
# coalesced reads, writes and atomics; refimpl.ops.cuda's launch_*_nhwc) or "auto" (the
# layout the tensors already have: channels-last for a channels-last input in the forward,
# or a channels-last gradient in the backward; NCHW otherwise), so that no input is copied
# to change its layout. The operators' results are NCHW-contiguous either way: the
# channels-last path converts on the way out (and on the way in, when forced).
# `python -m refimpl bench gpu` times both paths with these conversions included.
CUDA_LAYOUT = "auto"
_CUDA_LAYOUTS = ("auto", "nchw", "channels_last")


def _is_channels_last(t: Tensor | None) -> bool:
    return (
        t is not None
        and t.is_contiguous(memory_format=torch.channels_last)
        and not t.is_contiguous()
    )


def _cuda_layout(fn: str, t: Tensor | None = None) -> str:
    """The kernels' layout for ``fn`` on tensor ``t`` (the input, or the gradient)."""
    if CUDA_LAYOUT not in _CUDA_LAYOUTS:
        raise ValueError(
            f"refimpl.ops.torch_ops.CUDA_LAYOUT must be one of {_CUDA_LAYOUTS}, got {CUDA_LAYOUT!r}"
        )
    if fn.startswith("prroi"):  # PrRoIPool has NCHW kernels only
        return "nchw"
    if CUDA_LAYOUT == "auto":
        return "channels_last" if _is_channels_last(t) else "nchw"
    return CUDA_LAYOUT


def _nhwc(t: Tensor) -> Tensor:
    """A [N, C, H, W] tensor as its [N, H, W, C] view (no copy)."""
    return t.permute(0, 2, 3, 1)


def _kernel_input(t: Tensor, dtype: torch.dtype, layout: str) -> Tensor:
    """A feature map as the kernels of ``layout`` read it fast: NCHW-contiguous, or the
    [N, H, W, C] view of a channels-last copy (no copy when it already is one)."""
    t = t.detach().to(dtype)
    if layout == "channels_last":
        return _nhwc(t.contiguous(memory_format=torch.channels_last))
    return t.contiguous()


def _kernel_view(t: Tensor, layout: str) -> Tensor:
    """A pooled-shaped tensor the kernels read once (grad_output, argmax): channels-last, its
    [K, PH, PW, C] view with any strides; NCHW, contiguous."""
    return _nhwc(t) if layout == "channels_last" else t.contiguous()


def _kernel_buffer(nchw_shape, dtype: torch.dtype, device, layout: str, zero: bool) -> Tensor:
    """An output buffer of NCHW shape ``nchw_shape`` in the kernels' layout; ``zero`` for one
    that is accumulated into with atomic adds."""
    n, c, h, w = nchw_shape
    shape = (n, h, w, c) if layout == "channels_last" else (n, c, h, w)
    return (torch.zeros if zero else torch.empty)(shape, dtype=dtype, device=device)


def _from_kernel(t: Tensor, layout: str) -> Tensor:
    """A kernel's output back as an NCHW-contiguous tensor (a copy from channels-last)."""
    return t.permute(0, 3, 1, 2).contiguous() if layout == "channels_last" else t


def _cuda_validate_rois(input_shape, rois: Tensor, dtype: torch.dtype, spatial_scale) -> None:
    """Validate the RoIs on the host before a kernel trusts them: a NaN coordinate or an
    out-of-range batch index would make it read outside the input. ``[K, 5]`` is small: the
    cost is one copy and one synchronization per call."""
    host = rois.detach().to("cpu", dtype).numpy()
    check_rois(host, input_shape[0], _NUMPY_DTYPES[dtype], check_spatial_scale(spatial_scale))


def _cuda_roi_forward(
    fn: str,
    input: Tensor,
    rois: Tensor,
    output_size: tuple[int, int],
    spatial_scale,
    *params,
    with_argmax: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """A RoI forward on CUDA; ``with_argmax`` (RoIPool): also the argmax, launched as
    ``(x, rois, out, argmax, spatial_scale)``, returned as ``(output, argmax)``."""
    _check_roi_op(input, rois)
    dtype = _compute_dtype(input.dtype)
    _cuda_validate_rois(input.shape, rois, dtype, spatial_scale)
    ph, pw = check_output_size(output_size)
    layout = _cuda_layout(fn, input)
    r = rois.detach().to(dtype).contiguous()
    x = _kernel_input(input, dtype, layout)
    shape = (r.shape[0], input.shape[1], ph, pw)
    # Every element is written by the kernel (an empty bin writes 0): no memset needed.
    y = _kernel_buffer(shape, dtype, x.device, layout, zero=False)
    arrays = (x, r, y)
    if with_argmax:
        arrays += (_kernel_buffer(shape, torch.int64, x.device, layout, zero=False),)
    if y.numel() > 0:
        with _numba_cuda(x.device) as (as_array, stream):
            _cuda_launch(
                fn, *map(as_array, arrays), spatial_scale, *params, stream=stream, layout=layout
            )
    y = _from_kernel(y, layout).to(input.dtype)
    return (y, _from_kernel(arrays[3], layout)) if with_argmax else y


def _cuda_roi_backward(
    fn: str,
    grad: Tensor,
    input: Tensor | None,
    rois: Tensor,
    input_shape: tuple[int, int, int, int],
    output_size: tuple[int, int],
    spatial_scale,
    *params,
) -> Tensor:
    _check_float_tensor("grad", grad, ndim=4)
    _check_same_device("grad", grad, input=input, rois=rois)
    dtype = _compute_dtype(grad.dtype)
    # Also here, not only in the forward: the backward operator can be called on its own.
    _cuda_validate_rois(input_shape, rois, dtype, spatial_scale)
    layout = _cuda_layout(fn, grad)
    r = rois.detach().to(dtype).contiguous()
    g = _kernel_view(grad.detach().to(dtype), layout)
    # Accumulated into with atomic adds (bins and RoIs overlap): it must start at zero.
    grad_x = _kernel_buffer(input_shape, dtype, grad.device, layout, zero=True)
    if g.numel() > 0:
        # The average modes read only x's shape and dtype (documented by the launch API):
        # grad_x has both, and stands in for the input that autograd did not keep.
        x = grad_x if input is None else _kernel_input(input, dtype, layout)
        with _numba_cuda(grad.device) as (as_array, stream):
            args = (as_array(x), as_array(r), as_array(g), as_array(grad_x), spatial_scale)
            _cuda_launch(fn, *args, *params, stream=stream, layout=layout)
    return _from_kernel(grad_x, layout).to(grad.dtype)


def _cuda_roi_pool_backward(
    grad: Tensor,
    rois: Tensor,
    argmax: Tensor,
    input_shape: tuple[int, int, int, int],
    spatial_scale,
) -> Tensor:
    """RoIPool's input gradient on CUDA: atomic adds through the forward's argmax."""
    _check_float_tensor("grad", grad, ndim=4)
    _check_argmax_tensor(argmax, grad)
    _check_same_device("grad", grad, rois=rois)
    dtype = _compute_dtype(grad.dtype)
    _cuda_validate_rois(input_shape, rois, dtype, spatial_scale)
    _, _, h, w = input_shape
    if argmax.numel() > 0:
        # A wrong index would be an atomic add outside grad_x (the kernel also skips them,
        # so this is about a clear error, not memory safety). One reduction, one sync.
        lo, hi = torch.aminmax(argmax)
        if lo.item() < -1 or hi.item() >= h * w:
            raise ValueError(f"argmax must lie in [-1, {h * w})")
    layout = _cuda_layout("roi_pool_backward", grad)
    r = rois.detach().to(dtype).contiguous()
    g = _kernel_view(grad.detach().to(dtype), layout)
    a = _kernel_view(argmax.detach(), layout)
    grad_x = _kernel_buffer(input_shape, dtype, grad.device, layout, zero=True)
    if g.numel() > 0:
        with _numba_cuda(grad.device) as (as_array, stream):
            arrays = map(as_array, (r, g, a, grad_x))
            _cuda_launch("roi_pool_backward_from_argmax", *arrays, stream=stream, layout=layout)
    return _from_kernel(grad_x, layout).to(grad.dtype)


def _cuda_prroi_backward(
    grad: Tensor,
    input: Tensor,
    rois: Tensor,
    output_size: tuple[int, int],
    spatial_scale,
    aligned: bool,
) -> tuple[Tensor, Tensor]:
    """PrRoIPool's two gradients on CUDA: ``(grad_input, grad_rois)`` (dtypes as the CPU's)."""
    _check_float_tensor("grad", grad, ndim=4)
    _check_roi_op(input, rois)
    _check_same_device("grad", grad, input=input, rois=rois)
    dtype = _compute_dtype(grad.dtype)
    _cuda_validate_rois(input.shape, rois, dtype, spatial_scale)
    g = grad.detach().to(dtype).contiguous()
    r = rois.detach().to(dtype).contiguous()
    # Both accumulated into (atomic adds, per-RoI sums): they must start at zero.
    grad_x = torch.zeros(tuple(input.shape), dtype=dtype, device=grad.device)
    grad_rois = torch.zeros(tuple(r.shape), dtype=dtype, device=grad.device)
    if g.numel() > 0:
        x = input.detach().to(dtype).contiguous()
        with _numba_cuda(grad.device) as (as_array, stream):
            args = (as_array(x), as_array(r), as_array(g), as_array(grad_x), as_array(grad_rois))
            _cuda_launch("prroi_pool_backward", *args, spatial_scale, aligned, stream=stream)
    return grad_x.to(grad.dtype), grad_rois.to(rois.dtype)


def _cuda_nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """NMS on CUDA as torchvision does it: the boxes sorted by score on the device, their
    suppression bitmask computed by a kernel, the (sequential) greedy pass on the host.

    The host has to see the data anyway (the result's size depends on it), so the finiteness
    check that the CPU path does up front rides along with the mask's copy: one sync.
    """
    backend = _cuda_backend()
    n = boxes.shape[0]
    if n == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    finite = torch.isfinite(boxes).all() & torch.isfinite(scores).all()
    order = torch.sort(scores.detach(), descending=True, stable=True).indices
    boxes_sorted = boxes.detach()[order].contiguous()
    # torch has few uint64 kernels: hold the 64-bit words as int64, let numba see uint64.
    mask = torch.empty(backend.nms_mask_shape(n), dtype=torch.int64, device=boxes.device)
    with _numba_cuda(boxes.device) as (as_array, stream):
        # A NaN box breaks no memory access here: launching before the check is safe.
        backend.launch_nms_mask(
            as_array(boxes_sorted), as_array(mask).view(np.uint64), iou_threshold, stream=stream
        )
    if not finite.item():
        raise ValueError("boxes and scores must hold finite values (found NaN or infinity)")
    kept = backend.reduce_nms_mask(mask.cpu().numpy().view(np.uint64))
    return order[torch.from_numpy(kept).to(boxes.device)]


def _cuda_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    # The same error as the CPU path for NaN or infinite boxes (one sync).
    for name, b in (("boxes1", boxes1), ("boxes2", boxes2)):
        if not torch.isfinite(b).all().item():
            raise ValueError(f"{name} must hold finite values (found NaN or infinity)")
    iou = torch.empty((boxes1.shape[0], boxes2.shape[0]), dtype=boxes1.dtype, device=boxes1.device)
    if iou.numel() > 0:
        b1 = boxes1.detach().contiguous()
        b2 = boxes2.detach().to(boxes1.dtype).contiguous()
        with _numba_cuda(boxes1.device) as (as_array, stream):
            _cuda_launch("box_iou", as_array(b1), as_array(b2), as_array(iou), stream=stream)
    return iou


# --- refimpl::roi_align -----------------------------------------------------------------------


@torch.library.custom_op("refimpl::roi_align", mutates_args=(), device_types="cpu")
def _roi_align_op(
    input: Tensor,
    rois: Tensor,
    spatial_scale: float,
    pooled_height: int,
    pooled_width: int,
    sampling_ratio: int,
    aligned: bool,
    pool_mode: str,
) -> Tensor:
    """RoIAlign forward (Mask R-CNN sec. 3); torchvision's argument order, plus pool_mode."""
    return _cpu_roi_forward(
        "roi_align_forward",
        input,
        rois,
        (pooled_height, pooled_width),
        spatial_scale,
        sampling_ratio,
        aligned,
        pool_mode,
    )


@_roi_align_op.register_kernel("cuda")
def _(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned, pool_mode):
    return _cuda_roi_forward(
        "roi_align_forward",
        input,
        rois,
        (pooled_height, pooled_width),
        spatial_scale,
        sampling_ratio,
        aligned,
        pool_mode,
    )


def _fake_roi_forward(input: Tensor, rois: Tensor, pooled_height, pooled_width) -> Tensor:
    _check_roi_op(input, rois)
    return input.new_empty((rois.shape[0], input.shape[1], pooled_height, pooled_width))


@_roi_align_op.register_fake
def _(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned, pool_mode):
    return _fake_roi_forward(input, rois, pooled_height, pooled_width)


@torch.library.custom_op("refimpl::roi_align_backward", mutates_args=(), device_types="cpu")
def _roi_align_backward_op(
    grad: Tensor,
    input: Tensor | None,
    rois: Tensor,
    spatial_scale: float,
    pooled_height: int,
    pooled_width: int,
    batch_size: int,
    channels: int,
    height: int,
    width: int,
    sampling_ratio: int,
    aligned: bool,
    pool_mode: str,
) -> Tensor:
    """RoIAlign's input gradient: a bilinear-weighted scatter of ``grad`` (Mask R-CNN sec. 3).

    ``input`` is needed by ``pool_mode="max"`` only (to find the winning samples again); the
    average needs just its shape, so autograd does not keep the feature map alive for it.
    """
    return _cpu_roi_backward(
        "roi_align_backward",
        grad,
        input,
        rois,
        (batch_size, channels, height, width),
        (pooled_height, pooled_width),
        spatial_scale,
        sampling_ratio,
        aligned,
        pool_mode,
    )


@_roi_align_backward_op.register_kernel("cuda")
def _(
    grad,
    input,
    rois,
    spatial_scale,
    pooled_height,
    pooled_width,
    batch_size,
    channels,
    height,
    width,
    sampling_ratio,
    aligned,
    pool_mode,
):
    return _cuda_roi_backward(
        "roi_align_backward",
        grad,
        input,
        rois,
        (batch_size, channels, height, width),
        (pooled_height, pooled_width),
        spatial_scale,
        sampling_ratio,
        aligned,
        pool_mode,
    )


def _fake_roi_backward(grad: Tensor, batch_size, channels, height, width) -> Tensor:
    return grad.new_empty((batch_size, channels, height, width))


@_roi_align_backward_op.register_fake
def _(
    grad,
    input,
    rois,
    spatial_scale,
    pooled_height,
    pooled_width,
    batch_size,
    channels,
    height,
    width,
    sampling_ratio,
    aligned,
    pool_mode,
):
    return _fake_roi_backward(grad, batch_size, channels, height, width)


def _roi_align_setup_context(ctx, inputs, output) -> None:
    input, rois, spatial_scale, ph, pw, sampling_ratio, aligned, pool_mode = inputs
    ctx.params = (spatial_scale, ph, pw, sampling_ratio, aligned, pool_mode)
    ctx.input_shape = tuple(input.shape)
    # max mode recomputes its argmax from the input; the average needs only the shape.
    ctx.save_for_backward(input if pool_mode == "max" else None, rois)


def _roi_align_backward(ctx, grad):
    if not ctx.needs_input_grad[0]:
        return (None,) * 8
    input, rois = ctx.saved_tensors
    spatial_scale, ph, pw, sampling_ratio, aligned, pool_mode = ctx.params
    grad_input = torch.ops.refimpl.roi_align_backward.default(
        grad,
        input,
        rois,
        spatial_scale,
        ph,
        pw,
        *ctx.input_shape,
        sampling_ratio,
        aligned,
        pool_mode,
    )
    return (grad_input,) + (None,) * 7  # no gradient to the boxes or the parameters


_roi_align_op.register_autograd(_roi_align_backward, setup_context=_roi_align_setup_context)


# --- refimpl::roi_warp ------------------------------------------------------------------------


@torch.library.custom_op("refimpl::roi_warp", mutates_args=(), device_types="cpu")
def _roi_warp_op(
    input: Tensor,
    rois: Tensor,
    spatial_scale: float,
    pooled_height: int,
    pooled_width: int,
    sampling_ratio: int,
    pool_mode: str,
) -> Tensor:
    """RoIWarp forward: the box quantized once, then sampled bilinearly (Mask R-CNN Table 2c)."""
    return _cpu_roi_forward(
        "roi_warp_forward",
        input,
        rois,
        (pooled_height, pooled_width),
        spatial_scale,
        sampling_ratio,
        pool_mode,
    )


@_roi_warp_op.register_kernel("cuda")
def _(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, pool_mode):
    return _cuda_roi_forward(
        "roi_warp_forward",
        input,
        rois,
        (pooled_height, pooled_width),
        spatial_scale,
        sampling_ratio,
        pool_mode,
    )


@_roi_warp_op.register_fake
def _(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, pool_mode):
    return _fake_roi_forward(input, rois, pooled_height, pooled_width)


@torch.library.custom_op("refimpl::roi_warp_backward", mutates_args=(), device_types="cpu")
def _roi_warp_backward_op(
    grad: Tensor,
    input: Tensor | None,
    rois: Tensor,
    spatial_scale: float,
    pooled_height: int,
    pooled_width: int,
    batch_size: int,
    channels: int,
    height: int,
    width: int,
    sampling_ratio: int,
    pool_mode: str,
) -> Tensor:
    """RoIWarp's input gradient (``input`` is needed by ``pool_mode="max"`` only)."""
    return _cpu_roi_backward(
        "roi_warp_backward",
        grad,
        input,
        rois,
        (batch_size, channels, height, width),
        (pooled_height, pooled_width),
        spatial_scale,
        sampling_ratio,
        pool_mode,
    )


@_roi_warp_backward_op.register_kernel("cuda")
def _(
    grad,
    input,
    rois,
    spatial_scale,
    pooled_height,
    pooled_width,
    batch_size,
    channels,
    height,
    width,
    sampling_ratio,
    pool_mode,
):
    return _cuda_roi_backward(
        "roi_warp_backward",
        grad,
        input,
        rois,
        (batch_size, channels, height, width),
        (pooled_height, pooled_width),
        spatial_scale,
        sampling_ratio,
        pool_mode,
    )


@_roi_warp_backward_op.register_fake
def _(
    grad,
    input,
    rois,
    spatial_scale,
    pooled_height,
    pooled_width,
    batch_size,
    channels,
    height,
    width,
    sampling_ratio,
    pool_mode,
):
    return _fake_roi_backward(grad, batch_size, channels, height, width)


def _roi_warp_setup_context(ctx, inputs, output) -> None:
    input, rois, spatial_scale, ph, pw, sampling_ratio, pool_mode = inputs
    ctx.params = (spatial_scale, ph, pw, sampling_ratio, pool_mode)
    ctx.input_shape = tuple(input.shape)
    ctx.save_for_backward(input if pool_mode == "max" else None, rois)


def _roi_warp_backward(ctx, grad):
    if not ctx.needs_input_grad[0]:
        return (None,) * 7
    input, rois = ctx.saved_tensors
    spatial_scale, ph, pw, sampling_ratio, pool_mode = ctx.params
    grad_input = torch.ops.refimpl.roi_warp_backward.default(
        grad, input, rois, spatial_scale, ph, pw, *ctx.input_shape, sampling_ratio, pool_mode
    )
    return (grad_input,) + (None,) * 6


_roi_warp_op.register_autograd(_roi_warp_backward, setup_context=_roi_warp_setup_context)


# --- refimpl::roi_pool ------------------------------------------------------------------------


@torch.library.custom_op("refimpl::roi_pool", mutates_args=(), device_types="cpu")
def _roi_pool_op(
    input: Tensor, rois: Tensor, spatial_scale: float, pooled_height: int, pooled_width: int
) -> tuple[Tensor, Tensor]:
    """RoIPool forward (Fast R-CNN sec. 2.1), as torchvision's operator: ``(output, argmax)``,
    argmax int64 [K, C, PH, PW], the flat index ``row * W + col`` of each bin's maximum in
    its image plane (-1 for an empty bin), which the backward scatters through."""
    return _cpu_roi_pool_forward(input, rois, (pooled_height, pooled_width), spatial_scale)


@_roi_pool_op.register_kernel("cuda")
def _(input, rois, spatial_scale, pooled_height, pooled_width):
    return _cuda_roi_forward(
        "roi_pool_forward_with_argmax",
        input,
        rois,
        (pooled_height, pooled_width),
        spatial_scale,
        with_argmax=True,
    )


@_roi_pool_op.register_fake
def _(input, rois, spatial_scale, pooled_height, pooled_width):
    y = _fake_roi_forward(input, rois, pooled_height, pooled_width)
    return y, y.new_empty(y.shape, dtype=torch.int64)


@torch.library.custom_op("refimpl::roi_pool_backward", mutates_args=(), device_types="cpu")
def _roi_pool_backward_op(
    grad: Tensor,
    rois: Tensor,
    argmax: Tensor,
    spatial_scale: float,
    pooled_height: int,
    pooled_width: int,
    batch_size: int,
    channels: int,
    height: int,
    width: int,
) -> Tensor:
    """RoIPool's input gradient (Fast R-CNN eq. 4): each bin's gradient goes to the pixel
    its forward's ``argmax`` names. torchvision's ``_roi_pool_backward`` arguments."""
    return _cpu_roi_pool_backward(
        grad,
        rois,
        argmax,
        (batch_size, channels, height, width),
        (pooled_height, pooled_width),
        spatial_scale,
    )


@_roi_pool_backward_op.register_kernel("cuda")
def _(grad, rois, argmax, spatial_scale, pooled_height, pooled_width, batch_size, channels,
      height, width):  # fmt: skip
    return _cuda_roi_pool_backward(
        grad, rois, argmax, (batch_size, channels, height, width), spatial_scale
    )


@_roi_pool_backward_op.register_fake
def _(grad, rois, argmax, spatial_scale, pooled_height, pooled_width, batch_size, channels,
      height, width):  # fmt: skip
    return _fake_roi_backward(grad, batch_size, channels, height, width)


def _roi_pool_setup_context(ctx, inputs, output) -> None:
    input, rois, spatial_scale, ph, pw = inputs
    ctx.params = (spatial_scale, ph, pw, *input.shape)
    # The argmax, not the input: the backward is a pure scatter (as torchvision's).
    ctx.save_for_backward(rois, output[1])
    ctx.mark_non_differentiable(output[1])
    # Otherwise autograd hands the backward a zero-filled int64 "gradient" of the argmax:
    # an allocation and a fill as large as the output (a third of this op's backward time).
    ctx.set_materialize_grads(False)


def _roi_pool_backward(ctx, grad, _grad_argmax):
    if grad is None or not ctx.needs_input_grad[0]:
        return (None,) * 5
    rois, argmax = ctx.saved_tensors
    grad_input = torch.ops.refimpl.roi_pool_backward.default(grad, rois, argmax, *ctx.params)
    return (grad_input,) + (None,) * 4


_roi_pool_op.register_autograd(_roi_pool_backward, setup_context=_roi_pool_setup_context)


# --- refimpl::prroi_pool ----------------------------------------------------------------------


@torch.library.custom_op("refimpl::prroi_pool", mutates_args=(), device_types="cpu")
def _prroi_pool_op(
    input: Tensor,
    rois: Tensor,
    spatial_scale: float,
    pooled_height: int,
    pooled_width: int,
    aligned: bool,
) -> Tensor:
    """PrRoIPool forward (IoU-Net sec. 3.3): the exact mean of the bilinear map over each bin."""
    return _cpu_roi_forward(
        "prroi_pool_forward", input, rois, (pooled_height, pooled_width), spatial_scale, aligned
    )


@_prroi_pool_op.register_kernel("cuda")
def _(input, rois, spatial_scale, pooled_height, pooled_width, aligned):
    return _cuda_roi_forward(
        "prroi_pool_forward", input, rois, (pooled_height, pooled_width), spatial_scale, aligned
    )


@_prroi_pool_op.register_fake
def _(input, rois, spatial_scale, pooled_height, pooled_width, aligned):
    return _fake_roi_forward(input, rois, pooled_height, pooled_width)


@torch.library.custom_op("refimpl::prroi_pool_backward", mutates_args=(), device_types="cpu")
def _prroi_pool_backward_op(
    grad: Tensor,
    input: Tensor,
    rois: Tensor,
    spatial_scale: float,
    pooled_height: int,
    pooled_width: int,
    aligned: bool,
) -> tuple[Tensor, Tensor]:
    """PrRoIPool's gradients ``(grad_input, grad_rois)``: the tent integrals scattered to the
    input, and Leibniz's rule along the bin edges for the boxes (``grad_rois[:, 0]`` is 0)."""
    return _cpu_prroi_backward(
        grad, input, rois, (pooled_height, pooled_width), spatial_scale, aligned
    )


@_prroi_pool_backward_op.register_kernel("cuda")
def _(grad, input, rois, spatial_scale, pooled_height, pooled_width, aligned):
    return _cuda_prroi_backward(
        grad, input, rois, (pooled_height, pooled_width), spatial_scale, aligned
    )


@_prroi_pool_backward_op.register_fake
def _(grad, input, rois, spatial_scale, pooled_height, pooled_width, aligned):
    _check_roi_op(input, rois)
    return grad.new_empty(input.shape), rois.new_empty(rois.shape)


def _prroi_pool_setup_context(ctx, inputs, output) -> None:
    input, rois, spatial_scale, ph, pw, aligned = inputs
    ctx.params = (spatial_scale, ph, pw, aligned)
    ctx.save_for_backward(input, rois)  # the box gradient integrates the input


def _prroi_pool_backward(ctx, grad):
    needs_input, needs_rois = ctx.needs_input_grad[:2]
    if not (needs_input or needs_rois):
        return (None,) * 6
    input, rois = ctx.saved_tensors
    grad_input, grad_rois = torch.ops.refimpl.prroi_pool_backward.default(
        grad, input, rois, *ctx.params
    )
    return (
        grad_input if needs_input else None,
        grad_rois if needs_rois else None,
        *(None,) * 4,
    )


_prroi_pool_op.register_autograd(_prroi_pool_backward, setup_context=_prroi_pool_setup_context)


# --- refimpl::nms and refimpl::box_iou ---------------------------------------------------------


def _check_nms(boxes: Tensor, scores: Tensor) -> None:
    _check_float_tensor("boxes", boxes, ndim=2)
    if boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape [N, 4], got {tuple(boxes.shape)}")
    _check_float_tensor("scores", scores, ndim=1)
    if scores.shape[0] != boxes.shape[0]:
        raise ValueError(
            f"scores must have one entry per box: {scores.shape[0]} scores, {boxes.shape[0]} boxes"
        )
    _check_same_device("boxes", boxes, scores=scores)


@torch.library.custom_op("refimpl::nms", mutates_args=(), device_types="cpu")
def _nms_op(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS: int64 indices of the kept boxes, by decreasing score."""
    _check_nms(boxes, scores)
    dtype = _compute_dtype(boxes.dtype)
    keep = _cpu_backend().nms(_to_numpy(boxes, dtype), _to_numpy(scores, dtype), iou_threshold)
    return torch.from_numpy(keep)


@_nms_op.register_kernel("cuda")
def _(boxes, scores, iou_threshold):
    _check_nms(boxes, scores)
    dtype = _compute_dtype(boxes.dtype)
    return _cuda_nms(boxes.to(dtype), scores.to(dtype), iou_threshold)


@_nms_op.register_fake
def _(boxes, scores, iou_threshold):
    _check_nms(boxes, scores)
    # How many boxes survive depends on the data: an unbacked symbolic size for tracing.
    n = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty((n,), dtype=torch.int64)


def _check_box_iou(boxes1: Tensor, boxes2: Tensor) -> None:
    for name, b in (("boxes1", boxes1), ("boxes2", boxes2)):
        _check_float_tensor(name, b, ndim=2)
        if b.shape[1] != 4:
            raise ValueError(f"{name} must have shape [N, 4], got {tuple(b.shape)}")
    _check_same_device("boxes1", boxes1, boxes2=boxes2)


@torch.library.custom_op("refimpl::box_iou", mutates_args=(), device_types="cpu")
def _box_iou_op(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU of every pair, ``[N, M]``, in boxes1's dtype (16-bit: computed in float32)."""
    _check_box_iou(boxes1, boxes2)
    dtype = _compute_dtype(boxes1.dtype)
    iou = _cpu_backend().box_iou(_to_numpy(boxes1, dtype), _to_numpy(boxes2, dtype))
    return torch.from_numpy(iou).to(boxes1.dtype)


@_box_iou_op.register_kernel("cuda")
def _(boxes1, boxes2):
    _check_box_iou(boxes1, boxes2)
    dtype = _compute_dtype(boxes1.dtype)
    return _cuda_box_iou(boxes1.to(dtype), boxes2.to(dtype)).to(boxes1.dtype)


@_box_iou_op.register_fake
def _(boxes1, boxes2):
    _check_box_iou(boxes1, boxes2)
    return boxes1.new_empty((boxes1.shape[0], boxes2.shape[0]))


# --- the public functions: torchvision's signatures ------------------------------------------


def _roi_params(output_size, spatial_scale, sampling_ratio=-1) -> tuple[int, int, float, int]:
    ph, pw = check_output_size(output_size)
    return ph, pw, check_spatial_scale(spatial_scale), _check_int("sampling_ratio", sampling_ratio)


def roi_align(
    input: Tensor,
    boxes: Tensor | list[Tensor],
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
    pool_mode: str = "avg",
) -> Tensor:
    """RoIAlign (Mask R-CNN, He et al. 2017, sec. 3): pool each box into a fixed grid of bins
    without quantizing it; each bin is the average (or, ``pool_mode="max"``, the maximum) of
    regularly spaced bilinear samples.

    Args:
        input: ``[N, C, H, W]`` feature map.
        boxes: ``Tensor[K, 5]`` rows ``(batch_index, x1, y1, x2, y2)``, or a list of
            ``Tensor[L, 4]``, one per image, in image coordinates.
        output_size: ``(PH, PW)`` bins, or an int for a square grid.
        spatial_scale: image -> feature map scale (1 / stride, e.g. 1/16).
        sampling_ratio: samples per bin along each axis; ``<= 0``: adaptive,
            ``ceil(roi_size / output_size)``.
        aligned: shift by half a pixel so that pixel centres sit at integer + 0.5 (detectron2's
            correction); False is the paper's (and torchvision's default) legacy behaviour.
        pool_mode: ``"avg"`` (the paper's RoIAlign) or ``"max"`` (its Table 2c ablation).

    Returns:
        ``[K, C, PH, PW]`` in input's dtype. float16/bfloat16 are computed in float32 and the
        result is cast back. Differentiable with respect to ``input`` only.
    """
    rois = _as_rois(boxes, input)
    ph, pw, scale, sampling_ratio = _roi_params(output_size, spatial_scale, sampling_ratio)
    aligned = _check_bool("aligned", aligned)
    pool_mode = check_pool_mode(pool_mode)
    return torch.ops.refimpl.roi_align.default(
        input, rois, scale, ph, pw, sampling_ratio, aligned, pool_mode
    )


def roi_pool(
    input: Tensor,
    boxes: Tensor | list[Tensor],
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
) -> Tensor:
    """RoIPool (Fast R-CNN, Girshick 2015, sec. 2.1): round the box to feature cells, split it
    into ``output_size`` bins rounded to whole cells, and max-pool each bin (an empty bin
    gives 0). The two roundings are the misalignment RoIAlign removes (Mask R-CNN sec. 3).

    ``input``, ``boxes``, ``output_size`` and ``spatial_scale`` as in :func:`roi_align`.
    Returns ``[K, C, PH, PW]`` in input's dtype (float16/bfloat16 computed in float32 and cast
    back); the gradient of each bin goes to its first maximum (Fast R-CNN eq. 4).
    """
    rois = _as_rois(boxes, input)
    ph, pw, scale, _ = _roi_params(output_size, spatial_scale)
    return torch.ops.refimpl.roi_pool.default(input, rois, scale, ph, pw)[0]


def roi_warp(
    input: Tensor,
    boxes: Tensor | list[Tensor],
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    pool_mode: str = "max",
) -> Tensor:
    """RoIWarp as the Mask R-CNN ablation uses it (sec. 3, Table 2c; Dai et al.'s MNC): the
    box is rounded to feature cells once, as in RoIPool, then sampled bilinearly without a
    second rounding, as in RoIAlign (``aligned=False``). Default ``pool_mode="max"``.

    Arguments as in :func:`roi_align`. Returns ``[K, C, PH, PW]`` in input's dtype
    (float16/bfloat16 computed in float32 and cast back).
    """
    rois = _as_rois(boxes, input)
    ph, pw, scale, sampling_ratio = _roi_params(output_size, spatial_scale, sampling_ratio)
    pool_mode = check_pool_mode(pool_mode)
    return torch.ops.refimpl.roi_warp.default(input, rois, scale, ph, pw, sampling_ratio, pool_mode)


def prroi_pool(
    input: Tensor,
    boxes: Tensor | list[Tensor],
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    aligned: bool = False,
) -> Tensor:
    """Precise RoI Pooling (IoU-Net, Jiang et al. 2018, sec. 3.3): each bin is the exact
    integral of the bilinearly interpolated feature map over the bin, divided by the bin's
    area. Each pixel contributes a tent function (zero beyond one pixel), so the integral is
    a sum of pixel values times closed-form tent integrals: no quantization, no sampling
    points, and a zero-area bin gives 0.

    ``input``, ``boxes``, ``output_size``, ``spatial_scale`` and ``aligned`` as in
    :func:`roi_align`. Returns ``[K, C, PH, PW]`` in input's dtype (float16/bfloat16 computed
    in float32 and cast back). Differentiable with respect to ``input`` **and** ``boxes``
    (the output moves continuously with the box): a ``Tensor[K, 5]`` gets a ``[K, 5]``
    gradient whose column 0 (the batch index) is 0; a list of ``Tensor[L, 4]`` gets its
    ``[L, 4]`` gradients.
    """
    rois = _as_rois(boxes, input)
    ph, pw, scale, _ = _roi_params(output_size, spatial_scale)
    aligned = _check_bool("aligned", aligned)
    return torch.ops.refimpl.prroi_pool.default(input, rois, scale, ph, pw, aligned)


def _check_threshold(iou_threshold) -> float:
    if isinstance(iou_threshold, bool) or not isinstance(iou_threshold, numbers.Real):
        raise TypeError(f"iou_threshold must be a real number, got {type(iou_threshold).__name__}")
    return float(iou_threshold)


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression (as in Fast R-CNN's and Mask R-CNN's detectors).

    Visits the boxes ``[N, 4]`` ``(x1, y1, x2, y2)`` by decreasing score (ties: lower index
    first) and drops each box whose IoU with an already kept one is strictly greater than
    ``iou_threshold``. Returns the int64 indices of the kept boxes, by decreasing score.
    float16/bfloat16 boxes are compared in float32; scores are cast to the boxes' dtype.
    """
    _check_nms(boxes, scores)
    return torch.ops.refimpl.nms.default(
        boxes, scores.to(boxes.dtype), _check_threshold(iou_threshold)
    )


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """NMS independently per category ``idxs`` (int ``[N]``), in one :func:`nms` call.

    torchvision's coordinate trick: each category's boxes are shifted by ``idx * span`` so
    that boxes of different categories never overlap. ``span`` is torchvision's
    ``max + 1``, widened by ``-min`` when coordinates are negative (where ``max + 1`` alone
    would let categories overlap). Returns int64 indices by decreasing score.
    """
    _check_float_tensor("boxes", boxes, ndim=2)
    if not isinstance(idxs, Tensor) or idxs.dim() != 1:
        raise ValueError("idxs must be a 1-D tensor of category indices")
    if idxs.is_floating_point() or idxs.is_complex():
        raise TypeError(f"idxs must have an integer dtype, got {idxs.dtype}")
    _check_same_device("boxes", boxes, scores=scores, idxs=idxs)
    if idxs.shape[0] != boxes.shape[0]:
        raise ValueError(
            f"idxs must have one entry per box: {idxs.shape[0]} idxs, {boxes.shape[0]} boxes"
        )
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    # At least float32: 90 categories x 1333 pixels overflow float16 (nms computes 16-bit
    # boxes in float32 anyway). The shift rounds coordinates (as torchvision's does), which
    # can move an IoU that sits exactly on the threshold.
    boxes = boxes.to(torch.promote_types(boxes.dtype, torch.float32))
    span = boxes.max() + 1 - boxes.min().clamp(max=0)
    shifted = boxes + (idxs.to(boxes.dtype) * span)[:, None]
    return nms(shifted, scores, iou_threshold)


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Intersection over union of every pair of boxes ``(x1, y1, x2, y2)``: ``[N, M]``.

    Areas are ``(x2 - x1) * (y2 - y1)`` (no "+1"); two zero-area boxes give 0 / 0 = NaN, as
    torchvision. The result has the promoted dtype of the two inputs (integer boxes: the
    default float dtype); float16/bfloat16 are computed in float32 and cast back. Not
    differentiable (an IoU loss should use torch arithmetic).
    """
    for name, b in (("boxes1", boxes1), ("boxes2", boxes2)):
        if not isinstance(b, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(b).__name__}")
    _check_same_device("boxes1", boxes1, boxes2=boxes2)
    dtype = torch.promote_types(boxes1.dtype, boxes2.dtype)
    if not (dtype.is_floating_point or dtype.is_complex or dtype == torch.bool):
        dtype = torch.get_default_dtype()  # torchvision divides: integer boxes give floats
    return torch.ops.refimpl.box_iou.default(boxes1.to(dtype), boxes2.to(dtype))
