"""Grading tests for exercise 08: a NumPy RoIAlign as the PyTorch operator
``mycourse::roi_align``, with a fake kernel, a backward operator and an autograd formula.

The oracle is refimpl's definition (``BACKENDS["python"]``); PyTorch's own tools judge the
registration (``torch.autograd.gradcheck``, ``torch.library.opcheck``, ``torch.compile``).
"""

from __future__ import annotations

import numpy as np
import torch

from refimpl.course.checks import (
    check_array,
    converted,
    count_hint,
    describe,
    drawn,
    fail,
    offset_hint,
    points,
    probe,
    random_features,
    random_rois,
)
from refimpl.ops.python import roi_align_backward as ref_backward
from refimpl.ops.python import roi_align_forward as ref_forward

# exercise 8 gives the kernels (BACKENDS["numpy"]): it grades the registration
GIVENS = {"refimpl.ops.numpy": "*", "refimpl.ops.geometry": "*", "refimpl.ops.validate": "*"}

# Each test runs in a forked process: torch's OpenMP pool and numba's GNU OpenMP layer are not
# fork-safe once started.
ENVIRONMENT = {"NUMBA_THREADING_LAYER": "workqueue", "OMP_NUM_THREADS": "1"}


def case(rng, k=5, n=2, c=3, h=8, w=9, scale=0.5, dtype=np.float64, **kwargs):
    x = random_features(rng, n, c, h, w, dtype)
    rois = random_rois(rng, k, n, h, w, scale, **kwargs)
    return x, (rois if np.dtype(dtype) == rois.dtype else converted(rois, dtype))


def op_call(x, rois, *args, fn="roi_align"):
    """How to make the op's call in the notebook (x and rois as tensors)."""
    return describe(
        fn,
        x=torch.from_numpy(x),
        rois=torch.from_numpy(rois),
        **{f"arg{i}": v for i, v in enumerate(args)},
    )


def with_setup(inputs, *lines):
    """``inputs`` (describe's text) with its call replaced by ``lines``."""
    return "\n".join([*inputs.splitlines()[:-1], *(f"    {line}" for line in lines)])


def call(sub, x, rois, *args):
    y = sub.roi_align(torch.from_numpy(x), torch.from_numpy(rois), *args)
    if not isinstance(y, torch.Tensor):
        fail(f"roi_align returned a {type(y).__name__}, not a Tensor")
    return y


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
            inputs = op_call(x, rois, *args)
            hints = [
                offset_hint(
                    lambda moved, ratio=ratio, aligned=aligned: ref_forward(
                        x, moved, (3, 2), 0.5, ratio, aligned
                    ),
                    rois,
                    0.5,
                    aligned,
                ),
                count_hint(expected, rois, (3, 2), 0.5, ratio, aligned),
            ]
            check_array(got, expected, "roi_align", inputs=inputs, rois=rois, hints=hints)


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
        inputs=op_call(x, rois, 0.5, 2, 2, 2, True),
    )
    empty = np.zeros((0, 5), np.float32)
    got = call(sub, x, empty, 0.5, 2, 3, 2, True)
    if tuple(got.shape) != (0, 3, 2, 3):
        fail(
            f"roi_align with no RoIs: expected shape (0, 3, 2, 3), got {tuple(got.shape)}\n  "
            + op_call(x, empty, 0.5, 2, 3, 2, True).replace("\n", "\n  ")
        )


@probe
def _fake_shapes(namespace, name, shapes, dtypes, args):
    """Where the learner's code runs: the op on fake tensors, its output's shape and dtype."""
    import torch

    out = []
    with torch._subclasses.fake_tensor.FakeTensorMode():
        for dtype in dtypes:
            tensors = [torch.empty(*shape, dtype=getattr(torch, dtype)) for shape in shapes]
            y = namespace[name](*tensors, *args)
            out.append([list(y.shape), str(y.dtype)])
    return out


def fake_result(sub, name, shapes, dtypes, args):
    if not sub.has(name):
        fail(f"your notebook does not define `{name}`")
    got = _fake_shapes(sub, name, shapes, dtypes, args)
    if not (isinstance(got, list) and len(got) == len(dtypes)):
        fail(f"{name} on fake tensors: the answer was not understood")
    return [(tuple(int(v) for v in shape), str(dtype)) for shape, dtype in got]


def fake_cause(shape):
    if shape == (7, 4, 5, 3):
        return "pooled_height and pooled_width swapped: the output is [K, C, PH, PW]"
    return (
        "the fake kernel returns input.new_empty((rois.shape[0], input.shape[1], "
        "pooled_height, pooled_width)), in the input's dtype, computing nothing"
    )


def fake_call(call):
    """How to call the op on fake tensors in the notebook."""
    return (
        "  to reproduce:\n      with torch._subclasses.fake_tensor.FakeTensorMode():\n"
        f"          print({call}.shape)"
    )


@points(2)
def test_fake_kernel(sub):
    """fake kernel: the output's shape and dtype from fake tensors, without computing"""
    dtypes = ["float32", "float64"]
    got = fake_result(sub, "roi_align", [(2, 4, 10, 12), (7, 5)], dtypes, [0.25, 3, 5, 2, False])
    for (shape, dtype), want in zip(got, dtypes, strict=True):
        if shape != (7, 4, 3, 5) or dtype != f"torch.{want}":
            fail(
                f"with fake tensors x [2, 4, 10, 12], rois [7, 5] (torch.{want}) and pooled 3x5, "
                f"roi_align gave shape {shape}, {dtype[:40]}; expected (7, 4, 3, 5)\n"
                f"  likely cause: {fake_cause(shape)}\n"
                + fake_call(
                    f"roi_align(torch.empty(2, 4, 10, 12, dtype=torch.{want}), "
                    f"torch.empty(7, 5, dtype=torch.{want}), 0.25, 3, 5, 2, False)"
                )
            )


@points(2)
def test_backward_operator(sub):
    """backward operator: the input's gradient, against refimpl's backward"""
    rng = np.random.default_rng(82)
    x, rois = case(rng)
    grad = drawn(rng, "rng.normal(size=(5, 3, 3, 2))")
    for aligned in (False, True):
        got = sub.roi_align_backward(
            torch.from_numpy(grad), torch.from_numpy(rois), 0.5, 3, 2, 2, 3, 8, 9, -1, aligned
        )
        if not isinstance(got, torch.Tensor):
            fail(f"roi_align_backward returned a {type(got).__name__}, not a Tensor")
        expected = ref_backward(x, rois, grad, (3, 2), 0.5, -1, aligned)
        inputs = describe(
            "roi_align_backward",
            grad=torch.from_numpy(grad),
            rois=torch.from_numpy(rois),
            **{f"arg{i}": v for i, v in enumerate((0.5, 3, 2, 2, 3, 8, 9, -1, aligned))},
        )
        hints = [
            offset_hint(
                lambda moved, aligned=aligned: ref_backward(
                    x, moved, grad, (3, 2), 0.5, -1, aligned
                ),
                rois,
                0.5,
                aligned,
            )
        ]
        check_array(
            got.numpy(),
            expected,
            f"roi_align_backward (aligned={aligned})",
            inputs=inputs,
            hints=hints,
        )


@points(1)
def test_backward_fake_kernel(sub):
    """backward fake kernel: shape [N, C, H, W] and grad's dtype"""
    args = [0.25, 3, 5, 2, 4, 10, 12, 2, False]
    shapes = [(7, 4, 3, 5), (7, 5)]
    ((shape, dtype),) = fake_result(sub, "roi_align_backward", shapes, ["float32"], args)
    if shape != (2, 4, 10, 12) or dtype != "torch.float32":
        fail(
            f"roi_align_backward's fake kernel gave {shape}, {dtype[:40]}; "
            "expected (2, 4, 10, 12), torch.float32\n"
            + fake_call(
                "roi_align_backward(torch.empty(7, 4, 3, 5), torch.empty(7, 5), 0.25, 3, 5, 2, 4, "
                "10, 12, 2, False)"
            )
        )


@points(3)
def test_autograd(sub):
    """autograd: y.backward(g) puts refimpl's gradient in x.grad, and none in the boxes"""
    rng = np.random.default_rng(83)
    x, rois = case(rng)
    grad = drawn(rng, "rng.normal(size=(5, 3, 2, 2))")
    xt = torch.from_numpy(x).requires_grad_()
    y = sub.differentiable("roi_align")(xt, torch.from_numpy(rois), 0.5, 2, 2, 2, True)
    if y.grad_fn is None:
        fail(
            "roi_align's output has no grad_fn: register the autograd formula "
            "(roi_align.register_autograd(backward, setup_context=setup_context))"
        )
    inputs = with_setup(
        describe("roi_align", x=x, rois=rois, grad=grad),
        "xt = torch.from_numpy(x).requires_grad_()",
        "roi_align(xt, torch.from_numpy(rois), 0.5, 2, 2, 2, True)"
        ".backward(torch.from_numpy(grad))",
        "xt.grad",
    )
    y.backward(torch.from_numpy(grad))
    expected = ref_backward(x, rois, grad, 2, 0.5, 2, True)
    hints = [
        offset_hint(lambda moved: ref_backward(x, moved, grad, 2, 0.5, 2, True), rois, 0.5, True)
    ]
    check_array(xt.grad.numpy(), expected, "x.grad", inputs=inputs, hints=hints)


@points(2)
def test_gradcheck(sub):
    """torch.autograd.gradcheck in float64"""
    rng = np.random.default_rng(84)
    x, rois = case(rng, k=3, c=2, h=5, w=6)
    xt = torch.from_numpy(x).requires_grad_()
    rt = torch.from_numpy(rois)
    op = sub.differentiable("roi_align")
    op(xt, rt, 0.5, 2, 2, -1, True).sum().backward()  # a stub fails here, plainly
    again = "\n  " + with_setup(
        describe("roi_align", x=x, rois=rois),
        "xt, rt = torch.from_numpy(x).requires_grad_(), torch.from_numpy(rois)",
        "torch.autograd.gradcheck(lambda t: roi_align(t, rt, 0.5, 2, 2, -1, True), (xt,))",
    ).replace("\n", "\n  ")
    try:
        ok = torch.autograd.gradcheck(lambda t: op(t, rt, 0.5, 2, 2, -1, True), (xt,))
    except Exception as e:
        fail(f"gradcheck: {type(e).__name__}: {str(e)[:600]}{again}")
    if not ok:
        fail(f"gradcheck returned False{again}")


@probe
def _opcheck(namespace, x, rois):
    """Where the learner's code runs: torch.library.opcheck on its op."""
    import torch

    op = namespace["roi_align"]
    xt = torch.from_numpy(x).requires_grad_()
    try:
        op(xt, torch.from_numpy(rois), 0.5, 2, 3, 2, True).sum().backward()
        with torch._subclasses.fake_tensor.FakeTensorMode():
            op(torch.empty(2, 2, 5, 6), torch.empty(3, 5), 0.5, 2, 3, 2, True)
        torch.library.opcheck(op, (xt, torch.from_numpy(rois), 0.5, 2, 3, 2, True))
    except NotImplementedError:
        return ["not-implemented", ""]
    except Exception as e:
        return ["error", f"{type(e).__name__}: {str(e)[:800]}"]
    return ["ok", ""]


@points(3, timeout=60)
def test_opcheck(sub):
    """torch.library.opcheck: schema, fake kernel, autograd registration, AOT dispatch"""
    rng = np.random.default_rng(85)
    x, rois = case(rng, k=3, c=2, h=5, w=6)
    if not sub.has("roi_align"):
        fail("your notebook does not define `roi_align`")
    status, message = _opcheck(sub, x, rois)
    if status == "not-implemented":
        fail("`roi_align` is not implemented yet (it raises NotImplementedError)")
    if status != "ok":
        again = with_setup(
            describe("roi_align", x=x, rois=rois),
            "args = (torch.from_numpy(x).requires_grad_(), torch.from_numpy(rois), 0.5, 2, 3, 2, "
            "True)",
            "torch.library.opcheck(roi_align, args)",
        ).replace("\n", "\n  ")
        fail(f"opcheck failed: {str(message)[:800]}\n  {again}")


@probe
def _compiled_grad(namespace, x, rois):
    """Where the learner's code runs: the gradient through torch.compile (or the error)."""
    import torch

    op = namespace["roi_align"]
    rt = torch.from_numpy(rois)

    def loss(t):
        return (op(t, rt, 0.5, 2, 2, 2, True) ** 2).sum()

    xt = torch.from_numpy(x).requires_grad_()
    try:
        loss(xt)  # eagerly first: a stub fails here, plainly
    except NotImplementedError:
        return ["not-implemented", ""]
    try:
        compiled = torch.compile(loss, backend="aot_eager", fullgraph=True)
        (got,) = torch.autograd.grad(compiled(xt), xt)
    except NotImplementedError:
        return ["not-implemented", ""]
    except Exception as e:
        return ["error", f"{type(e).__name__}: {str(e)[:800]}"]
    return ["ok", got.detach().numpy()]


@points(2, timeout=60)
def test_torch_compile(sub):
    """torch.compile(fullgraph=True, backend="aot_eager"): forward and backward trace"""
    rng = np.random.default_rng(86)
    x, rois = case(rng, k=3, c=2, h=5, w=6)
    if not sub.has("roi_align"):
        fail("your notebook does not define `roi_align`")
    status, got = _compiled_grad(sub, x, rois)
    if status == "not-implemented":
        fail("`roi_align` is not implemented yet (it raises NotImplementedError)")
    repro = with_setup(
        describe("roi_align", x=x, rois=rois),
        "rt = torch.from_numpy(rois); xt = torch.from_numpy(x).requires_grad_()",
        "loss = torch.compile(lambda t: (roi_align(t, rt, 0.5, 2, 2, 2, True) ** 2).sum(), "
        'backend="aot_eager", fullgraph=True)',
        "torch.autograd.grad(loss(xt), xt)",
    )
    again = "\n  " + repro.replace("\n", "\n  ")
    if status != "ok":
        fail(f"torch.compile failed: {str(got)[:800]}{again}")
    # the reference: d/dx sum(y^2) = backward(x, rois, 2 y), both from refimpl's definition
    y = ref_forward(x, rois, 2, 0.5, 2, True)
    expected = ref_backward(x, rois, 2 * y, 2, 0.5, 2, True)
    check_array(got, expected, "the gradient through torch.compile", inputs=repro)
