"""The channels-last RoI kernels (``layout=CL`` of refimpl.ops.cuda's launches: the same
kernel bodies compiled for the other layout) against the NCHW kernels and the python backend.

Runs in its own process, under the CUDA simulator or on a GPU:

    NUMBA_ENABLE_CUDASIM=1 .venv/bin/pytest tests/cuda

The NHWC kernels keep the NCHW kernels' arithmetic and iteration order: their forwards must
be bitwise equal to refimpl.ops.cuda's on the same (transposed) data, and the max modes must
pick the same sample. The backwards scatter with atomic adds, whose order varies, so they
agree up to rounding. Small cases (the simulator runs each GPU thread as Python); the box
set is test_cuda_backend's, with every awkward kind of box.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from refimpl.ops import BACKENDS
from tests.conftest import assert_close
from tests.cuda.device import require_device

pytestmark = pytest.mark.cudasim

numba_cuda = require_device()

from numba import config  # noqa: E402

from refimpl.ops import cuda as cu  # noqa: E402
from refimpl.ops.cuda import _launch  # noqa: E402
from tests.cuda.test_cuda_backend import OUT, SCALE, _inputs, _rois  # noqa: E402

cuda = numba_cuda
CL = "channels_last"
py = BACKENDS["python"]
DTYPES = (np.float32, np.float64)


def _nhwc(a):
    """[N, C, H, W] (or [K, C, PH, PW]) as a C-contiguous channels-last array."""
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1))


def _nchw(a):
    return np.ascontiguousarray(a.transpose(0, 3, 1, 2))


def _permuted(d, axes):
    """A strided view (no copy) of device array ``d`` with its axes permuted. numba's
    DeviceNDArray transposes only 2-D arrays, so on a GPU the view is built by hand."""
    if config.ENABLE_CUDASIM:
        return d.transpose(axes)
    from numba.cuda.cudadrv.devicearray import DeviceNDArray

    return DeviceNDArray(
        tuple(d.shape[a] for a in axes),
        tuple(d.strides[a] for a in axes),
        d.dtype,
        gpu_data=d.gpu_data,
    )


def _both_layouts(op, x, rois, grad, params):
    """Forward and backward of ``op`` through the NCHW and the NHWC kernels, all four
    results in NCHW: ``(y_nchw, y_nhwc, grad_x_nchw, grad_x_nhwc)``."""
    n_rois, channels = rois.shape[0], x.shape[1]
    d = cuda.to_device
    rois_d = d(rois)

    y = cuda.device_array((n_rois, channels, *OUT), x.dtype)
    module = getattr(cu, op)  # refimpl.ops.cuda.roi_align, .roi_warp, .roi_pool
    module.launch_forward(d(x), rois_d, y, *params, layout="nchw")
    g = d(np.zeros_like(x))
    module.launch_backward(d(x), rois_d, d(grad), g, *params, layout="nchw")

    x_cl = d(_nhwc(x))
    y_cl = cuda.device_array((n_rois, *OUT, channels), x.dtype)
    module.launch_forward(x_cl, rois_d, y_cl, *params, layout=CL)
    g_cl = d(np.zeros_like(_nhwc(x)))
    module.launch_backward(x_cl, rois_d, d(_nhwc(grad)), g_cl, *params, layout=CL)

    return (
        y.copy_to_host(),
        _nchw(y_cl.copy_to_host()),
        g.copy_to_host(),
        _nchw(g_cl.copy_to_host()),
    )


def _check(op, x, rois, grad, params):
    y, y_cl, g, g_cl = _both_layouts(op, x, rois, grad, params)
    np.testing.assert_array_equal(y_cl, y)  # same arithmetic, same order: bitwise
    assert_close(y_cl, getattr(py, f"{op}_forward")(x, rois, OUT, *params))
    assert_close(g_cl, g)
    assert_close(g_cl, getattr(py, f"{op}_backward")(x, rois, grad, OUT, *params))


# --- against the NCHW kernels and the python backend ------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 2])
@pytest.mark.parametrize("pool_mode", ["avg", "max"])
def test_roi_align_nhwc(dtype, aligned, sampling_ratio, pool_mode):
    x, grad = _inputs(dtype)
    _check("roi_align", x, _rois(dtype), grad, (SCALE, sampling_ratio, aligned, pool_mode))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pool_mode", ["avg", "max"])
def test_roi_warp_nhwc(dtype, pool_mode):
    x, grad = _inputs(dtype, seed=1)
    _check("roi_warp", x, _rois(dtype), grad, (SCALE, 2, pool_mode))


@pytest.mark.parametrize("dtype", DTYPES)
def test_roi_pool_nhwc(dtype):
    x, grad = _inputs(dtype, seed=2)
    rois = _rois(dtype)
    rois[2, 1:] = [1.5, 2.5, 4.5, 2.5]  # .5 after scaling by 1: C rounding, away from zero
    _check("roi_pool", x, rois, grad, (1.0,))
    _check("roi_pool", x, _rois(dtype), grad, (SCALE,))


@pytest.mark.parametrize(
    ("op", "params"),
    [("roi_align", (SCALE, 2, True, "max")), ("roi_warp", (1.0, 3, "max")), ("roi_pool", (1.0,))],
)
def test_ties_go_to_the_first_maximum(op, params):
    # A map of equal values: every sample of a bin ties, and which one "wins" decides where
    # the gradient goes. Both layouts must pick the first (iy, then ix; row-major for pool).
    _, grad = _inputs(np.float64, seed=6)
    x = np.zeros((2, 3, 6, 7))
    x[:, :, 4:] = 1.0
    _check(op, x, _rois(np.float64), grad, params)


def test_layout_is_a_checked_keyword():
    # One launch function per op and direction; the layout is a keyword-only argument,
    # "nchw" by default, and anything but the two layout names is refused by name.
    launches = [
        getattr(getattr(cu, op), f"launch_{direction}")
        for op in ("roi_align", "roi_warp", "roi_pool")
        for direction in ("forward", "backward")
    ]
    launches += [cu.roi_pool.launch_forward_with_argmax, cu.roi_pool.launch_backward_from_argmax]
    for launch in launches:
        parameter = inspect.signature(launch).parameters["layout"]
        assert parameter.kind is inspect.Parameter.KEYWORD_ONLY and parameter.default == "nchw"
    d = cuda.to_device
    x = d(np.zeros((1, 2, 4, 4), np.float32))
    rois, out = d(np.zeros((3, 5), np.float32)), cuda.device_array((3, 2, 2, 2), np.float32)
    for layout in ("nhwc", "NCHW", None):
        with pytest.raises(ValueError, match="layout must be one of"):
            cu.roi_align.launch_forward(x, rois, out, 1.0, -1, False, layout=layout)
        with pytest.raises(ValueError, match="layout must be one of"):
            cu.roi_pool.launch_backward_from_argmax(rois, out, out, x, layout=layout)


def test_strided_inputs_and_stream():
    """x and grad_out as permuted (non-contiguous) views of NCHW device arrays, as a torch
    caller may pass them; grad_x is accumulated into (a second launch doubles it)."""
    x, grad = _inputs(np.float64, seed=3)
    rois = _rois(np.float64)
    stream = cuda.stream()
    x_view = _permuted(cuda.to_device(x, stream=stream), (0, 2, 3, 1))
    grad_view = _permuted(cuda.to_device(grad, stream=stream), (0, 2, 3, 1))
    assert not x_view.is_c_contiguous() and not grad_view.is_c_contiguous()
    rois_d = cuda.to_device(rois, stream=stream)
    params = (SCALE, 2, False, "max")

    y = cuda.device_array((5, *OUT, 3), np.float64, stream=stream)
    cu.roi_align.launch_forward(x_view, rois_d, y, *params, stream=stream, layout=CL)
    grad_x = cuda.to_device(np.zeros_like(_nhwc(x)), stream=stream)
    for _ in range(2):
        cu.roi_align.launch_backward(
            x_view, rois_d, grad_view, grad_x, *params, layout=CL, stream=stream
        )
    stream.synchronize()
    y_ref, _, g_ref, _ = _both_layouts("roi_align", x, rois, grad, params)
    np.testing.assert_array_equal(_nchw(y.copy_to_host()), y_ref)
    assert_close(_nchw(grad_x.copy_to_host()), 2 * g_ref)

    grad_x = cuda.to_device(np.zeros_like(_nhwc(x)))
    cu.roi_pool.launch_backward(x_view, rois_d, grad_view, grad_x, SCALE, layout=CL)
    assert_close(_nchw(grad_x.copy_to_host()), py.roi_pool_backward(x, rois, grad, OUT, SCALE))


def test_avg_backward_takes_grad_x_as_input_stand_in():
    # The avg modes never read x: a caller without the input passes grad_x for its shape.
    x, grad = _inputs(np.float32, seed=4)
    rois = _rois(np.float32)
    grad_x = cuda.to_device(np.zeros_like(_nhwc(x)))
    params = (SCALE, -1, "avg")
    cu.roi_warp.launch_backward(
        grad_x, cuda.to_device(rois), cuda.to_device(_nhwc(grad)), grad_x, *params, layout=CL
    )
    assert_close(_nchw(grad_x.copy_to_host()), py.roi_warp_backward(x, rois, grad, OUT, *params))


def test_grid_stride_loop(monkeypatch):
    """More work than one grid: one block of 32 threads for 5 * 2 * 3 * 3 = 90 elements."""
    monkeypatch.setattr(_launch, "MAX_BLOCKS", 1)
    monkeypatch.setattr(_launch, "THREADS_PER_BLOCK", 32)
    assert _launch.launch_size(90) == (1, 32)  # read from refimpl.ops.cuda._launch at call time
    x, grad = _inputs(np.float64, seed=5)
    rois = _rois(np.float64)
    _check("roi_align", x, rois, grad, (SCALE, 2, True, "avg"))
    _check("roi_warp", x, rois, grad, (SCALE, -1, "max"))
    _check("roi_pool", x, rois, grad, (SCALE,))


# --- empty problems and launch-time errors ----------------------------------------------------


def test_empty_problems_do_not_launch(monkeypatch):
    for op in (cu.roi_align, cu.roi_pool):  # a launch would fail: there must be none
        monkeypatch.setattr(op, "_kernels", None)
    d = cuda.to_device
    for shape, n_rois in (((2, 6, 7, 3), 0), ((2, 6, 7, 0), 5)):
        x = d(np.zeros(shape, np.float32))
        rois = d(np.zeros((n_rois, 5), np.float32))
        out = cuda.device_array((n_rois, *OUT, shape[3]), np.float32)
        grad_x = d(np.zeros(shape, np.float32))
        assert cu.roi_align.launch_forward(x, rois, out, SCALE, -1, False, layout=CL) is out
        assert cu.roi_warp.launch_forward(x, rois, out, SCALE, -1, layout=CL) is out
        assert cu.roi_pool.launch_forward(x, rois, out, SCALE, layout=CL) is out
        assert (
            cu.roi_align.launch_backward(x, rois, out, grad_x, SCALE, 2, True, layout=CL) is grad_x
        )
        assert cu.roi_warp.launch_backward(x, rois, out, grad_x, SCALE, 2, layout=CL) is grad_x
        assert cu.roi_pool.launch_backward(x, rois, out, grad_x, SCALE, layout=CL) is grad_x
        assert not grad_x.copy_to_host().any()


def test_launch_errors_name_the_argument():
    d = cuda.to_device
    x = d(np.zeros((1, 4, 4, 2), np.float32))  # NHWC: C = 2
    rois = d(np.zeros((3, 5), np.float32))
    out = cuda.device_array((3, 2, 2, 2), np.float32)
    grad_x = d(np.zeros((1, 4, 4, 2), np.float32))

    def empty(shape, dtype=np.float32):
        return cuda.device_array(shape, dtype)

    with pytest.raises(ValueError, match=r"out must have shape \[K=3, PH, PW, C=2\]"):
        cu.roi_align.launch_forward(x, rois, empty((3, 2, 2, 3)), 1.0, -1, False, layout=CL)
    with pytest.raises(ValueError, match="out must have shape"):
        cu.roi_pool.launch_forward(x, rois, empty((2, 2, 2, 2)), 1.0, layout=CL)
    with pytest.raises(ValueError, match=r"grad_out must have shape \[K=3, PH, PW, C=2\]"):
        # an NCHW-ordered gradient [K, C, PH, PW] with PW != C: the channel axis is last
        cu.roi_pool.launch_backward(x, rois, empty((3, 2, 2, 3)), grad_x, 1.0, layout=CL)
    with pytest.raises(ValueError, match="grad_x must have shape"):
        cu.roi_align.launch_backward(x, rois, out, empty((1, 2, 4, 4)), 1.0, -1, False, layout=CL)
    with pytest.raises(ValueError, match=r"x must have shape \[N, H, W, C\]"):
        cu.roi_pool.launch_forward(empty((4, 4, 2)), rois, out, 1.0, layout=CL)
    with pytest.raises(TypeError, match="out must have dtype float32"):
        cu.roi_warp.launch_forward(x, rois, empty((3, 2, 2, 2), np.float64), 1.0, -1, layout=CL)
    with pytest.raises(TypeError, match="rois must have dtype float32"):
        cu.roi_pool.launch_forward(x, d(np.zeros((3, 5))), out, 1.0, layout=CL)
    with pytest.raises(TypeError, match="grad_x must have dtype float32"):
        cu.roi_pool.launch_backward(x, rois, out, d(np.zeros((1, 4, 4, 2))), 1.0, layout=CL)
    with pytest.raises(TypeError, match="x must have dtype float32 or float64"):
        cu.roi_pool.launch_forward(d(np.zeros((1, 4, 4, 2), np.int32)), rois, out, 1.0, layout=CL)
    with pytest.raises(ValueError, match="out must be C-contiguous"):
        strided_out = _permuted(empty((3, 2, 2, 2)), (0, 2, 1, 3))  # [K, PW, PH, C] as a view
        cu.roi_align.launch_forward(x, rois, strided_out, 1.0, -1, False, layout=CL)
    with pytest.raises(ValueError, match="grad_x must be C-contiguous"):
        strided = _permuted(d(np.zeros((1, 4, 4, 2), np.float32)), (0, 2, 1, 3))
        cu.roi_warp.launch_backward(x, rois, out, strided, 1.0, -1, layout=CL)
    with pytest.raises(ValueError, match="pool_mode"):
        cu.roi_align.launch_forward(x, rois, out, 1.0, -1, False, "sum", layout=CL)
    with pytest.raises(ValueError, match="pool_mode"):
        cu.roi_warp.launch_backward(x, rois, out, grad_x, 1.0, -1, "median", layout=CL)
    with pytest.raises(ValueError, match="spatial_scale"):
        cu.roi_pool.launch_forward(x, rois, out, 0.0, layout=CL)
    with pytest.raises(TypeError, match="sampling_ratio"):
        cu.roi_align.launch_forward(x, rois, out, 1.0, 1.5, False, layout=CL)
    with pytest.raises(TypeError, match="x must be a device array"):
        cu.roi_pool.launch_forward(np.zeros((1, 4, 4, 2), np.float32), rois, out, 1.0, layout=CL)
