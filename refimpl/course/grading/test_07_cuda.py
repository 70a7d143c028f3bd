"""Grading tests for exercise 07: RoIAlign avg as numba-cuda kernels (grid-stride forward,
atomic backward), run in numba's CUDA simulator.

The worker starts with ``NUMBA_ENABLE_CUDASIM=1`` (``ENVIRONMENT``): numba reads it once, at
import, so it must be set before the learner's first cell. Under pytest (``tests/grading``
in a process that imported numba without it) these tests skip; ``tests/course`` grades the
solution in a worker of its own. The oracle is refimpl's definition.
"""

from __future__ import annotations

import numpy as np
import pytest

from refimpl.course.checks import (
    Code,
    check_array,
    count_hint,
    describe,
    drawn,
    fail,
    known_roi_align_backward,
    known_roi_align_forward,
    offset_hint,
    points,
    probe,
    random_features,
    random_rois,
)
from refimpl.ops.python import roi_align_backward as ref_backward
from refimpl.ops.python import roi_align_forward as ref_forward

GIVENS = {"refimpl.ops.geometry": "*"}  # exercise 7 gives the sampling grid (compile_all)

ENVIRONMENT = {"NUMBA_ENABLE_CUDASIM": "1", "OMP_NUM_THREADS": "1"}
SIMULATED = True  # tests/grading/conftest.py: skip in a process without the simulator
# scripts/test.sh runs the cudasim-marked tests in their own process, under the simulator.
pytestmark = pytest.mark.cudasim


def forward_case(sub, x, rois, out, scale=1.0, ratio=-1, aligned=False, **launch):
    got = sub.roi_align_forward(x.copy(), rois.copy(), out, scale, ratio, aligned, **launch)
    inputs = describe(
        "roi_align_forward",
        x=x,
        rois=rois,
        output_size=out,
        spatial_scale=scale,
        sampling_ratio=ratio,
        aligned=aligned,
        **keywords(launch),
    )
    args = (out, scale, ratio, aligned)
    expected = ref_forward(x, rois, *args)
    hints = [
        offset_hint(lambda moved: ref_forward(x, moved, *args), rois, scale, aligned),
        count_hint(expected, rois, *args),
    ]
    if launch:
        hints.append(
            ("one output per thread, no grid-stride loop: a grid smaller than the outputs "
             "covers them with for idx in range(cuda.grid(1), total, cuda.gridsize(1))",
             lambda: grid_only(expected, **launch)),
        )  # fmt: skip
    check_array(got, expected, "roi_align_forward", inputs=inputs, rois=rois, hints=hints)


def keywords(launch):
    """The launch arguments as keywords in the call describe() prints."""
    return {k: Code(f"{k}={v!r}") for k, v in launch.items()}


def grid_only(expected, blocks, threads):
    """What a kernel without a grid-stride loop writes: the first blocks * threads outputs."""
    out = np.zeros_like(expected)
    out.reshape(-1)[: blocks * threads] = expected.reshape(-1)[: blocks * threads]
    return out


def backward_case(sub, x, rois, grad, out, scale=1.0, ratio=-1, aligned=False, **launch):
    got = sub.roi_align_backward(
        x.copy(), rois.copy(), grad.copy(), out, scale, ratio, aligned, **launch
    )
    inputs = describe(
        "roi_align_backward",
        x=x,
        rois=rois,
        grad_output=grad,
        output_size=out,
        spatial_scale=scale,
        sampling_ratio=ratio,
        aligned=aligned,
        **keywords(launch),
    )
    args = (out, scale, ratio, aligned)
    hints = [offset_hint(lambda moved: ref_backward(x, moved, grad, *args), rois, scale, aligned)]
    check_array(got, ref_backward(x, rois, grad, *args), "grad_x", inputs=inputs, hints=hints)


@points(2)
def test_forward_known_answer(sub):
    """forward: one bin of 2x2 samples on a ramp, known answer"""
    known_roi_align_forward(sub)


@points(3)
def test_forward_random(sub):
    """forward: random maps and boxes, aligned or not, adaptive or fixed sampling"""
    rng = np.random.default_rng(70)
    x = random_features(rng, 2, 2, 6, 7)
    rois = random_rois(rng, 4, 2, 6, 7, 0.5)
    for aligned in (False, True):
        for ratio in (-1, 2):
            forward_case(sub, x, rois, (2, 3), 0.5, ratio, aligned)


@points(2)
def test_forward_grid_stride(sub):
    """forward: a grid of 4 threads covers 48 outputs (grid-stride loop)"""
    rng = np.random.default_rng(71)
    x = random_features(rng, 1, 3, 5, 5)
    rois = random_rois(rng, 4, 1, 5, 5)
    forward_case(sub, x, rois, 2, blocks=1, threads=4)
    forward_case(sub, x, rois, 2, blocks=3, threads=2)


@points(2)
def test_backward_known_answer(sub):
    """backward: one bin of 2x2 samples spreads 1, 2, 1 / 2, 4, 2 / 1, 2, 1 sixteenths"""
    known_roi_align_backward(sub)


@points(3)
def test_backward_random(sub):
    """backward: random maps, overlapping boxes and gradients, aligned or not"""
    rng = np.random.default_rng(72)
    x = random_features(rng, 2, 2, 6, 7)
    rois = drawn(  # two copies of one box: overlapping bins
        rng,
        "np.concatenate([checks.random_rois(rng, 3, 2, 6, 7, 0.5), [[0, 0.4, 0.7, 9.3, 8.8]] * 2])",
    )
    grad = drawn(rng, "rng.normal(size=(5, 2, 2, 2))")
    for aligned in (False, True):
        backward_case(sub, x, rois, grad, 2, 0.5, -1, aligned)


@points(1)
def test_backward_grid_stride(sub):
    """backward: a grid of 4 threads covers every gradient element"""
    rng = np.random.default_rng(73)
    x = random_features(rng, 1, 3, 5, 5)
    rois = random_rois(rng, 4, 1, 5, 5)
    grad = drawn(rng, "rng.normal(size=(4, 3, 2, 2))")
    backward_case(sub, x, rois, grad, 2, blocks=1, threads=4)


@probe
def _code_names(namespace, name):
    """Where the learner's code runs: the global names the kernel's Python code uses."""
    kernel = namespace[name]
    fn = getattr(kernel, "py_func", None) or getattr(kernel, "fn", None) or kernel
    return [str(n) for n in getattr(getattr(fn, "__code__", None), "co_names", ())]


@points(1)
def test_backward_atomic(sub):
    """backward: grad_x is written with cuda.atomic.add"""
    x = np.zeros((1, 1, 4, 4))
    sub.roi_align_backward(x, np.array([[0.0, 0, 0, 2, 2]]), np.ones((1, 1, 1, 1)), 1, 1.0, 2)
    if not sub.has("roi_align_backward_kernel"):
        fail("your notebook does not define `roi_align_backward_kernel`")
    names = _code_names(sub, "roi_align_backward_kernel")
    if not isinstance(names, list):
        fail("the names roi_align_backward_kernel uses could not be read")
    if "atomic" not in names:
        fail(
            "roi_align_backward_kernel does not use cuda.atomic.add: threads of overlapping "
            "bins write the same pixels at once, and plain += loses updates on a GPU"
        )


@points(1)
def test_unravel(sub):
    """unravel: (k, c, ph, pw) of flat indices, pw fastest"""
    fn = sub.unravel
    fn = getattr(fn, "py_func", None) or getattr(fn, "fn", None) or fn
    for shape in ((3, 2, 4, 5), (1, 3, 1, 7), (2, 1, 3, 1)):
        for idx in range(int(np.prod(shape))):
            got = tuple(int(v) for v in fn(idx, shape[1], shape[2], shape[3]))
            expected = tuple(int(v) for v in np.unravel_index(idx, shape))
            if got != expected:
                args = ", ".join(map(str, (idx, *shape[1:])))
                fail(f"unravel({args}) = {got}; expected {expected}")
