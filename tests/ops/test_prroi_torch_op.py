"""PrRoIPool as a torch operator (``torch.ops.refimpl.prroi_pool``): registration, gradients
to the input AND the boxes, tracing, and agreement with the python backend (the definition).

The kernels' numerics are tested backend by backend in test_prroi_pool.py (and, for CUDA,
in tests/cuda); here the operator around them.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import refimpl.ops
import refimpl.ops as T
from refimpl.ops import BACKEND_FUNCTIONS, BACKENDS, PrRoIPool

ops = torch.ops.refimpl
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
TOL = {torch.float32: 1e-5, torch.float64: 1e-9}
X_SHAPE = (2, 3, 7, 8)
OUT = (2, 3)


def _x(dtype=torch.float64, shape=X_SHAPE, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(dtype=dtype, device=device)


def _off_lattice(v: torch.Tensor, scale: float, out: tuple[int, int]) -> torch.Tensor:
    """Nudge boxes until no bin edge (in feature coordinates, both for ``aligned`` and not)
    lies within 0.05 of an integer: there the map's integral changes its second derivative,
    and a finite difference straddling it is a little off."""
    v = v.clone()
    for k in range(v.shape[0]):
        for _ in range(50):
            x1, y1, x2, y2 = (v[k] * scale).tolist()
            edges = [x1 + (x2 - x1) * i / out[1] for i in range(out[1] + 1)]
            edges += [y1 + (y2 - y1) * i / out[0] for i in range(out[0] + 1)]
            frac = np.remainder(np.array(edges) * 2, 1.0)  # integers and half-integers
            if ((frac > 0.1) & (frac < 0.9)).all():
                break
            v[k] += torch.tensor([0.037, 0.053, 0.071, 0.029], dtype=v.dtype) / scale
    return v


def _coords(k=4, h=7, w=8, scale=1.0, seed=1, dtype=torch.float64):
    """Random boxes [K, 4] in image coordinates: mostly on the map, some partly outside."""
    g = torch.Generator().manual_seed(seed)
    x1 = torch.rand(k, generator=g, dtype=torch.float64) * (w - 1.5) - 0.7
    y1 = torch.rand(k, generator=g, dtype=torch.float64) * (h - 1.5) - 0.7
    x2 = x1 + 1.2 + torch.rand(k, generator=g, dtype=torch.float64) * (w - x1)
    y2 = y1 + 1.2 + torch.rand(k, generator=g, dtype=torch.float64) * (h - y1)
    boxes = torch.stack([x1, y1, x2, y2], dim=1) / scale
    return _off_lattice(boxes, scale, OUT).to(dtype)


def _batch(k=4, n_images=2, dtype=torch.float64):
    return torch.arange(k, dtype=torch.float64).remainder(n_images)[:, None].to(dtype)


def _rois(dtype=torch.float64, k=4, scale=1.0, seed=1, device="cpu"):
    rois = torch.cat([_batch(k), _coords(k, scale=scale, seed=seed)], dim=1)
    return rois.to(dtype=dtype, device=device)


# --- the package's names -------------------------------------------------------------------------


def test_exported_names():
    assert refimpl.ops.prroi_pool is T.prroi_pool
    assert refimpl.ops.PrRoIPool is PrRoIPool
    assert {"prroi_pool", "PrRoIPool"} <= set(refimpl.ops.__all__)
    assert {"prroi_pool_forward", "prroi_pool_backward"} <= set(BACKEND_FUNCTIONS)
    for name in ("python", "numpy", "numba"):
        for fn in BACKEND_FUNCTIONS:
            assert callable(getattr(BACKENDS[name], fn)), (name, fn)


# --- registration: opcheck ---------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("aligned", [False, True])
def test_opcheck_forward(dtype, aligned):
    x = _x(dtype).requires_grad_(True)
    rois = _rois(dtype, scale=0.5).requires_grad_(True)
    torch.library.opcheck(ops.prroi_pool.default, (x, rois, 0.5, *OUT, aligned))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_opcheck_backward(dtype):
    x, rois = _x(dtype), _rois(dtype, scale=0.5)
    grad = torch.randn(rois.shape[0], x.shape[1], *OUT, dtype=dtype)
    torch.library.opcheck(ops.prroi_pool_backward.default, (grad, x, rois, 0.5, *OUT, True))


def test_opcheck_float16_and_empty():
    x = _x(torch.float16).requires_grad_(True)
    torch.library.opcheck(ops.prroi_pool.default, (x, _rois(torch.float32), 1.0, 2, 3, False))
    empty = torch.zeros((0, 5), dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(
        ops.prroi_pool.default, (_x().requires_grad_(True), empty, 1.0, 2, 3, True)
    )


# --- autograd: gradcheck to the input and to the boxes -------------------------------------------


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_gradcheck_input_and_boxes(aligned, scale):
    x = _x().requires_grad_(True)
    coords = _coords(scale=scale).requires_grad_(True)
    batch = _batch()

    def f(t, c):  # the batch index is not a variable: gradcheck the coordinates only
        return T.prroi_pool(t, torch.cat([batch, c], dim=1), OUT, scale, aligned)

    assert torch.autograd.gradcheck(f, (x, coords))


def test_gradcheck_list_of_boxes():
    x = _x().requires_grad_(True)
    a = _coords(3, seed=4).requires_grad_(True)
    b = _coords(2, seed=5).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t, p, q: T.prroi_pool(t, [p, q], OUT), (x, a, b))


def test_box_gradient_of_the_roi_tensor():
    """A [K, 5] RoI tensor gets a [K, 5] gradient, column 0 (the batch index) zero, equal to
    the python backend's; only what is asked for is computed and returned."""
    x = _x().requires_grad_(True)
    rois = _rois(scale=0.5).requires_grad_(True)
    y = T.prroi_pool(x, rois, OUT, 0.5, True)
    grad = torch.randn_like(y)
    gx, gr = torch.autograd.grad(y, (x, rois), grad)
    assert gr.shape == rois.shape and (gr[:, 0] == 0).all() and gr[:, 1:].abs().sum() > 0
    ref_gx, ref_gr = BACKENDS["python"].prroi_pool_backward(
        x.detach().numpy(), rois.detach().numpy(), grad.numpy(), OUT, 0.5, True
    )
    torch.testing.assert_close(gx, torch.from_numpy(ref_gx), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(gr, torch.from_numpy(ref_gr), rtol=1e-9, atol=1e-9)
    # boxes only, input only
    boxes_only = _rois(scale=0.5).requires_grad_(True)
    (g,) = torch.autograd.grad(
        T.prroi_pool(x.detach(), boxes_only, OUT, 0.5, True), boxes_only, grad
    )
    torch.testing.assert_close(g, gr)
    (g,) = torch.autograd.grad(T.prroi_pool(x, rois.detach(), OUT, 0.5, True), x, grad)
    torch.testing.assert_close(g, gx)


def test_list_of_boxes_keeps_the_graph_to_the_boxes():
    x = _x()
    per_image = [_coords(3, seed=6).requires_grad_(True), _coords(2, seed=7).requires_grad_(True)]
    assert T.convert_boxes_to_roi_format(per_image).requires_grad
    y = T.prroi_pool(x, per_image, OUT, 1.0)
    grads = torch.autograd.grad(y.sum(), per_image)
    rois5 = T.convert_boxes_to_roi_format([b.detach() for b in per_image]).requires_grad_(True)
    (g5,) = torch.autograd.grad(T.prroi_pool(x, rois5, OUT, 1.0).sum(), rois5)
    torch.testing.assert_close(torch.cat(grads), g5[:, 1:])


def test_backward_without_any_grad_is_skipped():
    w = torch.ones((), dtype=torch.float64, requires_grad=True)
    y = T.prroi_pool(_x(), _rois(), OUT) * w
    y.sum().backward()
    assert w.grad is not None


# --- agreement with the python backend (the definition) ------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("aligned", [False, True])
def test_matches_the_python_backend(dtype, aligned):
    x = _x(dtype, shape=(2, 3, 9, 8), seed=3).requires_grad_(True)
    g = torch.Generator().manual_seed(4)
    xy = torch.rand(6, 2, generator=g, dtype=torch.float64) * 24 - 6
    wh = torch.rand(6, 2, generator=g, dtype=torch.float64) * 14 - 2  # some inverted
    rois = torch.cat([_batch(6), xy, xy + wh], 1).to(dtype).requires_grad_(True)
    y = T.prroi_pool(x, rois, OUT, 0.5, aligned)
    grad = torch.randn(y.shape, generator=g, dtype=torch.float64).to(dtype)
    gx, gr = torch.autograd.grad(y, (x, rois), grad)
    py = BACKENDS["python"]
    args = (x.detach().numpy(), rois.detach().numpy())
    tol = TOL[dtype]
    torch.testing.assert_close(
        y, torch.from_numpy(py.prroi_pool_forward(*args, OUT, 0.5, aligned)), rtol=tol, atol=tol
    )
    ref_gx, ref_gr = py.prroi_pool_backward(*args, grad.numpy(), OUT, 0.5, aligned)
    torch.testing.assert_close(gx, torch.from_numpy(ref_gx), rtol=tol, atol=tol)
    torch.testing.assert_close(gr, torch.from_numpy(ref_gr), rtol=tol, atol=tol)


def test_module_matches_the_function_and_half_precision():
    x, rois = _x(), _rois(scale=0.5)
    torch.testing.assert_close(
        PrRoIPool(OUT, 0.5, aligned=True)(x, rois), T.prroi_pool(x, rois, OUT, 0.5, True)
    )
    assert (
        repr(PrRoIPool(7, 1 / 16))
        == "PrRoIPool(output_size=7, spatial_scale=0.0625, aligned=False)"
    )
    x16 = (_x(torch.float32) / 10).half().requires_grad_(True)
    rois32 = _rois(torch.float32).requires_grad_(True)
    y = T.prroi_pool(x16, rois32, OUT)
    assert y.dtype == torch.float16
    torch.testing.assert_close(y, T.prroi_pool(x16.detach().float(), rois32, OUT).half())
    gx, gr = torch.autograd.grad(y.float().sum(), (x16, rois32))
    assert gx.dtype == torch.float16 and gr.dtype == torch.float32


def test_errors_name_the_argument():
    x, rois = _x(), _rois()
    with pytest.raises(TypeError, match="aligned"):
        T.prroi_pool(x, rois, OUT, aligned="yes")
    with pytest.raises(ValueError, match="output_size"):
        T.prroi_pool(x, rois, (0, 2))
    with pytest.raises(ValueError, match="spatial_scale"):
        T.prroi_pool(x, rois, OUT, 0.0)
    with pytest.raises(ValueError, match="boxes"):
        T.prroi_pool(x, rois[:, 1:], OUT)
    bad = rois.clone()
    bad[0, 0] = 2
    with pytest.raises(ValueError, match=r"rois\[:, 0\]"):
        T.prroi_pool(x, bad, OUT)


# --- tracing: torch.compile and torch.export -----------------------------------------------------


def _head(x, rois):
    return T.prroi_pool(x, rois, OUT, 0.5, True) * 2 + T.roi_align(x, rois, OUT, 0.5, 2)


def test_torch_compile_fullgraph_equals_eager():
    torch._dynamo.reset()
    x = _x(torch.float32).requires_grad_(True)
    rois = _rois(torch.float32, scale=0.5).requires_grad_(True)
    try:
        compiled = torch.compile(_head, fullgraph=True, backend="inductor")
        y = compiled(x, rois)
    except Exception as err:  # no usable C++ toolchain for inductor: trace with aot_eager
        if "inductor" not in type(err).__module__ and "CppCompileError" not in repr(err):
            raise
        torch._dynamo.reset()
        compiled = torch.compile(_head, fullgraph=True, backend="aot_eager")
        y = compiled(x, rois)
    y_eager = _head(x, rois)
    torch.testing.assert_close(y, y_eager)
    grads = torch.autograd.grad(y.square().sum(), (x, rois))
    grads_eager = torch.autograd.grad(y_eager.square().sum(), (x, rois))
    for g, g_eager in zip(grads, grads_eager, strict=True):
        torch.testing.assert_close(g, g_eager)


def test_torch_export():
    class Head(torch.nn.Module):
        def forward(self, x, rois):
            return PrRoIPool(OUT, 0.5)(x, rois)

    args = (_x(), _rois(scale=0.5))
    exported = torch.export.export(Head(), args)
    names = {str(n.target) for n in exported.graph.nodes if n.op == "call_function"}
    assert "refimpl.prroi_pool.default" in names
    torch.testing.assert_close(exported.module()(*args), Head()(*args))


# --- CUDA (skipped without a GPU) ----------------------------------------------------------------


@CUDA
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("aligned", [False, True])
def test_cuda_matches_cpu(dtype, aligned):
    x = _x(dtype).requires_grad_(True)
    rois = _rois(dtype, k=6, scale=0.5).requires_grad_(True)
    x_cuda = x.detach().cuda().requires_grad_(True)
    rois_cuda = rois.detach().cuda().requires_grad_(True)
    y_cpu = T.prroi_pool(x, rois, OUT, 0.5, aligned)
    y_cuda = T.prroi_pool(x_cuda, rois_cuda, OUT, 0.5, aligned)
    tol = TOL[dtype]
    torch.testing.assert_close(y_cuda.cpu(), y_cpu, rtol=tol, atol=tol)
    grad = torch.randn_like(y_cpu)
    for g_cuda, g_cpu in zip(
        torch.autograd.grad(y_cuda, (x_cuda, rois_cuda), grad.cuda()),
        torch.autograd.grad(y_cpu, (x, rois), grad),
        strict=True,
    ):
        torch.testing.assert_close(g_cuda.cpu(), g_cpu, rtol=tol, atol=tol)


@CUDA
def test_cuda_opcheck_gradcheck_and_compile():
    x = _x(device="cuda").requires_grad_(True)
    rois = _rois(scale=0.5, device="cuda").requires_grad_(True)
    torch.library.opcheck(ops.prroi_pool.default, (x, rois, 0.5, *OUT, True))
    coords = _coords(scale=0.5).cuda().requires_grad_(True)
    batch = _batch().cuda()

    def f(t, c):
        return T.prroi_pool(t, torch.cat([batch, c], 1), OUT, 0.5, True)

    # float64 atomic adds are not bitwise deterministic in their order
    assert torch.autograd.gradcheck(f, (x, coords), nondet_tol=1e-12)
    torch._dynamo.reset()
    xf, rf = x.detach().float().requires_grad_(True), rois.detach().float()
    torch.testing.assert_close(torch.compile(_head, fullgraph=True)(xf, rf), _head(xf, rf))
