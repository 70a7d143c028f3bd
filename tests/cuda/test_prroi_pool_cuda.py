"""PrRoIPool in the ``"cuda"`` backend and through the torch operator's CUDA path, against the
python backend (the definition). Under the CUDA simulator or on a GPU, in its own process:

    NUMBA_ENABLE_CUDASIM=1 .venv/bin/pytest tests/cuda

Small cases (the simulator runs every thread as Python): boxes inside, partly outside,
zero-size, inverted and past the far corner, both dtypes, aligned or not; the forward's
grid-stride loop, the backward's block-stride loop over RoIs and thread stride within one,
and the accumulation into both gradients.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

from refimpl.ops import BACKENDS
from tests.conftest import assert_close
from tests.cuda.device import require_device

pytestmark = pytest.mark.cudasim

numba_cuda = require_device()

cu = BACKENDS["cuda"]
py = BACKENDS["python"]
from refimpl.ops.cuda import _launch  # noqa: E402

OUT = (2, 3)
SCALE = 0.9


def _rois(dtype):
    return np.array(
        [
            [0, 0.3, 0.7, 5.2, 4.9],  # inside
            [1, -2.1, -1.3, 3.4, 8.7],  # partly outside (left, top and bottom)
            [1, 2.2, 3.1, 2.2, 3.1],  # zero size
            [0, 5.5, 4.4, 1.2, 0.9],  # inverted
            [1, 6.9, 5.8, 8.3, 7.1],  # near the far corner, partly beyond it
        ],
        dtype=dtype,
    )


def _inputs(dtype, seed=0, shape=(2, 3, 6, 7), n_rois=5, out=OUT):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=shape).astype(dtype)
    grad = rng.normal(size=(n_rois, shape[1], *out)).astype(dtype)
    return x, grad


def _check_backward(got, expected, dtype):
    for a, b in zip(got, expected, strict=True):
        assert a.dtype == dtype
        assert_close(a, b, dtype=dtype)


@pytest.mark.parametrize(
    ("dtype", "aligned", "scale"),
    [
        (np.float32, False, SCALE),
        (np.float32, True, 1.0),
        (np.float64, True, SCALE),
        (np.float64, False, 1.0),
    ],
)
def test_prroi_pool_matches_python(dtype, aligned, scale):
    x, grad = _inputs(dtype)
    rois = _rois(dtype)
    args = (OUT, scale, aligned)
    y = cu.prroi_pool_forward(x, rois, *args)
    assert y.dtype == dtype and y.shape == (5, 3, *OUT)
    assert_close(y, py.prroi_pool_forward(x, rois, *args))
    grad_x, grad_rois = cu.prroi_pool_backward(x, rois, grad, *args)
    assert grad_x.shape == x.shape and grad_rois.shape == rois.shape
    assert not grad_rois[:, 0].any() and not grad_rois[2:4].any()  # zero-size and inverted
    _check_backward((grad_x, grad_rois), py.prroi_pool_backward(x, rois, grad, *args), dtype)


def test_strides_and_overlapping_rois(monkeypatch):
    """One block of 32 threads for everything: the forward's grid-stride loop, and the
    backward's block-stride loop over 6 RoIs and thread stride over each RoI's 2 x 4 x 5 = 40
    elements; overlapping RoIs must not lose atomic updates."""
    monkeypatch.setattr(_launch, "MAX_BLOCKS", 1)
    monkeypatch.setattr(_launch, "THREADS_PER_BLOCK", 32)
    monkeypatch.setattr(cu.prroi_pool, "THREADS", 32)
    out = (4, 5)  # 2 channels x 20 bins = 40 elements per RoI > 32 threads
    x, grad = _inputs(np.float64, seed=3, shape=(1, 2, 5, 5), n_rois=6, out=out)
    rois = np.tile([[0, 0.6, 0.4, 3.7, 3.9]], (6, 1))
    rois[:, 1:] += np.linspace(0, 0.7, 6)[:, None]
    args = (out, 1.0, True)
    assert_close(cu.prroi_pool_forward(x, rois, *args), py.prroi_pool_forward(x, rois, *args))
    _check_backward(
        cu.prroi_pool_backward(x, rois, grad, *args),
        py.prroi_pool_backward(x, rois, grad, *args),
        np.float64,
    )


def test_launch_functions_accumulate_and_check():
    cuda = numba_cuda
    x, grad = _inputs(np.float64, seed=6)
    rois = _rois(np.float64)
    x_d, rois_d, grad_d = (cuda.to_device(a) for a in (x, rois, grad))
    out = cuda.device_array((5, 3, *OUT), np.float64)
    cu.prroi_pool.launch_forward(x_d, rois_d, out, SCALE, True)
    assert_close(out.copy_to_host(), py.prroi_pool_forward(x, rois, OUT, SCALE, True))
    grad_x = cuda.to_device(np.zeros_like(x))
    start = np.zeros_like(rois)
    start[:, 0] = 7.0  # column 0 is never written
    grad_rois = cuda.to_device(start)
    for _ in range(2):  # accumulated into: two launches give twice the gradients
        cu.prroi_pool.launch_backward(x_d, rois_d, grad_d, grad_x, grad_rois, SCALE, True)
    ref_x, ref_rois = py.prroi_pool_backward(x, rois, grad, OUT, SCALE, True)
    ref_rois[:, 0] = 3.5
    assert_close(grad_x.copy_to_host(), 2 * ref_x)
    assert_close(grad_rois.copy_to_host(), 2 * ref_rois)

    with pytest.raises(ValueError, match="grad_rois must have shape"):
        cu.prroi_pool.launch_backward(
            x_d, rois_d, grad_d, grad_x, cuda.device_array((5, 4)), SCALE, True
        )
    with pytest.raises(TypeError, match="grad_rois must have dtype float64"):
        cu.prroi_pool.launch_backward(
            x_d, rois_d, grad_d, grad_x, cuda.device_array((5, 5), np.float32), SCALE, True
        )
    with pytest.raises(ValueError, match="out must have shape"):
        cu.prroi_pool.launch_forward(x_d, rois_d, cuda.device_array((5, 2, 2, 3)), SCALE, True)


def test_empty_and_invalid_inputs():
    x, _ = _inputs(np.float32)
    no_rois = np.zeros((0, 5), np.float32)
    assert cu.prroi_pool_forward(x, no_rois, OUT).shape == (0, 3, *OUT)
    grad_x, grad_rois = cu.prroi_pool_backward(x, no_rois, np.zeros((0, 3, *OUT), np.float32), OUT)
    assert grad_x.shape == x.shape and not grad_x.any() and grad_rois.shape == (0, 5)
    bad = _rois(np.float32)
    bad[0, 3] = np.nan
    with pytest.raises(ValueError, match="finite"):
        cu.prroi_pool_forward(x, bad, OUT)


# --- the torch operator's CUDA path, on simulator arrays over CPU tensors ------------------------


@pytest.fixture
def torch_ops_on_simulator(monkeypatch):
    """As tests/cuda/test_torch_ops_cudasim.py: numba views of CPU tensors stand in for
    torch's CUDA memory, so the CUDA kernels' torch glue runs as on a GPU."""
    torch = pytest.importorskip("torch")
    from numba import config

    if not config.ENABLE_CUDASIM:
        pytest.skip("a real GPU: tests/ops/test_prroi_torch_op.py covers it")
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

    import refimpl.ops
    from refimpl.ops.torch import cuda_kernels

    @contextlib.contextmanager
    def numba_cuda_on_cpu(_device):
        yield (lambda t: FakeCUDAArray(t.detach().numpy())), 0

    monkeypatch.setattr(cuda_kernels, "numba_cuda", numba_cuda_on_cpu)
    return torch, refimpl.ops, cuda_kernels


@pytest.mark.parametrize("dtype_name", ["float64", "float16"])
def test_torch_cuda_path_matches_cpu(torch_ops_on_simulator, dtype_name):
    torch, ops, K = torch_ops_on_simulator
    dtype = getattr(torch, dtype_name)
    x_np, grad_np = _inputs(np.float64, seed=8, n_rois=4)
    x = torch.from_numpy(x_np).to(dtype)
    rois_np = _rois(np.float64)[:4]
    rois_np[:, 1:] *= 0.5 / SCALE  # the same boxes on the map at scale 0.5
    rois = torch.from_numpy(rois_np)
    rois = rois.to(torch.float32 if dtype == torch.float16 else dtype)
    grad = torch.from_numpy(grad_np).to(dtype)
    x_req, rois_req = x.clone().requires_grad_(True), rois.clone().requires_grad_(True)
    y_cpu = ops.prroi_pool(x_req, rois_req, OUT, 0.5, True)
    gx_cpu, gr_cpu = torch.autograd.grad(y_cpu, (x_req, rois_req), grad)

    y = K.roi_forward("prroi_pool_forward", x, rois, OUT, 0.5, True)
    assert y.dtype == dtype
    torch.testing.assert_close(y, y_cpu, rtol=1e-6, atol=1e-6)
    gx, gr = K.prroi_pool_backward(grad, x, rois, OUT, 0.5, True)
    assert gx.dtype == dtype and gr.dtype == rois.dtype
    torch.testing.assert_close(gx, gx_cpu, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gr, gr_cpu, rtol=1e-5, atol=1e-5)
    bad = rois.clone()
    bad[1, 0] = 2  # batch index out of range: refused before the launch
    with pytest.raises(ValueError, match=r"rois\[:, 0\]"):
        K.prroi_pool_backward(grad, x, bad, OUT, 0.5, True)
