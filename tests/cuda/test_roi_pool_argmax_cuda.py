"""RoIPool with a saved argmax on CUDA (refimpl.ops.cuda.roi_pool's ``launch_forward_with_argmax``
and ``launch_backward_from_argmax``, NCHW and channels-last, and the NumPy-interface
``roi_pool_forward_with_argmax`` / ``roi_pool_backward_from_argmax``).

Runs in its own process, under the CUDA simulator or on a GPU:

    NUMBA_ENABLE_CUDASIM=1 .venv/bin/pytest tests/cuda

The forward is the plain RoIPool kernel with one more store: its output must be bitwise
that of ``roi_pool.launch_forward``, and output and argmax exactly the numba backend's (the
same first maximum, -1 for a bin clipped off the map). The backward scatters with atomic
adds, whose order varies: equal to the python and numba backends up to rounding. The box
set is test_cuda_backend's, with every awkward kind of box.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

from refimpl.ops import BACKENDS
from tests.conftest import assert_close
from tests.cuda.device import require_device

pytestmark = pytest.mark.cudasim

numba_cuda = require_device()

from refimpl.ops import cuda as cu  # noqa: E402
from refimpl.ops.cuda import _launch  # noqa: E402
from tests.cuda.test_channels_last import _nchw, _nhwc, _permuted  # noqa: E402
from tests.cuda.test_cuda_backend import OUT, SCALE, _inputs, _rois  # noqa: E402

cuda = numba_cuda
nb = BACKENDS["numba"]
py = BACKENDS["python"]
DTYPES = (np.float32, np.float64)
LAYOUTS = ("nchw", "channels_last")


def _to(layout, a):
    """An NCHW host array in ``layout`` (C-contiguous)."""
    return _nhwc(a) if layout == "channels_last" else np.ascontiguousarray(a)


def _from(layout, a):
    return _nchw(a) if layout == "channels_last" else a


def _forward(layout, x, rois, scale):
    """``(y, argmax, y_plain)`` in NCHW: the argmax launch and the plain RoIPool launch."""
    launch = functools.partial(cu.roi_pool.launch_forward_with_argmax, layout=layout)
    plain = functools.partial(cu.roi_pool.launch_forward, layout=layout)
    x_d = cuda.to_device(_to(layout, x))
    rois_d = cuda.to_device(rois)
    shape = _to(layout, np.empty((rois.shape[0], x.shape[1], *OUT))).shape
    y = cuda.device_array(shape, x.dtype)
    argmax = cuda.to_device(np.full(shape, 99, np.int64))  # every element is overwritten
    returned = launch(x_d, rois_d, y, argmax, scale)
    assert returned[0] is y and returned[1] is argmax
    y_plain = cuda.device_array(shape, x.dtype)
    plain(x_d, rois_d, y_plain, scale)
    return (
        _from(layout, y.copy_to_host()),
        _from(layout, argmax.copy_to_host()),
        _from(layout, y_plain.copy_to_host()),
    )


def _backward(layout, x, rois, grad, argmax, times=1):
    """grad_x (NCHW) from ``roi_pool.launch_backward_from_argmax``, ``times`` launches into
    one buffer (it is accumulated into). In channels-last, grad_out and argmax are permuted
    (strided) views of NCHW device arrays, as a torch caller may pass them."""
    launch = functools.partial(cu.roi_pool.launch_backward_from_argmax, layout=layout)
    grad_d = cuda.to_device(grad)
    argmax_d = cuda.to_device(argmax)
    if layout == "channels_last":
        grad_d = _permuted(grad_d, (0, 2, 3, 1))
        argmax_d = _permuted(argmax_d, (0, 2, 3, 1))
    grad_x = cuda.to_device(np.zeros_like(_to(layout, x)))
    for _ in range(times):
        assert launch(cuda.to_device(rois), grad_d, argmax_d, grad_x) is grad_x
    return _from(layout, grad_x.copy_to_host())


def _check(layout, x, rois, grad, scale):
    y, argmax, y_plain = _forward(layout, x, rois, scale)
    y_ref, argmax_ref = nb.roi_pool_forward_with_argmax(x, rois, OUT, scale)
    np.testing.assert_array_equal(y, y_plain)  # one kernel body: bitwise
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(argmax, argmax_ref)
    assert y.dtype == x.dtype and argmax.dtype == np.int64
    grad_x = _backward(layout, x, rois, grad, argmax)
    assert_close(grad_x, py.roi_pool_backward(x, rois, grad, OUT, scale))
    assert_close(grad_x, nb.roi_pool_backward_from_argmax(x, rois, grad, argmax, OUT, scale))
    return argmax


# --- against the plain kernel, the numba backend and the python backend ----------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_matches_plain_kernel_and_backends(dtype, layout):
    x, grad = _inputs(dtype, seed=2)
    argmax = _check(layout, x, _rois(dtype), grad, SCALE)
    # Bins clipped off the map (boxes 1 and 4) are empty: -1, and pool to 0.
    assert (argmax[1] == -1).any() and (argmax[4] == -1).any()
    assert (argmax[[0, 2, 3]] >= 0).all()  # zero-size and inverted boxes cover one pixel
    rois = _rois(dtype)
    rois[2, 1:] = [1.5, 2.5, 4.5, 2.5]  # .5 after scaling by 1: C rounding, away from zero
    _check(layout, x, rois, grad, 1.0)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_ties_go_to_the_first_maximum(layout):
    # A map of equal values: every pixel of a bin ties; the argmax (and so the gradient)
    # must be the first in row-major order, as in the numba and python backends.
    _, grad = _inputs(np.float64, seed=6)
    x = np.zeros((2, 3, 6, 7))
    x[:, :, 4:] = 1.0
    _check(layout, x, _rois(np.float64), grad, 1.0)


def test_backward_accumulates():
    x, grad = _inputs(np.float64, seed=3)
    rois = _rois(np.float64)
    _, argmax, _ = _forward("nchw", x, rois, SCALE)
    for layout in LAYOUTS:
        assert_close(
            _backward(layout, x, rois, grad, argmax, times=2),
            2 * py.roi_pool_backward(x, rois, grad, OUT, SCALE),
        )


def test_grid_stride_loop(monkeypatch):
    """More work than one grid: one block of 32 threads for 5 * 3 * 2 * 3 = 90 elements."""
    monkeypatch.setattr(_launch, "MAX_BLOCKS", 1)
    monkeypatch.setattr(_launch, "THREADS_PER_BLOCK", 32)
    assert _launch.launch_size(90) == (1, 32)
    x, grad = _inputs(np.float32, seed=5)
    for layout in LAYOUTS:
        _check(layout, x, _rois(np.float32), grad, SCALE)


# --- the NumPy interface ----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_numpy_interface_matches_numba(dtype):
    x, grad = _inputs(dtype, seed=4)
    rois = _rois(dtype)
    y, argmax = cu.roi_pool_forward_with_argmax(x, rois, OUT, SCALE)
    y_ref, argmax_ref = nb.roi_pool_forward_with_argmax(x, rois, OUT, SCALE)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(argmax, argmax_ref)
    assert y.dtype == dtype and argmax.dtype == np.int64
    np.testing.assert_array_equal(y, cu.roi_pool_forward(x, rois, OUT, SCALE))
    args = (x, rois, grad, argmax, OUT, SCALE)
    grad_x = cu.roi_pool_backward_from_argmax(*args)
    assert grad_x.dtype == dtype
    assert_close(grad_x, nb.roi_pool_backward_from_argmax(*args))
    # a non-contiguous argmax is fine (copied to the device contiguous)
    strided = np.asfortranarray(argmax)
    assert_close(cu.roi_pool_backward_from_argmax(x, rois, grad, strided, OUT, SCALE), grad_x)


def test_numpy_interface_empty():
    x, grad = _inputs(np.float64)
    rois = np.zeros((0, 5))
    y, argmax = cu.roi_pool_forward_with_argmax(x, rois, OUT, SCALE)
    assert y.shape == argmax.shape == (0, 3, *OUT) and argmax.dtype == np.int64
    grad_x = cu.roi_pool_backward_from_argmax(x, rois, grad[:0], argmax, OUT, SCALE)
    assert grad_x.shape == x.shape and not grad_x.any()


def test_numpy_interface_validates_argmax():
    x, grad = _inputs(np.float64)
    rois = _rois(np.float64)
    _, argmax = cu.roi_pool_forward_with_argmax(x, rois, OUT, SCALE)

    def backward(a):
        return cu.roi_pool_backward_from_argmax(x, rois, grad, a, OUT, SCALE)

    for bad in (6 * 7, -2):  # H * W: one past the plane; -2: below the empty-bin -1
        a = argmax.copy()
        a[0, 1, 1, 2] = bad
        with pytest.raises(ValueError, match=r"argmax must lie in \[-1, 42\)"):
            backward(a)
    with pytest.raises(TypeError, match="argmax must have dtype int64, got int32"):
        backward(argmax.astype(np.int32))
    with pytest.raises(ValueError, match=r"argmax must be an array of shape \(5, 3, 2, 3\)"):
        backward(argmax[:, :, :1])
    with pytest.raises(ValueError, match="argmax must be an array of shape"):
        backward(argmax.tolist())


# --- the kernel's guard, empty problems, launch-time errors ----------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
def test_out_of_range_argmax_writes_nothing(layout):
    """The launch does not check values (the caller validated them); the kernel must still
    skip an argmax outside the plane, or a batch index outside [0, N), without failing."""
    x, grad = _inputs(np.float64, seed=7)
    rois = _rois(np.float64)
    _, argmax, _ = _forward("nchw", x, rois, SCALE)
    bad = argmax.copy()
    bad[0, 0, 0, 0] = 6 * 7  # H * W
    bad[0, 1, 1, 2] = -5
    bad[2, 2, 0, 1] = 10**12
    bad_rois = rois.copy()
    bad_rois[3, 0] = 2  # N = 2
    keep = np.ones(grad.shape, bool)
    keep[0, 0, 0, 0] = keep[0, 1, 1, 2] = keep[2, 2, 0, 1] = False
    keep[3] = False
    expected = nb.roi_pool_backward_from_argmax(x, rois, grad * keep, argmax, OUT, SCALE)
    assert_close(_backward(layout, x, bad_rois, grad, bad), expected)


def test_empty_problems_do_not_launch(monkeypatch):
    monkeypatch.setattr(cu.roi_pool, "_kernels", None)  # a launch would fail: there must be none
    d = cuda.to_device
    for layout in LAYOUTS:
        for x_shape, n_rois in (((2, 3, 6, 7), 0), ((2, 0, 6, 7), 5)):
            x = d(_to(layout, np.zeros(x_shape, np.float32)))
            rois = d(np.zeros((n_rois, 5), np.float32))
            shape = _to(layout, np.empty((n_rois, x_shape[1], *OUT))).shape
            out = cuda.device_array(shape, np.float32)
            argmax = cuda.device_array(shape, np.int64)
            grad_x = d(_to(layout, np.zeros(x_shape, np.float32)))
            forward = functools.partial(cu.roi_pool.launch_forward_with_argmax, layout=layout)
            backward = functools.partial(cu.roi_pool.launch_backward_from_argmax, layout=layout)
            returned = forward(x, rois, out, argmax, SCALE)
            assert returned[0] is out and returned[1] is argmax
            assert backward(rois, out, argmax, grad_x) is grad_x
            assert not grad_x.copy_to_host().any()


def test_forward_launch_errors_name_the_argument():
    d = cuda.to_device
    x = d(np.zeros((1, 2, 4, 4), np.float32))  # NCHW: C = 2
    rois = d(np.zeros((3, 5), np.float32))
    out = cuda.device_array((3, 2, 2, 2), np.float32)
    argmax = cuda.device_array((3, 2, 2, 2), np.int64)
    forward = cu.roi_pool.launch_forward_with_argmax

    with pytest.raises(TypeError, match="argmax must have dtype int64, got int32"):
        forward(x, rois, out, cuda.device_array((3, 2, 2, 2), np.int32), 1.0)
    with pytest.raises(ValueError, match=r"argmax must have shape \(3, 2, 2, 2\)"):
        forward(x, rois, out, cuda.device_array((3, 2, 2, 1), np.int64), 1.0)
    with pytest.raises(ValueError, match="argmax must be C-contiguous"):
        strided = _permuted(cuda.device_array((3, 2, 2, 2), np.int64), (0, 1, 3, 2))
        forward(x, rois, out, strided, 1.0)
    with pytest.raises(TypeError, match="argmax must be a device array"):
        forward(x, rois, out, np.zeros((3, 2, 2, 2), np.int64), 1.0)
    with pytest.raises(ValueError, match=r"out must have shape \[K=3, C=2, PH, PW\]"):
        forward(x, rois, cuda.device_array((3, 3, 2, 2), np.float32), argmax, 1.0)
    with pytest.raises(ValueError, match=r"out must have shape \[K=3, PH, PW, C=4\]"):
        cu.roi_pool.launch_forward_with_argmax(x, rois, out, argmax, 1.0, layout="channels_last")
    with pytest.raises(TypeError, match="rois must have dtype float32"):
        forward(x, d(np.zeros((3, 5))), out, argmax, 1.0)
    with pytest.raises(ValueError, match="spatial_scale"):
        forward(x, rois, out, argmax, -1.0)


def test_backward_launch_errors_name_the_argument():
    d = cuda.to_device
    grad_x = d(np.zeros((1, 2, 4, 4), np.float32))  # NCHW: C = 2
    rois = d(np.zeros((3, 5), np.float32))
    grad_out = d(np.zeros((3, 2, 2, 2), np.float32))
    argmax = d(np.zeros((3, 2, 2, 2), np.int64))
    backward = cu.roi_pool.launch_backward_from_argmax

    with pytest.raises(TypeError, match="argmax must have dtype int64, got float32"):
        backward(rois, grad_out, grad_out, grad_x)
    with pytest.raises(ValueError, match=r"argmax must have shape \(3, 2, 2, 2\)"):
        backward(rois, grad_out, d(np.zeros((3, 2, 2), np.int64)), grad_x)
    with pytest.raises(ValueError, match=r"grad_out must have shape \[K=3, C=2, PH, PW\]"):
        backward(rois, d(np.zeros((2, 2, 2, 2), np.float32)), argmax, grad_x)  # K != 3
    with pytest.raises(ValueError, match=r"grad_out must have shape \[K=3, C=2, PH, PW\]"):
        backward(rois, d(np.zeros((3, 1, 2, 2), np.float32)), argmax, grad_x)  # C != 2
    with pytest.raises(ValueError, match=r"grad_out must have shape \[K=3, PH, PW, C=4\]"):
        # NHWC grad_x [1, 2, 4, 4] has C = 4: an NCHW grad_out does not fit it
        cu.roi_pool.launch_backward_from_argmax(
            rois, grad_out, argmax, grad_x, layout="channels_last"
        )
    with pytest.raises(ValueError, match=r"grad_x must have shape \[N, C, H, W\]"):
        backward(rois, grad_out, argmax, d(np.zeros((2, 4, 4), np.float32)))
    with pytest.raises(TypeError, match="grad_x must have dtype float32 or float64"):
        backward(rois, grad_out, argmax, d(np.zeros((1, 2, 4, 4), np.int32)))
    with pytest.raises(TypeError, match="grad_out must have dtype float64"):
        backward(d(np.zeros((3, 5))), grad_out, argmax, d(np.zeros((1, 2, 4, 4))))
    with pytest.raises(TypeError, match="rois must have dtype float32"):
        backward(d(np.zeros((3, 5))), grad_out, argmax, grad_x)
    with pytest.raises(ValueError, match=r"rois must have shape \[K, 5\]"):
        backward(d(np.zeros((3, 4), np.float32)), grad_out, argmax, grad_x)
    with pytest.raises(ValueError, match="grad_x must be C-contiguous"):
        backward(
            rois, grad_out, argmax, _permuted(d(np.zeros((1, 2, 4, 4), np.float32)), (0, 1, 3, 2))
        )
    with pytest.raises(TypeError, match="grad_x must be a device array"):
        backward(rois, grad_out, argmax, np.zeros((1, 2, 4, 4), np.float32))
