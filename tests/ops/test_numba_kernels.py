"""The numba backend's own tests: what its design could get wrong.

``refimpl.ops.numba`` reorders the work of the python backend (separable taps, channels-last,
channel-block partitioned backward, one thread for small inputs), so it is checked here
against the python backend on awkward boxes, for bitwise reproducibility across thread
counts where many RoIs scatter into the same pixels, and for float32 arithmetic in
torchvision's operation order at large coordinates.
"""

from __future__ import annotations

import numba
import numpy as np
import pytest

from refimpl.ops import BACKENDS
from refimpl.ops.numba import _compile
from tests.conftest import assert_close

cpu = BACKENDS["numba"]
ref = BACKENDS["python"]

DTYPES = [np.float32, np.float64]
SAMPLING_RATIOS = [-1, 0, 1, 2, 3]
HEIGHT, WIDTH, SCALE = 11, 13, 0.5

needs_two_threads = pytest.mark.skipif(
    numba.config.NUMBA_NUM_THREADS < 2, reason="needs numba with at least 2 threads"
)


def _awkward_rois(rng, dtype, n_images=2):
    """Boxes (image coordinates, scale 0.5) of every kind the kernels must get right."""
    w, h = WIDTH / SCALE, HEIGHT / SCALE  # the image size
    boxes = [
        (3.1, 2.7, 17.4, 15.2),  # inside
        (-5.3, -3.9, 6.2, 8.8),  # partly outside, top left
        (20.6, 14.3, w + 7.7, h + 5.1),  # partly outside, bottom right
        (-40.0, -30.0, -10.0, -4.0),  # wholly outside (more than one pixel)
        (w + 1.2, h + 0.4, w + 9.0, h + 3.0),  # outside, within one pixel of the border
        (7.31, 9.12, 7.33, 9.19),  # tiny
        (8.0, 6.0, 8.0, 6.0),  # zero size
        (12.0, 15.5, 12.0, 19.5),  # zero width
        (18.2, 16.9, 6.4, 3.3),  # inverted
        (-2.0, -2.0, w + 2.0, h + 2.0),  # the whole image and more
        (0.0, 0.0, 2.0, 2.0),  # on the lattice
    ]
    random = rng.uniform(-4, 24, (6, 2))
    random = np.concatenate([random, random + rng.uniform(0.5, 12, (6, 2))], axis=1)
    coords = np.concatenate([np.array(boxes), random])
    index = rng.integers(0, n_images, (len(coords), 1))
    return np.concatenate([index, coords], axis=1).astype(dtype)


@pytest.fixture
def case(request):
    """x [2, 3, 11, 13], awkward RoIs and a gradient for output (3, 4), in ``dtype``."""
    dtype = request.param
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, HEIGHT, WIDTH)).astype(dtype)
    rois = _awkward_rois(rng, dtype)
    grad = rng.standard_normal((rois.shape[0], 3, 3, 4)).astype(dtype)
    return x, rois, grad


def _check(op, mode, x, rois, grad, kwargs):
    """Forward and backward against the python backend: bitwise for the max modes (the same
    expression in the same order picks the same sample), at the tolerance for avg."""
    compare = assert_close if mode == "avg" else np.testing.assert_array_equal
    forward, backward = f"{op}_forward", f"{op}_backward"
    compare(getattr(cpu, forward)(x, rois, **kwargs), getattr(ref, forward)(x, rois, **kwargs))
    compare(
        getattr(cpu, backward)(x, rois, grad, **kwargs),
        getattr(ref, backward)(x, rois, grad, **kwargs),
    )


@pytest.mark.parametrize("case", DTYPES, indirect=True)
@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", SAMPLING_RATIOS)
def test_roi_align_matches_python(case, mode, aligned, sampling_ratio):
    kwargs = {
        "output_size": (3, 4),
        "spatial_scale": SCALE,
        "sampling_ratio": sampling_ratio,
        "aligned": aligned,
        "pool_mode": mode,
    }
    _check("roi_align", mode, *case, kwargs)


@pytest.mark.parametrize("case", DTYPES, indirect=True)
@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize("sampling_ratio", SAMPLING_RATIOS)
def test_roi_warp_matches_python(case, mode, sampling_ratio):
    kwargs = {
        "output_size": (3, 4),
        "spatial_scale": SCALE,
        "sampling_ratio": sampling_ratio,
        "pool_mode": mode,
    }
    _check("roi_warp", mode, *case, kwargs)


@pytest.mark.parametrize("case", DTYPES, indirect=True)
@pytest.mark.parametrize("scale", [SCALE, 1.0, 0.3])
def test_roi_pool_matches_python_bitwise(case, scale):
    _check("roi_pool", "max", *case, {"output_size": (3, 4), "spatial_scale": scale})


@pytest.mark.parametrize("case", DTYPES, indirect=True)
@pytest.mark.parametrize("aligned", [False, True])
def test_prroi_pool_matches_python(case, aligned):
    x, rois, grad = case
    args = ((3, 4), SCALE, aligned)
    assert_close(cpu.prroi_pool_forward(x, rois, *args), ref.prroi_pool_forward(x, rois, *args))
    for mine, theirs in zip(
        cpu.prroi_pool_backward(x, rois, grad, *args),
        ref.prroi_pool_backward(x, rois, grad, *args),
        strict=True,
    ):
        assert_close(mine, theirs, dtype=x.dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_no_rois(dtype):
    x = np.ones((1, 4, 5, 5), dtype)
    rois = np.zeros((0, 5), dtype)
    grad = np.zeros((0, 4, 2, 2), dtype)
    for op in ("roi_align", "roi_warp", "roi_pool", "prroi_pool"):
        y = getattr(cpu, f"{op}_forward")(x, rois, 2)
        assert y.shape == (0, 4, 2, 2) and y.dtype == dtype
        g = getattr(cpu, f"{op}_backward")(x, rois, grad, 2)
        g = g[0] if op == "prroi_pool" else g
        assert g.shape == x.shape and not g.any()


# --- race-freedom: many RoIs scatter into the same pixels, from several threads -----------


def _crowded(dtype, channels=12, n_rois=150):
    """RoIs that all cover the same few pixels of one image, in random order."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, channels, 10, 9)).astype(dtype)
    xy = rng.uniform(4.0, 8.0, (n_rois, 2))
    wh = rng.uniform(2.0, 6.0, (n_rois, 2))
    index = rng.integers(0, 2, (n_rois, 1))
    rois = np.concatenate([index, xy, xy + wh], axis=1).astype(dtype)
    grad = rng.standard_normal((n_rois, channels, 5, 4)).astype(dtype)
    return x, rois, grad


BACKWARDS = {
    "roi_align avg": lambda m, x, r, g: m.roi_align_backward(x, r, g, (5, 4), 0.5, 2, True),
    "roi_align adaptive": lambda m, x, r, g: m.roi_align_backward(x, r, g, (5, 4), 0.5, -1),
    "roi_align max": lambda m, x, r, g: m.roi_align_backward(x, r, g, (5, 4), 0.5, 2, True, "max"),
    "roi_warp max": lambda m, x, r, g: m.roi_warp_backward(x, r, g, (5, 4), 0.5, 2),
    "roi_pool": lambda m, x, r, g: m.roi_pool_backward(x, r, g, (5, 4), 0.5),
    "prroi_pool": lambda m, x, r, g: m.prroi_pool_backward(x, r, g, (5, 4), 0.5, True)[0],
}


@pytest.fixture
def parallel_everything(monkeypatch):
    """Run every input in parallel, however small, and restore the thread count after."""
    monkeypatch.setattr(_compile, "PARALLEL_MIN_WORK", 0)
    saved = numba.get_num_threads()
    yield
    numba.set_num_threads(saved)


@needs_two_threads
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", list(BACKWARDS))
@pytest.mark.usefixtures("parallel_everything")
def test_backward_is_bitwise_reproducible_across_runs_and_threads(op, dtype):
    x, rois, grad = _crowded(dtype)
    backward = BACKWARDS[op]
    numba.set_num_threads(2)
    first = backward(cpu, x, rois, grad)
    for _ in range(5):
        np.testing.assert_array_equal(backward(cpu, x, rois, grad), first)
    # one thread: one channel block instead of two, the same sums in the same order
    numba.set_num_threads(1)
    np.testing.assert_array_equal(backward(cpu, x, rois, grad), first)
    # every thread numba has: as many channel blocks as divide the 12 channels evenly
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    np.testing.assert_array_equal(backward(cpu, x, rois, grad), first)


@needs_two_threads
@pytest.mark.parametrize("op", list(BACKWARDS))
@pytest.mark.usefixtures("parallel_everything")
def test_parallel_backward_matches_python(op):
    """No update lost or doubled: the parallel scatter equals the serial definition."""
    x, rois, grad = _crowded(np.float64, channels=4, n_rois=30)
    numba.set_num_threads(2)
    assert_close(BACKWARDS[op](cpu, x, rois, grad), BACKWARDS[op](ref, x, rois, grad))


@needs_two_threads
@pytest.mark.usefixtures("parallel_everything")
def test_avg_backward_conserves_the_gradient():
    """Boxes well inside: every bin's bilinear weights sum to 1, so the input gradient sums
    to the output gradient, channel by channel, whatever the overlaps."""
    x, rois, grad = _crowded(np.float64, channels=16, n_rois=400)
    numba.set_num_threads(2)
    gx = cpu.roi_align_backward(x, rois, grad, (5, 4), 0.5, 2, True)
    np.testing.assert_allclose(gx.sum(axis=(0, 2, 3)), grad.sum(axis=(0, 2, 3)), rtol=1e-12)


@needs_two_threads
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.usefixtures("parallel_everything")
def test_forward_does_not_depend_on_threads(dtype):
    x, rois, _ = _crowded(dtype)
    outputs = []
    for threads in (1, 2):
        numba.set_num_threads(threads)
        outputs.append(
            [
                cpu.roi_align_forward(x, rois, (5, 4), 0.5, -1, True),
                cpu.roi_align_forward(x, rois, (5, 4), 0.5, 2, False, "max"),
                cpu.roi_pool_forward(x, rois, (5, 4), 0.5),
                cpu.prroi_pool_forward(x, rois, (5, 4), 0.5),
            ]
        )
    for a, b in zip(*outputs, strict=True):
        np.testing.assert_array_equal(a, b)


# --- float32: torchvision's operation order, large coordinates ------------------------------


def test_float32_positions_are_computed_in_float32_at_large_coordinates():
    """Far from the origin a float32 sample position differs from the float64 one by about
    1e-3 pixel: on a map that alternates 0 / 1 that is an error of 1e-3 in the output. The
    kernels must agree with the python backend (float32, torchvision's order), not with a
    float64 computation."""
    width = 20000
    x = np.tile(np.arange(width) % 2, (2, 4, 6, 1)).astype(np.float32)
    x[:, 1] *= -1.5
    x[1] += 0.25
    x1 = np.array([10000.3, 12345.67, 16001.1, 19990.9])
    rois = np.stack([np.array([0, 1, 0, 1]), x1, x1 * 0 + 0.6, x1 + 5.7, x1 * 0 + 4.9], 1)
    rois32, rois64 = rois.astype(np.float32), rois.astype(np.float64)
    grad = np.random.default_rng(4).standard_normal((4, 4, 2, 3)).astype(np.float32)
    for aligned in (False, True):
        args = ((2, 3), 1.0, 2, aligned)
        want = ref.roi_align_forward(x, rois32, *args)
        assert_close(cpu.roi_align_forward(x, rois32, *args), want)
        in_float64 = ref.roi_align_forward(x.astype(np.float64), rois64, *args)
        assert np.abs(in_float64 - want).max() > 1e-4  # the test can tell the two apart
        assert_close(
            cpu.roi_align_backward(x, rois32, grad, *args),
            ref.roi_align_backward(x, rois32, grad, *args),
        )
        args = (*args, "max")
        np.testing.assert_array_equal(
            cpu.roi_align_forward(x, rois32, *args), ref.roi_align_forward(x, rois32, *args)
        )


def test_float32_large_coordinates_with_a_small_scale():
    """Image coordinates near 2^20 mapped by a 1/2^16 scale: positions, roundings (RoIPool,
    RoIWarp) and weights all in float32, as torchvision computes them."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 3, 20, 20)).astype(np.float32)
    xy = rng.uniform(2**19, 2**20, (8, 2))
    rois = np.concatenate([np.zeros((8, 1)), xy, xy + rng.uniform(0, 2**18, (8, 2))], 1)
    rois = rois.astype(np.float32)
    scale = 2.0**-16
    grad = rng.standard_normal((8, 3, 4, 4)).astype(np.float32)
    _check("roi_align", "avg", x, rois, grad, {"output_size": 4, "spatial_scale": scale})
    _check("roi_warp", "max", x, rois, grad, {"output_size": 4, "spatial_scale": scale})
    _check("roi_pool", "max", x, rois, grad, {"output_size": 4, "spatial_scale": scale})


# --- boxes --------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_box_iou_and_nms_match_python(dtype):
    rng = np.random.default_rng(6)
    xy = rng.uniform(0, 50, (60, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(0, 20, (60, 2))], 1)
    boxes[:5, 2:] = boxes[:5, :2]  # zero-area boxes: IoU 0 / 0 = NaN with each other
    boxes[10:15] = boxes[20:25]  # duplicates
    boxes = boxes.astype(dtype)
    np.testing.assert_array_equal(cpu.box_iou(boxes, boxes[::3]), ref.box_iou(boxes, boxes[::3]))
    scores = rng.uniform(0, 1, 60).astype(dtype)
    scores[30:40] = scores[40:50]  # ties: the lower index first
    for threshold in (0.0, 0.3, 0.5, 0.7, 1.0):
        np.testing.assert_array_equal(
            cpu.nms(boxes, scores, threshold), ref.nms(boxes, scores, threshold)
        )


def test_nms_compares_the_float32_iou_in_float64():
    """float32(0.3) rounds up: an IoU of exactly float32(0.3) is greater than 0.3."""
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 3]], np.float32)
    iou = cpu.box_iou(boxes[:1], boxes[1:])[0, 0]
    assert iou == np.float32(0.3) and float(iou) > 0.3
    scores = np.array([0.9, 0.8], np.float32)
    np.testing.assert_array_equal(cpu.nms(boxes, scores, 0.3), [0])
    np.testing.assert_array_equal(ref.nms(boxes, scores, 0.3), [0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_roi_pool_argmax_path_equals_the_recomputing_backward(dtype):
    """The torch op saves the forward's argmax (as torchvision does); its scatter backward
    must equal the stateless backward, with ties, empty bins and overlapping RoIs."""
    rng = np.random.default_rng(11)
    x = rng.integers(0, 4, size=(2, 5, 9, 8)).astype(dtype)  # many ties
    xy = rng.uniform(-4, 10, size=(40, 2))
    rois = np.concatenate([rng.integers(0, 2, (40, 1)), xy, xy + rng.uniform(-1, 7, (40, 2))], 1)
    y, argmax = cpu.roi_pool_forward_with_argmax(x, rois, (3, 2), 0.75)
    np.testing.assert_array_equal(y, BACKENDS["python"].roi_pool_forward(x, rois, (3, 2), 0.75))
    assert (argmax == -1).any() and argmax.dtype == np.int64
    g = rng.normal(size=y.shape).astype(dtype)
    np.testing.assert_array_equal(
        cpu.roi_pool_backward_from_argmax(x, rois, g, argmax, (3, 2), 0.75),
        cpu.roi_pool_backward(x, rois, g, (3, 2), 0.75),
    )
    with pytest.raises(ValueError, match="argmax"):
        cpu.roi_pool_backward_from_argmax(x, rois, g, argmax + 1000, (3, 2), 0.75)
