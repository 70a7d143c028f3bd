"""Grading tests for exercise 06: RoIAlign avg as parallel, race-free Numba kernels.

The oracle is refimpl's definition (``BACKENDS["python"]``); races are found by
:func:`refimpl.course.races.find_races` (deterministic, whatever the machine's cores).
"""

from __future__ import annotations

import numpy as np

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

# Every test runs in a process forked from the grading worker, after the kernels compiled;
# GNU OpenMP (numba's default threading layer here) is not fork-safe, workqueue is.
ENVIRONMENT = {"NUMBA_THREADING_LAYER": "workqueue"}
# What the notebook imports from refimpl (the sandbox sees nothing else of it).
GIVENS = {"refimpl.ops.geometry": "*", "refimpl.course.races": "*"}

# Overlapping RoIs in one image: a prange over RoIs in the backward writes pixels twice.
OVERLAPPING = np.array(
    [
        [0, 0.4, 0.7, 9.3, 8.8],
        [0, 2.1, 1.3, 7.7, 6.2],
        [1, 1.0, 2.0, 8.0, 9.0],
        [0, 0.4, 0.7, 9.3, 8.8],
    ]
)


def forward_case(sub, x, rois, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False):
    args = (output_size, spatial_scale, sampling_ratio, aligned)
    got = sub.roi_align_forward(x.copy(), rois.copy(), *args)
    inputs = describe(
        "roi_align_forward",
        x=x,
        rois=rois,
        output_size=output_size,
        spatial_scale=spatial_scale,
        sampling_ratio=sampling_ratio,
        aligned=aligned,
    )
    expected = ref_forward(x, rois, *args)
    hints = [
        offset_hint(lambda moved: ref_forward(x, moved, *args), rois, spatial_scale, aligned),
        count_hint(expected, rois, *args),
    ]
    check_array(got, expected, "roi_align_forward", inputs=inputs, rois=rois, hints=hints)


def backward_case(
    sub, x, rois, grad, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False
):
    args = (output_size, spatial_scale, sampling_ratio, aligned)
    got = sub.roi_align_backward(x.copy(), rois.copy(), grad.copy(), *args)
    inputs = describe(
        "roi_align_backward",
        x=x,
        rois=rois,
        grad_output=grad,
        output_size=output_size,
        spatial_scale=spatial_scale,
        sampling_ratio=sampling_ratio,
        aligned=aligned,
    )
    hints = [
        offset_hint(lambda moved: ref_backward(x, moved, grad, *args), rois, spatial_scale, aligned)
    ]
    check_array(got, ref_backward(x, rois, grad, *args), "grad_x", inputs=inputs, hints=hints)


@probe
def _compiled(namespace, name):
    """Where the learner's code runs: (type name, is an njit kernel, parallel=True)."""
    from numba.core.registry import CPUDispatcher

    kernel = namespace.get(name)
    is_njit = isinstance(kernel, CPUDispatcher)
    parallel = bool(is_njit and kernel.targetoptions.get("parallel"))
    return [type(kernel).__name__, is_njit, parallel]


def check_compiled(sub, name):
    kind, is_njit, parallel = _compiled(sub, name)  # untrusted data: checked below
    if is_njit is not True:
        fail(f"`{name}` is a {str(kind)[:60]}, not a numba.njit kernel")
    if parallel is not True:
        fail(f"`{name}` is compiled without parallel=True: its prange runs on one thread")


@probe
def _races(namespace, kernel_name, first, rois, output_shape, name):
    """Where the learner's code runs: find_races on the kernel, as strings (or the error)."""
    import numpy as np

    from refimpl.course.races import find_races

    out = np.zeros(tuple(output_shape))
    try:
        found = find_races(
            namespace[kernel_name], (first, rois, 0.5, -1, True, out), outputs=(5,), names=(name,)
        )
    except NotImplementedError:
        return ["not-implemented", ""]
    except Exception as e:
        return ["error", f"{type(e).__name__}: {e}"[:300]]
    return ["ok", [str(c)[:300] for c in found]]


def race_case(sub, kernel_name, first, rois, output_shape):
    if not sub.has(kernel_name):
        fail(f"your notebook does not define `{kernel_name}`")
    name = "out" if "forward" in kernel_name else "grad_x"
    status, found = _races(sub, kernel_name, first, rois, list(output_shape), name)
    if status == "not-implemented":
        fail(f"`{kernel_name}` is not implemented yet (it raises NotImplementedError)")
    if status == "error":
        fail(
            f"the race detector could not run `{kernel_name}` in Python ({str(found)[:300]}); "
            "write the output element by element, with `prange` from numba"
        )
    if status != "ok" or not isinstance(found, list):
        fail(f"the race detector's answer on `{kernel_name}` was not understood")
    if found:
        fail(
            f"`{kernel_name}` races: {str(found[0])[:300]}. Two threads adding into one element "
            "lose updates; give each prange iteration elements of its own\n"
            + race_reproduce(kernel_name, first, rois, output_shape, name)
        )


def race_reproduce(kernel_name, first, rois, output_shape, name):
    """How to run the race detector on the learner's kernel, in the notebook."""
    first_name = "x" if name == "out" else "grad_output"
    text = describe(
        "find_races",
        kernel=Code(kernel_name, "from refimpl.course.races import find_races"),
        args=Code(
            f"({first_name}, rois, 0.5, -1, True, np.zeros({tuple(output_shape)}))",
            *(
                line.strip()
                for line in describe(**{first_name: first, "rois": rois}).splitlines()[1:]
                if "import checks" not in line
            ),
        ),
        outputs=Code("outputs=(5,)"),
        names=Code(f"names=({name!r},)"),
    )
    return "  " + text.replace("\n", "\n  ")


@points(2)
def test_forward_known_answer(sub):
    """forward: one bin of 2x2 samples on a ramp, known answer"""
    known_roi_align_forward(sub)


@points(3)
def test_forward_random(sub):
    """forward: random maps and boxes, aligned or not, adaptive or fixed sampling"""
    rng = np.random.default_rng(60)
    x = random_features(rng, 2, 3, 8, 9)
    rois = random_rois(rng, 7, 2, 8, 9, 0.5)
    for aligned in (False, True):
        for ratio in (-1, 2):
            forward_case(sub, x, rois, (3, 2), 0.5, ratio, aligned)


@points(1)
def test_forward_off_the_map(sub):
    """forward: samples off the map read nothing; no RoIs gives an empty output"""
    rng = np.random.default_rng(61)
    x = random_features(rng, 1, 2, 5, 5)
    rois = np.array([[0, 3.0, 3.0, 9.0, 9.0], [0, -6.0, 1.0, 1.0, 3.0], [0, 7.0, 7.0, 9.0, 8.0]])
    for aligned in (False, True):
        forward_case(sub, x, rois, 3, 1.0, -1, aligned)
    forward_case(sub, x, np.zeros((0, 5)), 2)


@points(1)
def test_forward_compiled_parallel(sub):
    """forward: a numba.njit(parallel=True) kernel"""
    sub.roi_align_forward(np.zeros((1, 1, 2, 2)), np.zeros((1, 5)), 1)
    check_compiled(sub, "roi_align_forward_kernel")


@points(1)
def test_forward_race_free(sub):
    """forward: no two prange iterations write the same output"""
    rng = np.random.default_rng(62)
    x = random_features(rng, 2, 2, 6, 6)
    sub.roi_align_forward(x, OVERLAPPING, 2, 0.5)
    race_case(sub, "roi_align_forward_kernel", x, OVERLAPPING, (4, 2, 2, 2))


@points(2)
def test_backward_known_answer(sub):
    """backward: one bin of 2x2 samples spreads 1, 2, 1 / 2, 4, 2 / 1, 2, 1 sixteenths"""
    known_roi_align_backward(sub)


@points(3)
def test_backward_random(sub):
    """backward: random maps, boxes and gradients, aligned or not, two images"""
    rng = np.random.default_rng(63)
    x = random_features(rng, 2, 3, 8, 9)
    rois = random_rois(rng, 7, 2, 8, 9, 0.5)
    grad = drawn(rng, "rng.normal(size=(7, 3, 3, 2))")
    for aligned in (False, True):
        for ratio in (-1, 2):
            backward_case(sub, x, rois, grad, (3, 2), 0.5, ratio, aligned)


@points(2)
def test_backward_accumulates(sub):
    """backward: overlapping RoIs (the same box twice) add up; off-the-map samples pass nothing"""
    rng = np.random.default_rng(64)
    x = random_features(rng, 1, 2, 6, 6)
    rois = np.array([[0, 0.4, 0.7, 9.3, 8.8]] * 2 + [[0, 2.1, 1.3, 7.7, 6.2], [0, 7, 7, 12, 9]])
    grad = drawn(rng, "rng.normal(size=(4, 2, 2, 2))")
    for aligned in (False, True):
        backward_case(sub, x, rois, grad, 2, 0.5, 2, aligned)
    backward_case(sub, x, np.zeros((0, 5)), np.zeros((0, 2, 2, 2)), 2)


@points(1)
def test_backward_compiled_parallel(sub):
    """backward: a numba.njit(parallel=True) kernel"""
    sub.roi_align_backward(np.zeros((1, 1, 2, 2)), np.zeros((1, 5)), np.ones((1, 1, 1, 1)), 1)
    check_compiled(sub, "roi_align_backward_kernel")


@points(3)
def test_backward_race_free(sub):
    """backward: no two prange iterations write the same element of grad_x"""
    rng = np.random.default_rng(65)
    x = random_features(rng, 2, 2, 6, 6)
    grad = drawn(rng, "rng.normal(size=(4, 2, 2, 2))")
    sub.roi_align_backward(x, OVERLAPPING, grad, 2, 0.5)
    race_case(sub, "roi_align_backward_kernel", grad, OVERLAPPING, x.shape)


@points(2)
def test_histogram(sub):
    """histogram: counts equal np.bincount for any number of chunks, empty chunks included"""
    rng = np.random.default_rng(66)
    for size, n_bins, chunks in ((1001, 5, 4), (7, 3, 4), (3, 2, 5), (500, 1, 2), (0, 3, 2)):
        bins = drawn(rng, f"rng.integers(0, {n_bins}, size={size})")
        got = sub.histogram(bins, n_bins, chunks)
        check_array(
            got,
            np.bincount(bins, minlength=n_bins).astype(np.float64),
            f"histogram({size} values, {n_bins} bins, {chunks} chunks)",
            inputs=describe("histogram", bins=bins, n_bins=n_bins, chunks=chunks),
        )


@probe
def _histogram_races(namespace, bins):
    """Where the learner's code runs: find_races on histogram_kernel, as strings."""
    import numpy as np

    from refimpl.course.races import find_races

    try:
        found = find_races(
            namespace["histogram_kernel"],
            (bins, np.zeros((4, 3))),
            outputs=(1,),
            names=("partial",),
        )
    except Exception as e:
        return ["error", f"{type(e).__name__}: {e}"[:300]]
    return ["ok", [str(c)[:300] for c in found]]


@points(1)
def test_histogram_race_free(sub):
    """histogram: no two prange iterations write the same element of partial"""
    bins = np.random.default_rng(67).integers(0, 3, size=40)
    sub.histogram(bins, 3, 4)
    if not sub.has("histogram_kernel"):
        fail("your notebook does not define `histogram_kernel`")
    status, found = _histogram_races(sub, bins)
    if status != "ok" or not isinstance(found, list):
        fail(f"the race detector could not run `histogram_kernel` in Python ({str(found)[:300]})")
    if found:
        fail(
            f"`histogram_kernel` races: {str(found[0])[:300]}; give each chunk its own row\n"
            "  to reproduce:\n      from refimpl.course.races import find_races\n"
            "      bins = np.random.default_rng(67).integers(0, 3, size=40)\n"
            "      find_races(histogram_kernel, (bins, np.zeros((4, 3))), outputs=(1,), "
            "names=('partial',))"
        )
