"""Grading tests for exercise 08: a NumPy RoIAlign as the PyTorch operator
``mycourse::roi_align``, with a fake kernel, a backward operator and an autograd formula.

The oracle is refimpl's definition (``BACKENDS["python"]``); PyTorch's own tools judge the
registration (``torch.autograd.gradcheck``, ``torch.library.opcheck``, ``torch.compile``).
"""

from __future__ import annotations

import numpy as np
import torch

from refimpl.course.checks import check_array, describe, fail, points, random_features, random_rois
from refimpl.ops.python import roi_align_backward as ref_backward
from refimpl.ops.python import roi_align_forward as ref_forward

# Each test runs in a forked process: torch's OpenMP pool and numba's GNU OpenMP layer are not
# fork-safe once started.
ENVIRONMENT = {"NUMBA_THREADING_LAYER": "workqueue", "OMP_NUM_THREADS": "1"}


def case(rng, k=5, n=2, c=3, h=8, w=9, scale=0.5, dtype=np.float64, **kwargs):
    x = random_features(rng, n, c, h, w, dtype)
    rois = random_rois(rng, k, n, h, w, scale, **kwargs).astype(dtype)
    return x, rois


def call(sub, x, rois, *args):
    y = sub.roi_align(torch.from_numpy(x), torch.from_numpy(rois), *args)
    if not isinstance(y, torch.Tensor):
        fail(f"roi_align returned a {type(y).__name__}, not a Tensor")
    return y


def fake_mode():
    return torch._subclasses.fake_tensor.FakeTensorMode()


@points(3)
def test_forward_random(sub):
    """forward: random maps and boxes, aligned or not, adaptive or fixed sampling"""
    rng = np.random.default_rng(80)
    x, rois = case(rng)
    for aligned in (False, True):
        for ratio in (-1, 2):
            args = (0.5, 3, 2, ratio, aligned)
            got = call(sub, x, rois, *args).detach().numpy()
            expected = ref_forward(x, rois, (3, 2), 0.5, ratio, aligned)
            inputs = describe(
                x=x,
                rois=rois,
                spatial_scale=0.5,
                pooled_height=3,
                pooled_width=2,
                sampling_ratio=ratio,
                aligned=aligned,
            )
            check_array(got, expected, "roi_align", inputs=inputs, rois=rois)


@points(1)
def test_forward_float32_and_no_rois(sub):
    """forward: float32 in, float32 out; no RoIs gives [0, C, PH, PW]"""
    rng = np.random.default_rng(81)
    x, rois = case(rng, dtype=np.float32)
    got = call(sub, x, rois, 0.5, 2, 2, 2, True)
    check_array(
        got.detach().numpy(),
        ref_forward(x, rois, 2, 0.5, 2, True),
        "roi_align(float32)",
        rtol=1e-5,
        atol=1e-5,
    )
    got = call(sub, x, np.zeros((0, 5), np.float32), 0.5, 2, 3, 2, True)
    if tuple(got.shape) != (0, 3, 2, 3):
        fail(f"roi_align with no RoIs: expected shape (0, 3, 2, 3), got {tuple(got.shape)}")


@points(2)
def test_fake_kernel(sub):
    """fake kernel: the output's shape and dtype from fake tensors, without computing"""
    op = sub.roi_align
    with fake_mode():
        for dtype in (torch.float32, torch.float64):
            x, rois = torch.empty(2, 4, 10, 12, dtype=dtype), torch.empty(7, 5, dtype=dtype)
            y = op(x, rois, 0.25, 3, 5, 2, False)
            if tuple(y.shape) != (7, 4, 3, 5) or y.dtype != dtype:
                fail(
                    f"with fake tensors x [2, 4, 10, 12], rois [7, 5] ({dtype}) and pooled 3x5, "
                    f"roi_align gave shape {tuple(y.shape)}, {y.dtype}; expected (7, 4, 3, 5)"
                )


@points(2)
def test_backward_operator(sub):
    """backward operator: the input's gradient, against refimpl's backward"""
    rng = np.random.default_rng(82)
    x, rois = case(rng)
    grad = rng.normal(size=(5, 3, 3, 2))
    for aligned in (False, True):
        got = sub.roi_align_backward(
            torch.from_numpy(grad), torch.from_numpy(rois), 0.5, 3, 2, 2, 3, 8, 9, -1, aligned
        )
        if not isinstance(got, torch.Tensor):
            fail(f"roi_align_backward returned a {type(got).__name__}, not a Tensor")
        expected = ref_backward(x, rois, grad, (3, 2), 0.5, -1, aligned)
        check_array(got.numpy(), expected, f"roi_align_backward (aligned={aligned})")


@points(1)
def test_backward_fake_kernel(sub):
    """backward fake kernel: shape [N, C, H, W] and grad's dtype"""
    op = sub.roi_align_backward
    with fake_mode():
        g, rois = torch.empty(7, 4, 3, 5), torch.empty(7, 5)
        y = op(g, rois, 0.25, 3, 5, 2, 4, 10, 12, 2, False)
        if tuple(y.shape) != (2, 4, 10, 12) or y.dtype != torch.float32:
            fail(
                f"roi_align_backward's fake kernel gave {tuple(y.shape)}, {y.dtype}; "
                "expected (2, 4, 10, 12), torch.float32"
            )


@points(3)
def test_autograd(sub):
    """autograd: y.backward(g) puts refimpl's gradient in x.grad, and none in the boxes"""
    rng = np.random.default_rng(83)
    x, rois = case(rng)
    grad = rng.normal(size=(5, 3, 2, 2))
    xt = torch.from_numpy(x).requires_grad_()
    y = sub.roi_align(xt, torch.from_numpy(rois), 0.5, 2, 2, 2, True)
    if y.grad_fn is None:
        fail(
            "roi_align's output has no grad_fn: register the autograd formula "
            "(roi_align.register_autograd(backward, setup_context=setup_context))"
        )
    y.backward(torch.from_numpy(grad))
    check_array(xt.grad.numpy(), ref_backward(x, rois, grad, 2, 0.5, 2, True), "x.grad")


@points(2)
def test_gradcheck(sub):
    """torch.autograd.gradcheck in float64"""
    rng = np.random.default_rng(84)
    x, rois = case(rng, k=3, c=2, h=5, w=6)
    xt = torch.from_numpy(x).requires_grad_()
    rt = torch.from_numpy(rois)
    sub.roi_align(xt, rt, 0.5, 2, 2, -1, True).sum().backward()  # a stub fails here, plainly
    try:
        ok = torch.autograd.gradcheck(lambda t: sub.roi_align(t, rt, 0.5, 2, 2, -1, True), (xt,))
    except Exception as e:
        fail(f"gradcheck: {type(e).__name__}: {str(e)[:600]}")
    if not ok:
        fail("gradcheck returned False")


@points(3, timeout=60)
def test_opcheck(sub):
    """torch.library.opcheck: schema, fake kernel, autograd registration, AOT dispatch"""
    rng = np.random.default_rng(85)
    x, rois = case(rng, k=3, c=2, h=5, w=6)
    xt = torch.from_numpy(x).requires_grad_()
    op = sub.roi_align
    op(xt, torch.from_numpy(rois), 0.5, 2, 3, 2, True).sum().backward()  # a stub fails plainly
    with fake_mode():
        op(torch.empty(2, 2, 5, 6), torch.empty(3, 5), 0.5, 2, 3, 2, True)
    try:
        torch.library.opcheck(op, (xt, torch.from_numpy(rois), 0.5, 2, 3, 2, True))
    except NotImplementedError:
        raise
    except Exception as e:
        fail(f"opcheck failed: {type(e).__name__}: {str(e)[:800]}")


@points(2, timeout=60)
def test_torch_compile(sub):
    """torch.compile(fullgraph=True, backend="aot_eager"): forward and backward trace"""
    rng = np.random.default_rng(86)
    x, rois = case(rng, k=3, c=2, h=5, w=6)
    rt = torch.from_numpy(rois)
    op = sub.roi_align

    def loss(t):
        return (op(t, rt, 0.5, 2, 2, 2, True) ** 2).sum()

    xt = torch.from_numpy(x).requires_grad_()
    (expected,) = torch.autograd.grad(loss(xt), xt)
    try:
        compiled = torch.compile(loss, backend="aot_eager", fullgraph=True)
        (got,) = torch.autograd.grad(compiled(xt), xt)
    except NotImplementedError:
        raise
    except Exception as e:
        fail(f"torch.compile failed: {type(e).__name__}: {str(e)[:800]}")
    check_array(got.numpy(), expected.numpy(), "the gradient through torch.compile")
