"""The CUDA path of the torch operators (refimpl.ops.torch.cuda_kernels), under the CUDA simulator.

    NUMBA_ENABLE_CUDASIM=1 .venv/bin/pytest tests/cuda

Without a GPU, torch has no CUDA tensors; but the simulator runs the cuda backend's launch
functions on NumPy arrays. Here the one place that turns torch tensors into numba device
arrays (``cuda_kernels.numba_cuda``) is replaced by zero-copy simulator arrays over CPU tensors,
so that everything else of the CUDA kernels runs as on a GPU: validation, dtype handling,
the argument order of every launch, zeroed gradient buffers, the input stand-in of the
average modes, and NMS's mask and host pass. They must agree with the CPU operators. (On a
GPU, tests/ops/test_torch_ops.py runs the real path.)
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

import refimpl.ops as T
from refimpl.ops.torch import cuda_kernels as K
from tests.cuda.device import require_device

pytestmark = pytest.mark.cudasim

numba_cuda = require_device()
from numba import config  # noqa: E402

if not config.ENABLE_CUDASIM:
    pytest.skip("a real GPU: tests/ops/test_torch_ops.py covers it", allow_module_level=True)

from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray  # noqa: E402

OUT = (2, 3)
SCALE = 0.5


@pytest.fixture(autouse=True)
def simulated_device(monkeypatch):
    @contextlib.contextmanager
    def numba_cuda_on_cpu(_device):
        # .numpy() shares the tensor's memory: kernels write into torch's buffers, as on a GPU.
        yield (lambda t: FakeCUDAArray(t.detach().numpy())), 0

    monkeypatch.setattr(K, "numba_cuda", numba_cuda_on_cpu)


@pytest.fixture
def in_layout():
    """``in_layout(name)``: the rest of the test runs inside ``refimpl.ops.cuda_layout(name)``."""
    with contextlib.ExitStack() as stack:
        yield lambda layout: stack.enter_context(T.cuda_layout(layout))


def _inputs(dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn((2, 2, 5, 6), generator=g, dtype=torch.float64).to(dtype)
    rois = torch.tensor(
        [
            [0, 0.3, 0.7, 9.2, 7.9],  # inside
            [1, -3.1, -1.3, 5.4, 11.7],  # partly outside
            [1, 4.4, 6.2, 4.4, 6.2],  # zero size
            [0, 9.5, 8.4, 2.2, 1.9],  # inverted
        ],
        dtype=torch.float32 if dtype == torch.float16 else dtype,
    )
    grad = torch.randn((4, 2, *OUT), generator=g, dtype=torch.float64).to(dtype)
    return x, rois, grad


# (backend function stem, public torch function, its parameters after output_size)
CASES = [
    ("roi_align", T.roi_align, (SCALE, -1, False, "avg")),
    ("roi_align", T.roi_align, (SCALE, 2, True, "avg")),
    ("roi_align", T.roi_align, (SCALE, 2, False, "max")),
    ("roi_warp", T.roi_warp, (SCALE, -1, "avg")),
    ("roi_warp", T.roi_warp, (SCALE, 2, "max")),
    ("roi_pool", T.roi_pool, (SCALE,)),
]


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{'-'.join(map(str, c[2]))}")
def test_roi_ops_cuda_path_matches_cpu(case, dtype, layout, in_layout):
    """Both CUDA kernel layouts (refimpl.ops.cuda's launch_* and launch_*_nhwc) give the
    CPU operators' results, NCHW-contiguous."""
    in_layout(layout)
    stem, fn, params = case
    x, rois, grad = _inputs(dtype)
    x_req = x.clone().requires_grad_(True)
    y_cpu = fn(x_req, rois, OUT, *params)
    (g_cpu,) = torch.autograd.grad(y_cpu, x_req, grad)

    y = K.roi_forward(f"{stem}_forward", x, rois, OUT, *params)
    assert y.dtype == dtype
    torch.testing.assert_close(y, y_cpu, rtol=1e-6, atol=1e-6)
    # The average modes do not keep the input: the backward gets None for it.
    keeps_input = stem == "roi_pool" or params[-1] == "max"
    g = K.roi_backward(
        f"{stem}_backward", grad, x if keeps_input else None, rois, x.shape, OUT, *params
    )
    assert g.dtype == dtype
    torch.testing.assert_close(g, g_cpu, rtol=1e-6, atol=1e-6)
    assert y.is_contiguous() and g.is_contiguous()


@pytest.mark.parametrize("mode", ["avg", "max"])
def test_channels_last_path_takes_channels_last_input(mode, in_layout):
    """Features already in channels-last memory (no conversion on the way in), a gradient
    that is not contiguous, and more channels than one pixel's worth of threads."""
    in_layout("channels_last")
    g = torch.Generator().manual_seed(3)
    x = torch.randn((2, 5, 6, 7), generator=g, dtype=torch.float64)
    rois = _inputs(torch.float64)[1]
    grad = torch.randn((4, 2, 3, 5), generator=g, dtype=torch.float64).permute(0, 3, 1, 2)
    assert not grad.is_contiguous()
    params = (OUT, SCALE, 2, True, mode)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    y = K.roi_forward("roi_align_forward", x_cl, rois, *params)
    gx = K.roi_backward("roi_align_backward", grad, x_cl, rois, x.shape, *params)
    x_req = x.clone().requires_grad_(True)
    y_cpu = T.roi_align(x_req, rois, OUT, SCALE, 2, True, mode)
    (g_cpu,) = torch.autograd.grad(y_cpu, x_req, grad)
    torch.testing.assert_close(y, y_cpu, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gx, g_cpu, rtol=1e-12, atol=1e-12)


def test_auto_layout_follows_the_tensors(monkeypatch, in_layout):
    """ "auto" launches the channels-last kernels for a channels-last input (forward) or
    gradient (backward), the NCHW kernels otherwise; PrRoIPool always NCHW."""
    launched = []
    real = K._launch

    def spy(name, *args, stream, layout="nchw"):
        launched.append((name, layout))
        return real(name, *args, stream=stream, layout=layout)

    monkeypatch.setattr(K, "_launch", spy)
    in_layout("auto")
    x, rois, grad = _inputs(torch.float64)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    params = (OUT, SCALE, 2, False, "max")
    y = K.roi_forward("roi_align_forward", x, rois, *params)
    y_cl = K.roi_forward("roi_align_forward", x_cl, rois, *params)
    g = K.roi_backward("roi_align_backward", grad, x, rois, x.shape, *params)
    grad_cl = grad.contiguous(memory_format=torch.channels_last)
    g_cl = K.roi_backward("roi_align_backward", grad_cl, x_cl, rois, x.shape, *params)
    K.roi_forward("prroi_pool_forward", x_cl, rois, OUT, SCALE, False)
    assert launched == [
        ("roi_align_forward", "nchw"),
        ("roi_align_forward", "channels_last"),
        ("roi_align_backward", "nchw"),
        ("roi_align_backward", "channels_last"),
        ("prroi_pool_forward", "nchw"),
    ]
    torch.testing.assert_close(y_cl, y, rtol=0, atol=0)  # same arithmetic, either layout
    torch.testing.assert_close(g_cl, g, rtol=1e-12, atol=1e-12)
    assert y_cl.is_contiguous() and g_cl.is_contiguous()


def test_cuda_layout_setting_is_checked(in_layout):
    x, rois, _ = _inputs(torch.float64)
    with pytest.raises(ValueError, match="layout must be one of"):
        in_layout("nhwc")
    # the setting is refused when set, so the next launch runs in the default layout
    assert T.current_cuda_layout() == "auto"
    K.roi_forward("roi_align_forward", x, rois, OUT, SCALE, -1, False, "avg")


def test_roi_cuda_path_validates_before_launch():
    x, rois, _ = _inputs(torch.float64)
    bad = rois.clone()
    bad[1, 0] = 2  # batch index out of range: a kernel would read outside x
    with pytest.raises(ValueError, match=r"rois\[:, 0\]"):
        K.roi_forward("roi_align_forward", x, bad, OUT, SCALE, -1, False, "avg")
    bad = rois.clone()
    bad[0, 3] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        K.roi_backward(
            "roi_pool_backward", torch.zeros(4, 2, *OUT, dtype=x.dtype), x, bad, x.shape, OUT, 1.0
        )
    empty = K.roi_forward("roi_align_forward", x, rois[:0], OUT, SCALE, -1, False, "avg")
    assert empty.shape == (0, 2, *OUT)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nms_and_box_iou_cuda_path_match_cpu(dtype):
    g = torch.Generator().manual_seed(1)
    xy = torch.rand(70, 2, generator=g, dtype=torch.float64) * 30  # > 64: two mask tiles
    boxes = torch.cat([xy, xy + 3 + torch.rand(70, 2, generator=g) * 12], 1).to(dtype)
    scores = (torch.randint(0, 5, (70,), generator=g) / 4).to(dtype)  # many ties
    for thr in (0.2, 0.5):
        torch.testing.assert_close(K.nms(boxes, scores, thr), T.nms(boxes, scores, thr))
    assert K.nms(boxes[:0], scores[:0], 0.5).shape == (0,)
    bad = boxes.clone()
    bad[3, 1] = float("inf")
    with pytest.raises(ValueError, match="finite"):
        K.nms(bad, scores, 0.5)
    torch.testing.assert_close(K.box_iou(boxes[:9], boxes[5:12]), T.box_iou(boxes[:9], boxes[5:12]))
    assert K.box_iou(boxes[:0], boxes).shape == (0, 70)
    with pytest.raises(ValueError, match=r"boxes2.*finite"):
        K.box_iou(boxes, bad)
    assert np.isnan(K.box_iou(boxes[:1] * 0, boxes[:1] * 0).item())  # 0 / 0, as torchvision


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_roi_pool_argmax_cuda_path_matches_cpu(dtype, layout, in_layout):
    """The CUDA kernels of refimpl::roi_pool (forward with argmax) and its backward (a
    scatter through the argmax) give the CPU operators' (output, argmax) and gradient."""
    in_layout(layout)
    x, rois, grad = _inputs(dtype)
    y_cpu, argmax_cpu = torch.ops.refimpl.roi_pool.default(x, rois, SCALE, *OUT)
    shape = tuple(x.shape)
    g_cpu = torch.ops.refimpl.roi_pool_backward.default(grad, rois, argmax_cpu, SCALE, *OUT, *shape)
    y, argmax = K.roi_forward("roi_pool_forward_with_argmax", x, rois, OUT, SCALE, with_argmax=True)
    torch.testing.assert_close(y, y_cpu, rtol=0, atol=0)
    assert argmax.dtype == torch.int64 and torch.equal(argmax, argmax_cpu)
    assert y.is_contiguous() and argmax.is_contiguous()
    g = K.roi_pool_backward(grad, rois, argmax, shape, OUT, SCALE)
    torch.testing.assert_close(g, g_cpu)
    bad = argmax.clone()
    bad[0, 0, 0, 0] = x.shape[2] * x.shape[3]
    with pytest.raises(ValueError, match="argmax must lie in"):
        K.roi_pool_backward(grad, rois, bad, shape, OUT, SCALE)
    with pytest.raises(TypeError, match="argmax must be an int64"):
        K.roi_pool_backward(grad, rois, argmax.float(), shape, OUT, SCALE)
