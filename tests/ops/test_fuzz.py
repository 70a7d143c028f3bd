"""Property-based fuzzing of the backends against each other (hypothesis), python the oracle.

Odd but valid inputs, drawn together: tiny, huge, zero-size, subnormal-width, inverted boxes,
boxes off the map or on the pixel lattice, aligned or not, adaptive and fixed sampling, avg
and max, float32 and float64, a NaN feature pixel, feature maps of few distinct values (ties
in the max modes), no RoIs, no images. Every backend must give what the python backend
gives, forward and backward; a valid input must not raise. The runs are derandomized (the
same examples on every machine, every run) and bounded (``max_examples``), a few seconds.

Before the fixes of issue 12 this suite failed on: an empty batch (N = 0, K = 0: "x must
hold at least one image"), a NaN pixel (numpy's matrix products spread it to every bin of a
RoI, PrRoIPool's too; the max modes disagreed on a NaN first sample), and PrRoIPool with a
subnormal-width box (numba's forward NaN, numpy's input gradient NaN). The NaN semantics
themselves (torchvision's) are pinned in tests/ops/test_nan_pixels.py.

Tolerances: :func:`tests.conftest.assert_close` (1e-5 float32, 1e-9 float64) for outputs and
input gradients: the backends share the geometry bitwise and differ only in summation order
over at most a few hundred terms of size ~1. PrRoIPool's box gradient divides differences of
such sums by a bin side (Leibniz's rule, see the python backend), so its rounding grows as
``1 / side``: see :func:`_box_gradient_tolerance`.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from refimpl.ops import BACKENDS
from tests.conftest import assert_close

py = BACKENDS["python"]
COMPARED = ("numpy", "numba")  # the cuda backend: tests/cuda/test_fuzz_cuda.py (simulator)

FUZZ = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,  # reproducible: the same examples everywhere
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

BOX_KINDS = ("inside", "tiny", "zero", "inverted", "off map", "lattice", "huge", "subnormal")


@st.composite
def _coords(draw, size: float, kind: str, adaptive: bool):
    """One axis of a box, ``(lo, hi)`` in feature pixels, on a map of ``size`` pixels."""
    real = st.floats(-1.5, size + 1.5, allow_nan=False, allow_infinity=False)
    if kind == "inside":
        lo = draw(st.floats(0.0, size, allow_nan=False))
        return lo, lo + draw(st.floats(0.1, size, allow_nan=False))
    if kind == "tiny":
        lo = draw(real)
        return lo, lo + draw(st.floats(1e-3, 0.1, allow_nan=False))
    if kind == "zero":
        lo = draw(real)
        return lo, lo
    if kind == "inverted":
        lo = draw(real)
        return lo, lo - draw(st.floats(0.1, size, allow_nan=False))
    if kind == "off map":  # more than one pixel outside: every sample reads nothing
        lo = draw(st.floats(size + 1.5, size + 6, allow_nan=False))
        lo = draw(st.sampled_from([lo, -lo - 2.0]))
        return lo, lo + draw(st.floats(0.0, 3.0, allow_nan=False))
    if kind == "lattice":  # samples and bin edges on integer pixels: kinks, ties
        lo = draw(st.integers(-1, int(size)))
        return float(lo), float(lo + draw(st.integers(0, 4)))
    if kind == "huge":  # many pixels (bounded when the grid adapts: the python oracle loops)
        bound = 24.0 if adaptive else 1e5
        lo = draw(st.floats(-bound, 0.0, allow_nan=False))
        return lo, draw(st.floats(size, bound, allow_nan=False))
    # "subnormal": a side of a few subnormal numbers, at the origin (elsewhere it rounds away)
    return 0.0, draw(st.sampled_from([5e-324, 1e-310, 1e-40, 1e-45]))


@st.composite
def roi_cases(draw, kinds=BOX_KINDS, nan_pixel: bool | None = None):
    """A RoI operator's inputs: ``dict(x, rois, grad, output_size, spatial_scale,
    sampling_ratio, aligned, pool_mode)``, with ``rois`` in image coordinates; boxes of the
    given ``kinds``; one NaN pixel always (True), never (False) or drawn (None)."""
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    n_images = draw(st.sampled_from([0, 1, 1, 2]))
    channels = draw(st.integers(1, 3))
    height, width = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    n_rois = 0 if n_images == 0 else draw(st.integers(0, 4))
    scale = draw(st.sampled_from([1.0, 0.5, 0.25, 0.9]))
    output_size = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    sampling_ratio = draw(st.sampled_from([-1, 0, 1, 2, 3]))
    adaptive = sampling_ratio <= 0
    rows = []
    for _ in range(n_rois):
        kind_x, kind_y = draw(st.sampled_from(kinds)), draw(st.sampled_from(kinds))
        x1, x2 = draw(_coords(width, kind_x, adaptive))
        y1, y2 = draw(_coords(height, kind_y, adaptive))
        batch = draw(st.integers(0, n_images - 1))
        rows.append([batch, x1 / scale, y1 / scale, x2 / scale, y2 / scale])
    rois = np.array(rows, dtype=dtype).reshape(n_rois, 5)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    shape = (n_images, channels, height, width)
    if draw(st.booleans()):
        x = rng.standard_normal(shape)
    else:  # few distinct values: ties in the max modes
        x = rng.integers(-1, 2, shape).astype(np.float64)
    if x.size and (nan_pixel if nan_pixel is not None else draw(st.booleans())):
        x.flat[draw(st.integers(0, x.size - 1))] = np.nan
    grad = rng.standard_normal((n_rois, channels, *output_size))
    return {
        "x": x.astype(dtype),
        "rois": rois,
        "grad": grad.astype(dtype),
        "output_size": output_size,
        "spatial_scale": scale,
        "sampling_ratio": sampling_ratio,
        "aligned": draw(st.booleans()),
        "pool_mode": draw(st.sampled_from(["avg", "max"])),
    }


def _args(op: str, case: dict) -> tuple:
    """The op's positional arguments after ``x, rois[, grad]``."""
    base = (case["output_size"], case["spatial_scale"])
    if op == "roi_align":
        return (*base, case["sampling_ratio"], case["aligned"], case["pool_mode"])
    if op == "roi_warp":
        return (*base, case["sampling_ratio"], case["pool_mode"])
    if op == "prroi_pool":
        return (*base, case["aligned"])
    return base


def check_forward_backward(backend, op: str, case: dict) -> None:
    """``backend``'s forward and backward of ``op`` on ``case`` equal the python backend's."""
    x, rois, grad, args = case["x"], case["rois"], case["grad"], _args(op, case)
    forward = f"{op}_forward"
    backward = f"{op}_backward"
    with np.errstate(invalid="ignore", over="ignore"):  # NaN pixels, 0 * inf
        assert_close(
            getattr(backend, forward)(x, rois, *args), getattr(py, forward)(x, rois, *args)
        )
        got = getattr(backend, backward)(x, rois, grad, *args)
        want = getattr(py, backward)(x, rois, grad, *args)
    if op != "prroi_pool":
        assert_close(got, want)
        return
    assert_close(got[0], want[0])
    # per-RoI tolerance: numpy's assert_allclose formats ``atol`` as a scalar, so check by hand
    tol = _box_gradient_tolerance(case)
    assert got[1].shape == want[1].shape, (got[1].shape, want[1].shape)
    excess = np.abs(got[1].astype(np.float64) - want[1]) - tol
    bad = ~(excess <= 0) & ~(np.isnan(got[1]) & np.isnan(want[1]))
    assert not bad.any(), (
        f"box gradient differs at {np.argwhere(bad)[:5].tolist()}: {got[1]} vs {want[1]}"
    )


def _box_gradient_tolerance(case: dict) -> np.ndarray:
    """Per RoI: PrRoIPool's box gradient sums ``g * (edge integral - O * side) / area`` over
    channels and bins; the two terms are ~``|x| * side`` with relative rounding ~``eps`` each
    (a few hundred terms at most), so the difference of two backends is bounded by
    ``64 * eps * scale * sum|g| * max|x| * (1 / bin_h + 1 / bin_w)`` (64: the terms' count
    and the chain rule's few operations, with margin)."""
    x, rois, grad = case["x"], case["rois"], case["grad"]
    eps = np.finfo(x.dtype).eps
    peak = np.nanmax(np.abs(x), initial=0.0) if x.size else 0.0
    scale = case["spatial_scale"]
    ph, pw = case["output_size"]
    tol = np.zeros(rois.shape, np.float64)
    for k, (_, x1, y1, x2, y2) in enumerate(rois.astype(np.float64)):
        bin_h, bin_w = (y2 - y1) * scale / ph, (x2 - x1) * scale / pw
        if not (bin_h > 0 and bin_w > 0):
            continue  # zero area: both give exactly 0
        spread = 1 / bin_h + 1 / bin_w
        tol[k, 1:] = 64 * eps * scale * np.abs(grad[k]).sum() * max(peak, 1.0) * spread
    return tol + np.finfo(x.dtype).tiny


@pytest.mark.parametrize("backend_name", COMPARED)
@pytest.mark.parametrize("op", ["roi_align", "roi_warp", "roi_pool", "prroi_pool"])
@FUZZ
@given(case=roi_cases())
def test_backends_agree_on_odd_inputs(backend_name, op, case):
    check_forward_backward(BACKENDS[backend_name], op, case)


@pytest.mark.parametrize("backend_name", COMPARED)
@pytest.mark.parametrize("op", ["roi_align", "roi_warp", "roi_pool", "prroi_pool"])
@FUZZ
@given(case=roi_cases(kinds=("inside", "lattice", "tiny"), nan_pixel=True))
def test_backends_agree_on_a_nan_pixel(backend_name, op, case):
    """Boxes on the map and always a NaN pixel: where the backends' NaN rules differed."""
    check_forward_backward(BACKENDS[backend_name], op, case)


@st.composite
def box_cases(draw):
    """``(boxes1, boxes2, scores, threshold)``: boxes of every kind, ties in the scores."""
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    coord = st.floats(-50, 50, allow_nan=False, width=32)

    def boxes(n):
        rows = []
        for _ in range(n):
            x1, y1 = draw(coord), draw(coord)
            w, h = draw(st.sampled_from([0.0, 1e-3, 1.0, 7.5, -2.0])), draw(coord)
            rows.append([x1, y1, x1 + w, y1 + h])
        return np.array(rows, dtype=dtype).reshape(n, 4)

    n = draw(st.integers(0, 8))
    b1 = boxes(n)
    if n and draw(st.booleans()):
        b1[-1] = b1[0]  # a duplicate: IoU 1
    scores = np.array([draw(st.sampled_from([0.1, 0.5, 0.9])) for _ in range(n)], dtype)
    return b1, boxes(draw(st.integers(0, 5))), scores, draw(st.sampled_from([0.0, 0.3, 0.5, 1.0]))


@pytest.mark.parametrize("backend_name", COMPARED)
@FUZZ
@given(case=box_cases())
def test_box_ops_agree(backend_name, case):
    backend = BACKENDS[backend_name]
    b1, b2, scores, threshold = case
    with np.errstate(invalid="ignore", divide="ignore"):
        np.testing.assert_allclose(backend.box_iou(b1, b2), py.box_iou(b1, b2), rtol=1e-6)
        np.testing.assert_array_equal(
            backend.nms(b1, scores, threshold), py.nms(b1, scores, threshold)
        )
