"""The operators' CUDA kernels: refimpl.ops.cuda's numba-cuda launches on torch's memory.

numba.cuda is imported only on this path, so that registering the operators (and running
on a machine without CUDA) never touches it. The launches write into tensors that torch
allocated, on torch's current stream: ordered with torch's own kernels, without copies or
host synchronization (except where the host must look at data: the RoI validation and
NMS's greedy pass). The RoIAlign / RoIWarp / RoIPool kernels run in the layout that
:mod:`refimpl.ops.torch.layout` picks; results are NCHW-contiguous either way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from types import ModuleType

import numpy as np
import torch
from torch import Tensor

from ..validate import check_rois, check_spatial_scale
from .checks import (
    NUMPY_DTYPES,
    check_argmax,
    check_float_tensor,
    check_pooled_sizes,
    check_roi_tensors,
    check_same_device,
    compute_dtype,
)
from .layout import Layout, kernel_layout


def cuda_backend() -> ModuleType:
    from refimpl.ops import BACKENDS

    return BACKENDS["cuda"]


@contextlib.contextmanager
def numba_cuda(device: torch.device) -> Iterator[tuple]:
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


# kernel name -> (module of refimpl.ops.cuda, its launch function, whether it takes layout=)
_LAUNCHES = {
    "roi_align_forward": ("roi_align", "launch_forward", True),
    "roi_align_backward": ("roi_align", "launch_backward", True),
    "roi_warp_forward": ("roi_warp", "launch_forward", True),
    "roi_warp_backward": ("roi_warp", "launch_backward", True),
    "roi_pool_forward": ("roi_pool", "launch_forward", True),
    "roi_pool_forward_with_argmax": ("roi_pool", "launch_forward_with_argmax", True),
    "roi_pool_backward": ("roi_pool", "launch_backward", True),
    "roi_pool_backward_from_argmax": ("roi_pool", "launch_backward_from_argmax", True),
    "prroi_pool_forward": ("prroi_pool", "launch_forward", False),  # NCHW only
    "prroi_pool_backward": ("prroi_pool", "launch_backward", False),
    "box_iou": ("boxes", "launch_box_iou", False),
}


def _launch(name: str, *args, stream, layout: Layout = "nchw") -> None:
    """THE adapter to refimpl.ops.cuda's launch API (adjust here, nowhere else).

    Calls the launch function of kernel ``name`` (:data:`_LAUNCHES`) with ``(*args,
    stream=stream)``, plus ``layout=layout`` where the kernel has both layouts: forwards
    ``(x, rois, out, *params)``, backwards ``(x, rois, grad_out, grad_x, *params)`` with
    ``grad_x`` zeroed (accumulated into), ``box_iou`` ``(boxes1, boxes2, iou)``; ``params``
    as the backend interface's. ``layout="channels_last"``: x, out, grad_out and grad_x as
    [N, H, W, C] / [K, PH, PW, C].
    """
    module, function, has_layout = _LAUNCHES[name]
    launch = getattr(getattr(cuda_backend(), module), function)
    launch(*args, stream=stream, **({"layout": layout} if has_layout else {}))


# --- the kernels' views of torch's tensors, in either layout ------------------------------------


def _nhwc(t: Tensor) -> Tensor:
    """A [N, C, H, W] tensor as its [N, H, W, C] view (no copy)."""
    return t.permute(0, 2, 3, 1)


def _kernel_input(t: Tensor, dtype: torch.dtype, layout: Layout) -> Tensor:
    """A feature map as the kernels of ``layout`` read it fast: NCHW-contiguous, or the
    [N, H, W, C] view of a channels-last copy (no copy when it already is one)."""
    t = t.detach().to(dtype)
    if layout == "channels_last":
        return _nhwc(t.contiguous(memory_format=torch.channels_last))
    return t.contiguous()


def _kernel_view(t: Tensor, layout: Layout) -> Tensor:
    """A pooled-shaped tensor the kernels read once (grad_output, argmax): channels-last, its
    [K, PH, PW, C] view with any strides; NCHW, contiguous."""
    return _nhwc(t) if layout == "channels_last" else t.contiguous()


def _kernel_buffer(nchw_shape, dtype: torch.dtype, device, layout: Layout, zero: bool) -> Tensor:
    """An output buffer of NCHW shape ``nchw_shape`` in the kernels' layout; ``zero`` for one
    that is accumulated into with atomic adds."""
    n, c, h, w = nchw_shape
    shape = (n, h, w, c) if layout == "channels_last" else (n, c, h, w)
    return (torch.zeros if zero else torch.empty)(shape, dtype=dtype, device=device)


def _from_kernel(t: Tensor, layout: Layout) -> Tensor:
    """A kernel's output back as an NCHW-contiguous tensor (a copy from channels-last)."""
    return t.permute(0, 3, 1, 2).contiguous() if layout == "channels_last" else t


def _validate_rois(input_shape, rois: Tensor, dtype: torch.dtype, spatial_scale: float) -> None:
    """Validate the RoIs on the host before a kernel trusts them: a NaN coordinate or an
    out-of-range batch index would make it read outside the input. ``[K, 5]`` is small: the
    cost is one copy and one synchronization per call."""
    host = rois.detach().to("cpu", dtype).numpy()
    check_rois(host, input_shape[0], NUMPY_DTYPES[dtype], check_spatial_scale(spatial_scale))


# --- the RoI operators ---------------------------------------------------------------------------


def roi_forward(
    name: str,
    input: Tensor,
    rois: Tensor,
    pooled: tuple[int, int],
    spatial_scale: float,
    *params,
    with_argmax: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """A RoI forward (kernel ``name``, e.g. ``"roi_warp_forward"``); ``with_argmax``
    (RoIPool): also the argmax, launched as ``(x, rois, out, argmax, spatial_scale)``,
    returned as ``(output, argmax)``."""
    check_roi_tensors(input, rois)
    check_pooled_sizes(pooled)
    dtype = compute_dtype(input.dtype)
    _validate_rois(input.shape, rois, dtype, spatial_scale)
    layout = "nchw" if name.startswith("prroi") else kernel_layout(input)  # PrRoIPool: NCHW only
    r = rois.detach().to(dtype).contiguous()
    x = _kernel_input(input, dtype, layout)
    shape = (r.shape[0], input.shape[1], *pooled)
    # Every element is written by the kernel (an empty bin writes 0): no memset needed.
    y = _kernel_buffer(shape, dtype, x.device, layout, zero=False)
    arrays = (x, r, y)
    if with_argmax:
        arrays += (_kernel_buffer(shape, torch.int64, x.device, layout, zero=False),)
    if y.numel() > 0:
        with numba_cuda(x.device) as (as_array, stream):
            _launch(
                name, *map(as_array, arrays), spatial_scale, *params, stream=stream, layout=layout
            )
    y = _from_kernel(y, layout).to(input.dtype)
    return (y, _from_kernel(arrays[3], layout)) if with_argmax else y


def roi_backward(
    name: str,
    grad: Tensor,
    input: Tensor | None,
    rois: Tensor,
    input_shape: tuple[int, int, int, int],
    pooled: tuple[int, int],
    spatial_scale: float,
    *params,
) -> Tensor:
    """A RoI input gradient (kernel ``name``); ``input`` None for the average modes."""
    check_float_tensor("grad", grad, ndim=4)
    check_same_device("grad", grad, {"input": input, "rois": rois})
    check_pooled_sizes(pooled)
    dtype = compute_dtype(grad.dtype)
    # Also here, not only in the forward: the backward operator can be called on its own.
    _validate_rois(input_shape, rois, dtype, spatial_scale)
    layout = kernel_layout(grad)
    r = rois.detach().to(dtype).contiguous()
    g = _kernel_view(grad.detach().to(dtype), layout)
    # Accumulated into with atomic adds (bins and RoIs overlap): it must start at zero.
    grad_x = _kernel_buffer(input_shape, dtype, grad.device, layout, zero=True)
    if g.numel() > 0:
        # The average modes read only x's shape and dtype (documented by the launch API):
        # grad_x has both, and stands in for the input that autograd did not keep.
        x = grad_x if input is None else _kernel_input(input, dtype, layout)
        with numba_cuda(grad.device) as (as_array, stream):
            args = (as_array(x), as_array(r), as_array(g), as_array(grad_x), spatial_scale)
            _launch(name, *args, *params, stream=stream, layout=layout)
    return _from_kernel(grad_x, layout).to(grad.dtype)


def roi_pool_backward(
    grad: Tensor,
    rois: Tensor,
    argmax: Tensor,
    input_shape: tuple[int, int, int, int],
    pooled: tuple[int, int],
    spatial_scale: float,
) -> Tensor:
    """RoIPool's input gradient: atomic adds through the forward's argmax."""
    check_float_tensor("grad", grad, ndim=4)
    check_argmax(argmax, grad)
    check_same_device("grad", grad, {"rois": rois})
    check_pooled_sizes(pooled)
    dtype = compute_dtype(grad.dtype)
    _validate_rois(input_shape, rois, dtype, spatial_scale)
    _, _, h, w = input_shape
    if argmax.numel() > 0:
        # A wrong index would be an atomic add outside grad_x (the kernel also skips them,
        # so this is about a clear error, not memory safety). One reduction, one sync.
        lo, hi = torch.aminmax(argmax)
        if lo.item() < -1 or hi.item() >= h * w:
            raise ValueError(f"argmax must lie in [-1, {h * w})")
    layout = kernel_layout(grad)
    r = rois.detach().to(dtype).contiguous()
    g = _kernel_view(grad.detach().to(dtype), layout)
    a = _kernel_view(argmax.detach(), layout)
    grad_x = _kernel_buffer(input_shape, dtype, grad.device, layout, zero=True)
    if g.numel() > 0:
        with numba_cuda(grad.device) as (as_array, stream):
            arrays = map(as_array, (r, g, a, grad_x))
            _launch("roi_pool_backward_from_argmax", *arrays, stream=stream, layout=layout)
    return _from_kernel(grad_x, layout).to(grad.dtype)


def prroi_pool_backward(
    grad: Tensor,
    input: Tensor,
    rois: Tensor,
    pooled: tuple[int, int],
    spatial_scale: float,
    aligned: bool,
) -> tuple[Tensor, Tensor]:
    """PrRoIPool's two gradients: ``(grad_input, grad_rois)`` (dtypes as the CPU's)."""
    check_float_tensor("grad", grad, ndim=4)
    check_roi_tensors(input, rois)
    check_same_device("grad", grad, {"input": input, "rois": rois})
    check_pooled_sizes(pooled)
    dtype = compute_dtype(grad.dtype)
    _validate_rois(input.shape, rois, dtype, spatial_scale)
    g = grad.detach().to(dtype).contiguous()
    r = rois.detach().to(dtype).contiguous()
    # Both accumulated into (atomic adds, per-RoI sums): they must start at zero.
    grad_x = torch.zeros(tuple(input.shape), dtype=dtype, device=grad.device)
    grad_rois = torch.zeros(tuple(r.shape), dtype=dtype, device=grad.device)
    if g.numel() > 0:
        x = input.detach().to(dtype).contiguous()
        with numba_cuda(grad.device) as (as_array, stream):
            args = (as_array(x), as_array(r), as_array(g), as_array(grad_x), as_array(grad_rois))
            _launch("prroi_pool_backward", *args, spatial_scale, aligned, stream=stream)
    return grad_x.to(grad.dtype), grad_rois.to(rois.dtype)


# --- NMS and box IoU -----------------------------------------------------------------------------


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """NMS as torchvision does it on CUDA: the boxes sorted by score on the device, their
    suppression bitmask computed by a kernel, the (sequential) greedy pass on the host.

    The host has to see the data anyway (the result's size depends on it), so the finiteness
    check that the CPU path does up front rides along with the mask's copy: one sync.
    """
    backend = cuda_backend()
    n = boxes.shape[0]
    if n == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    finite = torch.isfinite(boxes).all() & torch.isfinite(scores).all()
    order = torch.sort(scores.detach(), descending=True, stable=True).indices
    boxes_sorted = boxes.detach()[order].contiguous()
    # torch has few uint64 kernels: hold the 64-bit words as int64, let numba see uint64.
    mask = torch.empty(backend.nms_mask_shape(n), dtype=torch.int64, device=boxes.device)
    with numba_cuda(boxes.device) as (as_array, stream):
        # A NaN box breaks no memory access here: launching before the check is safe.
        backend.launch_nms_mask(
            as_array(boxes_sorted), as_array(mask).view(np.uint64), iou_threshold, stream=stream
        )
    if not finite.item():
        raise ValueError("boxes and scores must hold finite values (found NaN or infinity)")
    kept = backend.reduce_nms_mask(mask.cpu().numpy().view(np.uint64))
    return order[torch.from_numpy(kept).to(boxes.device)]


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    # The same error as the CPU path for NaN or infinite boxes (one sync).
    for name, b in (("boxes1", boxes1), ("boxes2", boxes2)):
        if not torch.isfinite(b).all().item():
            raise ValueError(f"{name} must hold finite values (found NaN or infinity)")
    iou = torch.empty((boxes1.shape[0], boxes2.shape[0]), dtype=boxes1.dtype, device=boxes1.device)
    if iou.numel() > 0:
        b1 = boxes1.detach().contiguous()
        b2 = boxes2.detach().to(boxes1.dtype).contiguous()
        with numba_cuda(boxes1.device) as (as_array, stream):
            _launch("box_iou", as_array(b1), as_array(b2), as_array(iou), stream=stream)
    return iou
